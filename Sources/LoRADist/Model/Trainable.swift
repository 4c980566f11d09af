import Foundation

/// What a model trains, or adds to its frozen base when it decodes: one case per method, each
/// owning its weights, their gradients (built for training only) and what the passes need of
/// them. It answers every per-method question of the model and the trainer: the lowest backward
/// stage, the linear inputs backward keeps, the group its gradients are summed over, its parameter
/// count, and the optimizer's view (one contiguous run of fp32 values with their gradients, whether
/// any of it is a TP shard, how the model picks up changed values). The trainer itself has no
/// per-method branch. LoRA is one of its deltas (`DeltaSpec`, `LinearDeltaSet`), built by Adapt:
/// the model never names its types.
public enum Trainable {
    /// Deltas the model's linear ops call, with their weights and gradients, buffers and merged
    /// flag (LoRA's runtime, Adapt/LoRARuntime.swift).
    case deltas(any TrainableDeltas)
    /// Every base parameter: the base itself and its fp32 gradients, at the fp32 offsets of the
    /// weights (their master copies under bf16).
    case full(BaseWeights, gradients: BaseWeights?)
    /// The base's biases, LayerNorm β included: compact masters with their gradients, written into
    /// the base's own copies, which the forward pass reads.
    case bitfit(BiasParameters, base: BaseWeights)
    /// Bottleneck adapters: this rank's weights, their gradients, and each slot's two projections.
    case adapters(AdapterWeights, gradients: FloatArena?, linears: [AdapterLinears])

    /// What to build: a method and its configuration, before anything is allocated.
    public enum Spec: Equatable, Sendable {
        /// Deltas on the linear ops (LoRA: `Trainable.Spec.lora(_:)`, Adapt/LoRARuntime.swift).
        case deltas(DeltaSpec)
        case full
        case bitfit
        case adapters(AdapterConfig)

        public var method: Method {
            switch self {
            case .deltas: return .lora
            case .full: return .full
            case .bitfit: return .bitfit
            case .adapters(let c): return Method(adapters: c.kind)
            }
        }

        public var adapters: AdapterConfig? { if case .adapters(let c) = self { return c } else { return nil } }

        /// The block ops carrying trainable deltas (LoRA's targets).
        var deltaOps: Set<BlockLinears.Op> { if case .deltas(let d) = self { return d.ops } else { return [] } }

        /// Which backward stages run for it, and the lowest, where backward stops.
        public func backwardPlan(config: GPTConfig) -> BackwardPlan {
            BackwardPlan(config: config, method: method, deltaOps: deltaOps, adapters: adapters)
        }

        /// The linear inputs backward reads for weight gradients: all in full fine-tuning, those of
        /// the ops carrying deltas (LoRA's targets), none for adapters (they keep their own) and BitFit.
        var keptInputs: KeptInputs {
            switch self {
            case .full: return .all
            case .adapters, .bitfit: return .none
            case .deltas:
                let t = deltaOps
                return KeptInputs(
                    xn1: t.contains(.qkv), xn2: t.contains(.fc), att: t.contains(.proj),
                    fcAct: t.contains(.fcProj))
            }
        }
    }

    /// `spec` built on this rank's `base` and `layout`; without `training` there are no gradients
    /// (BitFit's compact arenas exist either way).
    init(_ spec: Spec, base: BaseWeights, layout: TPLayout, training: Bool) throws {
        let config = layout.config
        switch spec {
        case .deltas(let c):
            self = .deltas(try c.build(config, training))
        case .full:
            let g = training ? BaseWeights(shape: BaseLayout(layout: layout)) : nil
            precondition(g == nil || g!.shape.total == base.shape.total)
            self = .full(base, gradients: g)
        case .bitfit:
            let b = BiasParameters(shape: base.shape)
            if b.count == 0 {
                throw ModelError.invalidConfig(
                    "BitFit trains a model's biases, and this \(config.family.rawValue)-family model has none")
            }
            self = .bitfit(b, base: base)
        case .adapters(let c):
            try c.validate(for: config, tp: layout.degree)
            let w = AdapterWeights(config: c, layout: layout)
            let g = training ? FloatArena(count: w.arena.count) : nil
            self = .adapters(w, gradients: g, linears: AdapterLinears.all(w, grad: g))
        }
    }

    /// What it was built from.
    public var spec: Spec {
        switch self {
        case .deltas(let d): return .deltas(d.spec)
        case .full: return .full
        case .bitfit: return .bitfit
        case .adapters(let w, _, _): return .adapters(w.config)
        }
    }

    public var method: Method { spec.method }
    /// The group `grad-sync` sums its gradients over (`Method.gradientGroup`).
    public var gradientGroup: GradientGroup { method.gradientGroup }

    /// Parameters that train, over the whole model (each TP shard counted once).
    public var parameterCount: Int {
        switch self {
        case .deltas(let d): return d.parameterCount
        case .full(let base, _): return base.shape.layout.config.parameterCount
        case .bitfit(let b, _): return b.globalCount
        case .adapters(let w, _, _): return w.globalCount
        }
    }

    /// The owner of the deltas the model's linear ops call (LoRA's runtime), if any: every set a
    /// `DeltaSpec` builds is one.
    var deltas: (any LinearDeltaSet)? {
        if case .deltas(let d) = self { return d as? any LinearDeltaSet } else { return nil }
    }
    public var baseGradients: BaseWeights? { if case .full(_, let g) = self { return g } else { return nil } }
    public var biases: BiasParameters? { if case .bitfit(let b, _) = self { return b } else { return nil } }
    public var adapters: AdapterWeights? { if case .adapters(let w, _, _) = self { return w } else { return nil } }
    public var adapterGradients: FloatArena? { if case .adapters(_, let g, _) = self { return g } else { return nil } }

