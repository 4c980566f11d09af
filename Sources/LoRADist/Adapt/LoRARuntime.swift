/// LoRA on one rank's model: the weights (every slot's A and B, whole on every rank), their
/// gradients when they train, the deltas it attached to the model's linear ops, the buffers those
/// share, and whether they are merged into the base. The model holds it as its `LinearDeltaSet`
/// and calls the deltas without knowing they are LoRA's.
public final class LoRARuntime: LinearDeltaSet {
    public let weights: LoRAWeights
    /// dA and dB at the weights' offsets (partial sums until the trainer's gradient AllReduce).
    public let grad: FloatArena?
    /// Whether W0 holds W0 + s·B·A, so passes skip the deltas.
    public private(set) var merged = false
    let workspace: LoRAWorkspace
    /// Each attached delta with the op weight it merges into, in the model's block and op order.
    private var attached: [(w: Mat, delta: LoRADelta)] = []

    /// `trains`: the model computes gradients of A and B (training LoRA).
    init(config: LoRAConfig, model: GPTConfig, trains: Bool) throws {
        try config.validate(for: model)
        weights = LoRAWeights(config: config, model: model)
        grad = trains ? FloatArena(count: weights.count) : nil
        workspace = LoRAWorkspace(slots: weights.slots.count, rank: weights.maxRank, width: max(model.nEmbd, model.ffn))
    }

    var ops: Set<BlockLinears.Op> { weights.config.ops }
    public var parameterCount: Int { weights.count }
    public var spec: DeltaSpec { weights.config.deltaSpec }
    public var values: FloatArena { weights.arena }

    /// The slots of block `layer` adapting `op`, each sliced as `LoRATarget.placement` says.
    func deltas(layer l: Int, op: BlockLinears.Op, of lin: Linear, layout: TPLayout) -> [any LinearDelta] {
        LoRATarget.allCases.filter { $0.op == op }.compactMap { t -> (any LinearDelta)? in
            guard let si = weights.slotIndex(layer: l, target: t) else { return nil }
            let p = t.placement(on: lin, layout: layout, model: weights.model)
            let slice = weights.slice(si, inputs: p.inputs, outputs: p.outputs, grad: grad)
            let delta = LoRADelta(
                slot: si, column: p.column, inOffset: lin.inOffset,
                inGlobal: lin.inGlobal, dropout: weights.config.dropout, slice: slice,
                workspace: workspace)
            attached.append((lin.w, delta))
            return delta
        }
    }

    /// W0 += s·B·A for every slot (this rank's part of W0); passes then skip the deltas.
    public func merge() {
        guard !merged else { return }
        for a in attached { a.delta.merge(into: a.w, sign: 1) }
        merged = true
    }

    /// W0 −= s·B·A: restores W0 to float rounding (bf16 rounding for a bf16 base).
    public func unmerge() {
        guard merged else { return }
        for a in attached { a.delta.merge(into: a.w, sign: -1) }
        merged = false
    }
}

extension Trainable {
    /// LoRA's runtime, when LoRA is what trains or what decoding adds.
    public var loraRuntime: LoRARuntime? {
        if case .deltas(let d) = self { return d as? LoRARuntime } else { return nil }
    }
    public var lora: LoRAWeights? { loraRuntime?.weights }
    public var loraGradients: FloatArena? { loraRuntime?.grad }
}

extension Trainable.Spec {
    /// LoRA as `config` says.
    public static func lora(_ config: LoRAConfig) -> Self { .deltas(config.deltaSpec) }
    /// LoRA's configuration, when it is what the spec builds.
    public var lora: LoRAConfig? {
        if case .deltas(let d) = self { return d.config as? LoRAConfig } else { return nil }
    }
}