    // MARK: what the optimizer sees

    /// The values the optimizer updates (full fine-tuning: the base's fp32 arena, its master
    /// copies under bf16), `count` of them.
    public var values: UnsafeMutablePointer<Float> {
        switch self {
        case .deltas(let d): return d.values.base
        case .full(let base, _): return base.arena.base
        case .bitfit(let b, _): return b.values.base
        case .adapters(let w, _, _): return w.arena.base
        }
    }

    /// Their gradients, in the same layout; nil when built without gradients.
    public var gradients: UnsafeMutablePointer<Float>? {
        switch self {
        case .deltas(let d): return d.grad?.base
        case .full(_, let g): return g?.arena.base
        case .bitfit(let b, _): return b.grads.base
        case .adapters(_, let g, _): return g?.base
        }
    }

    public var count: Int {
        switch self {
        case .deltas(let d): return d.values.count
        case .full(let base, _): return base.shape.total
        case .bitfit(let b, _): return b.count
        case .adapters(let w, _, _): return w.arena.count
        }
    }

    /// Whether any of it is a TP shard, so the gradient norm needs the TP group's sum.
    public var sharded: Bool {
        switch self {
        case .deltas: return false
        case .full, .bitfit: return true
        case .adapters(let w, _, _): return w.config.placement != .replicated
        }
    }

    /// Σg² of this rank's gradients: (TP-sharded part, part whole on every rank).
    func squaredGradients() -> (sharded: Double, whole: Double) {
        guard let g = gradients else { preconditionFailure("\(method.rawValue) was built without gradients") }
        switch self {
        case .deltas(let d):
            return (0, sumOfSquares(g, d.values.count))
        case .full(let base, _):
            var sharded: Double = 0
            var replicated: Double = 0
            for slot in base.shape.slots {
                let s = sumOfSquares(g + slot.offset, slot.localCount)
                if slot.spec == .replicated { replicated += s } else { sharded += s }
            }
            return (sharded, replicated)
        case .bitfit(let b, _):
            let (s, r) = b.squaredGradients()
            return (s, r)
        case .adapters(let ad, _, _):
            // Sharded: W_down, b_down and W_up split, b_up and Lin's LayerNorm whole.
            // Owner: only TP rank 0 holds them. Replicated: whole on every rank.
            var sharded: Double = 0
            var whole: Double = 0
            let d = ad.model.nEmbd
            let ml = ad.localWidth
            for s in ad.slots {
                let sq = { (off: Int, count: Int) in sumOfSquares(g + off, count) }
                let split = sq(s.wd, d * ml) + sq(s.bd, ml) + sq(s.wu, ml * d)
                let rest = sq(s.bu, d) + (s.lnw >= 0 ? sq(s.lnw, d) + sq(s.lnb, d) : 0)
                switch ad.config.placement {
                case .sharded:
                    sharded += split
                    whole += rest
                case .replicated: whole += split + rest
                case .owner: sharded += split + rest
                }
            }
            return (sharded, whole)
        }
    }

    /// Takes the values that train from the loaded base where the trainable keeps a copy of its
    /// own: BitFit's compact masters start from the base's biases.
    func gatherFromBase() {
        if case .bitfit(let b, let base) = self { b.gather(from: base) }
    }

    /// Makes the model compute with the values after they changed (an update, a restored
    /// checkpoint): full fine-tuning under bf16 rounds the fp32 masters into the GEMMs' bf16
    /// working copy; BitFit writes its compact masters into the base's biases.
    func publish() {
        switch self {
        case .full(let base, _): base.refreshHalf()
        case .bitfit(let b, let base): b.scatter(into: base)
        case .deltas, .adapters: break
        }
    }
}

/// Σ x² in Double, in order.
@inline(__always) func sumOfSquares(_ p: UnsafePointer<Float>, _ n: Int) -> Double {
    var s: Double = 0
    for i in 0..<n { s += Double(p[i]) * Double(p[i]) }
    return s
}

/// A trainable's deltas before they are built (LoRA's configuration makes one:
/// `Trainable.Spec.lora(_:)`, Adapt/LoRARuntime.swift): the block ops they sit on, how their set
/// is built on a model, and the configuration itself, which the model never reads.
public struct DeltaSpec: Equatable, @unchecked Sendable {
    /// The block ops carrying the deltas in every block.
    let ops: Set<BlockLinears.Op>
    /// The configuration it was made from, for its maker to read back.
    public let config: any Sendable
    /// Whether `config` equals another configuration.
    private let same: (any Sendable) -> Bool
    /// The set on a model of `config`, with gradients when it `trains`.
    let build: (_ config: GPTConfig, _ trains: Bool) throws -> any LinearDeltaSet

    init<C: Equatable & Sendable>(
        _ config: C, ops: Set<BlockLinears.Op>,
        build: @escaping (GPTConfig, Bool) throws -> any LinearDeltaSet
    ) {
        self.ops = ops
        self.config = config
        same = { ($0 as? C) == config }
        self.build = build
    }

    public static func == (a: DeltaSpec, b: DeltaSpec) -> Bool { a.same(b.config) }
}