extension GPTModel {
    /// The model's LoRA (its trainable's), if it has one.
    public var loraRuntime: LoRARuntime? { trainable?.loraRuntime }
    /// LoRA's A and B (`loraRuntime`'s weights).
    public var lora: LoRAWeights? { loraRuntime?.weights }
    /// Their gradients, when the model trains LoRA.
    public var loraGrad: FloatArena? { loraRuntime?.grad }
}

extension LoRAWeights {
    /// The part of slot `si` a rank uses: A' = A's columns `inputs`, B' = B's rows `outputs`, and
    /// the same views of the gradient arena when it exists.
    func slice(_ si: Int, inputs: Range<Int>, outputs: Range<Int>, grad: FloatArena?) -> LoRASlice {
        let s = slots[si]
        let r = s.rank
        func a(_ p: UnsafeMutablePointer<Float>) -> Mat {
            Mat(p + s.a + inputs.lowerBound, r, inputs.count, ld: s.inDim)
        }
        func b(_ p: UnsafeMutablePointer<Float>) -> Mat { Mat(p + s.b + outputs.lowerBound * r, outputs.count, r) }
        return LoRASlice(
            a: a(arena.base), b: b(arena.base), da: grad.map { a($0.base) }, db: grad.map { b($0.base) },
            scale: s.scale)
    }
}

extension LoRATarget {
    /// The block op this target adapts (q, k and v share the fused attention input; gate and up
    /// the Llama family's gate | up).
    var op: BlockLinears.Op {
        switch self {
        case .q, .k, .v: return .qkv
        case .o: return .proj
        case .mlpIn, .gate, .up: return .fc
        case .mlpOut, .down: return .fcProj
        }
    }

    /// The first of the op's output columns this target adds into on a rank of `layout`:
    /// [q_t | k_t | v_t] and [gate_t | up_t].
    func column(in layout: TPLayout) -> Int {
        switch self {
        case .k: return layout.localDim
        case .v: return layout.localDim + layout.localKVDim
        case .up: return layout.localFFN
        default: return 0
        }
    }
}

extension LoRAConfig {
    /// The block ops its targets adapt.
    var ops: Set<BlockLinears.Op> { Set(targets.map(\.op)) }

    /// LoRA as a trainable's deltas: its runtime, built on a model of the given config.
    var deltaSpec: DeltaSpec {
        DeltaSpec(self, ops: ops) { try LoRARuntime(config: self, model: $0, trains: $1) }
    }
}

extension BackwardPlan {
    /// The plan of a model whose trainable deltas are LoRA's on `lora`'s targets (none when nil).
    public init(config: GPTConfig, method: Method, lora: LoRAConfig?, adapters: AdapterConfig?) {
        self.init(config: config, method: method, deltaOps: lora?.ops ?? [], adapters: adapters)
    }
}

extension StepSchedule {
    /// `training(config:tp:dp:method:deltaOps:…)` with the deltas of LoRA on `lora`'s targets.
    public static func training(
        config c: GPTConfig, tp: Int, dp: Int, method: Method, lora: LoRAConfig?,
        adapters: AdapterConfig?, tokensPerPass n: Int, passes: Int,
        gradientElements: Int, recompute: Recompute = .none
    ) -> [ScheduledCollective] {
        training(
            config: c, tp: tp, dp: dp, method: method, deltaOps: lora?.ops ?? [], adapters: adapters,
            tokensPerPass: n, passes: passes, gradientElements: gradientElements, recompute: recompute)
    }

    /// The same for passes of `passTokens` rows each (packed micro-batches differ in size).
    public static func training(
        config c: GPTConfig, tp: Int, dp: Int, method: Method, lora: LoRAConfig?,
        adapters: AdapterConfig?, passTokens: [Int], gradientElements: Int, recompute: Recompute = .none
    ) -> [ScheduledCollective] {
        training(
            config: c, tp: tp, dp: dp, method: method, deltaOps: lora?.ops ?? [], adapters: adapters,
            passTokens: passTokens, gradientElements: gradientElements, recompute: recompute)
    }
}
