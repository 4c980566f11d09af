import Foundation

/// What trains, which decides what the backward pass computes.
public enum TrainMode: String, Codable, Sendable {
    /// Only LoRA's A and B; the base stays frozen and gets no gradient.
    case lora
    /// Every base parameter (the paper's FT baseline; also how the built-in base is pretrained).
    case full
    /// Only adapter layers (Houlsby or Lin) inserted into the frozen base.
    case adapter
    /// Only the base's biases, LayerNorm β included (BitFit; see `BiasParameters`).
    case bitfit
}

extension TrainMode {
    /// Whether what trains is part of the base (full fine-tuning, BitFit) rather than added to it.
    public var trainsBase: Bool { self == .full || self == .bitfit }
}

extension TPLayout {
    /// Refuses a method that trains the key/value projections' own weights (full fine-tuning, and
    /// BitFit when k and v have biases) while each key/value head is held whole by several ranks
    /// (`kvReplicated`): each of those ranks computes only the part of the head's gradient its own
    /// query heads give, and summing the parts over the ranks sharing the head is not implemented.
    public func requireKVTrainable(by mode: TrainMode) throws {
        guard kvReplicated, mode == .full || (mode == .bitfit && config.qkvBias) else { return }
        let what = mode == .full ? "full fine-tuning" : "BitFit (with the k_proj and v_proj biases)"
        throw ModelError.invalidParallel("\(what) at --tp \(degree) is not supported for this model: its \(config.nKVHead) key/value head\(config.nKVHead == 1 ? " is" : "s are") shared by \(degree / config.nKVHead) ranks each, whose gradients would have to be summed; use a --tp that divides \(config.nKVHead), or LoRA")
    }
}

/// One tensor-parallel rank's decoder (GPT-2 or the Llama family): its shard of the base, the
/// deltas its linear ops call (LoRA's, owned by `deltas`), and the forward/backward passes
/// (explicit, llm.c style). All communication goes through `regions`.
///
/// Backward runs the stages of its `BackwardPlan` (`Stage`, Model/BackwardPlan.swift) from the head
/// down and stops at the lowest one holding a trainable parameter: nothing below it is computed.
/// The Llama family's blocks (RMSNorm, rotary positions, grouped-query attention, SwiGLU) have the
/// same stages and collectives as GPT-2's.
public final class GPTModel {
    public let config: GPTConfig
    public let layout: TPLayout
    public let regions: TPRegions
    public let base: BaseWeights
    public private(set) var baseGrad: BaseWeights?
    /// The owner of the deltas attached to the blocks' linear ops (LoRA's runtime), if any.
    let deltas: (any LinearDeltaSet)?
    public let adapters: AdapterWeights?
    public let adapterGrad: FloatArena?
    /// BitFit's trainable biases (mode `.bitfit` only).
    public let biases: BiasParameters?
    public let mode: TrainMode
    public internal(set) var acts: Activations
    private var decodeActs: Activations?
    /// The context of the last forward pass (the loss and backward use it too).
    public internal(set) var pass = PassContext.inference
    /// Shape of the last forward pass (the loss and backward work on exactly those rows).
    public internal(set) var passBatch = 0, passLen = 0
    /// The last loss ran the head's backward itself (its logits did not fit whole).
    var headBackwardDone = false
    /// Each block's four linear ops, and the LM head (vocab-parallel).
    let blocks: [BlockLinears]
    let head: Linear
    /// Each adapter slot's down and up projections (empty on ranks that store none).
    let adapterLinears: [AdapterLinears]
    /// Which backward stages run, and where backward stops.
    let backwardPlan: BackwardPlan
    /// Its family's norm, MLP activation and positions (GPT-2's or the Llama family's).
    let family: FamilyParts

    /// `batch`×`seq` sizes the activation buffers; `training` false keeps one set for all blocks.
    /// `logitBudget` bounds the floats of logits held at once (see `lossForward`). `deltas` makes
    /// the owner of the linear ops' deltas, told whether they train (LoRA's: `Adapt/LoRARuntime.swift`).
    init(config: GPTConfig, tp: Communicator, deltas makeDeltas: ((_ trains: Bool) throws -> any LinearDeltaSet)?,
         mode: TrainMode, batch: Int, seq: Int, training: Bool = true, adapters adapterConfig: AdapterConfig? = nil,
         sharing shared: BaseWeights? = nil, precision: Precision = .fp32,
         logitBudget: Int = Activations.logitBudget) throws {
        try config.validate()
        self.config = config
        layout = try TPLayout(config: config, degree: tp.size, rank: tp.rank)
        try layout.requireKVTrainable(by: mode)
        regions = TPRegions(comm: tp)
        if let shared {
            guard shared.shape.layout == layout, shared.shape.precision == precision else {
                throw ModelError.invalidParallel("shared base weights have another layout or precision")
            }
            base = shared
        } else {
            // Full fine-tuning keeps fp32 master weights; a frozen base is held in bf16 alone.
            base = BaseWeights(shape: BaseLayout(layout: layout, precision: precision, master: mode == .full))
        }
        self.mode = mode
        guard seq <= config.nPositions else {
            throw ModelError.invalidConfig("sequence length \(seq) exceeds the model's context \(config.nPositions)")
        }
        let deltaSet = try makeDeltas?(training && mode == .lora)
        deltas = deltaSet
        let deltaOps = deltaSet?.ops ?? []
        var adW: AdapterWeights?, adG: FloatArena?
        if let ac = adapterConfig {
            try ac.validate(for: config, tp: layout.degree)
            let w = AdapterWeights(config: ac, layout: layout)
            adW = w
            adG = training && mode == .adapter ? FloatArena(count: w.arena.count) : nil
        }
        adapters = adW
        adapterGrad = adG
        // Gradients are fp32, at the fp32 offsets of the weights (their master copies under bf16).
        let grad = mode == .full && training ? BaseWeights(shape: BaseLayout(layout: layout)) : nil
        precondition(grad == nil || grad!.shape.total == base.shape.total)
        baseGrad = grad
        let bias = mode == .bitfit ? BiasParameters(shape: base.shape) : nil
        if let bias, bias.count == 0 {
            throw ModelError.invalidConfig("BitFit trains a model's biases, and this \(config.family.rawValue)-family model has none")
        }
        biases = bias
        let b = base, lay = layout
        blocks = (0..<config.nLayer).map { l in
            BlockLinears(layer: l, base: b, grad: grad, biasGrad: bias, deltas: deltaSet, layout: lay)
        }
        // The LM head reads wte (tied) or lm_head transposed: [Vl, d] → logits [n, Vl].
        let hw = b.shape.head ?? b.shape.wte
        head = Linear(kind: .column, site: .headInGrad, w: b.matrix(hw, lay.localVocab, config.nEmbd).T, bias: nil,
                      dw: grad.map { Mat($0.ptr(hw.f32), lay.localVocab, config.nEmbd) }, dbias: nil,
                      inOffset: 0, inGlobal: config.nEmbd)
        adapterLinears = adW.map { AdapterLinears.all($0, grad: adG) } ?? []
        acts = Activations(config: config, layout: layout, batch: batch, seq: seq, training: training,
                           adapterSlots: adapters.map { config.nLayer * $0.config.positions.count } ?? 0,
                           adapterWidth: adapters?.localWidth ?? 0, precision: precision,
                           kept: GPTModel.keptInputs(mode: mode, deltaOps: deltaOps), logitBudget: logitBudget)
        backwardPlan = BackwardPlan(config: config, mode: mode, deltaOps: deltaOps, adapters: adapterConfig)
        family = FamilyParts(layout: layout, base: base)
    }

    /// The linear inputs backward reads for weight gradients: all in full fine-tuning, those of
    /// the ops carrying deltas (LoRA's targets), none for adapters (they keep their own).
    static func keptInputs(mode: TrainMode, deltaOps t: Set<BlockLinears.Op>) -> KeptInputs {
        switch mode {
        case .full: return .all
        case .adapter, .bitfit: return KeptInputs(xn1: false, xn2: false, att: false, fcAct: false)
        case .lora:
            return KeptInputs(xn1: t.contains(.qkv), xn2: t.contains(.fc), att: t.contains(.proj),
                              fcAct: t.contains(.fcProj))
        }
    }

    /// Adapter slot index of (layer, position) in the activation buffers (independent of storage).
    func adapterIndex(_ l: Int, _ pos: AdapterPosition) -> Int? {
        guard let ad = adapters, let k = ad.config.positions.firstIndex(of: pos) else { return nil }
        return l * ad.config.positions.count + k
    }

    func makeActivations(batch: Int, seq: Int, training: Bool) -> Activations {
        Activations(config: config, layout: layout, batch: batch, seq: seq, training: training,
                    adapterSlots: adapters.map { config.nLayer * $0.config.positions.count } ?? 0,
                    adapterWidth: adapters?.localWidth ?? 0, precision: base.shape.precision,
                    kept: GPTModel.keptInputs(mode: mode, deltaOps: deltas?.ops ?? []))
    }

    /// One-row inference buffers for decoding sequences of up to `tokens` tokens (default: the
    /// full context), made on first use and grown when a longer sequence needs them. Attention's
    /// buffers grow with the square of the length, so a generation sizes them to its prompt and
    /// its bound, not to the context (32,768 tokens for Qwen2.5 would need tens of GB).
    func decodeActivations(tokens: Int? = nil) -> Activations {
        let seq = max(1, min(config.nPositions, tokens ?? config.nPositions))
        if let a = decodeActs, a.seq >= seq { return a }
        decodeActs = nil
        let a = makeActivations(batch: 1, seq: seq, training: false)
        decodeActs = a
        return a
    }

    /// Runs `body` on the one-row inference buffers (`decodeActivations`) for sequences of up to
    /// `tokens` tokens, then puts the training buffers back, untouched.
    func withDecodeActivations<R>(tokens: Int, _ body: () throws -> R) rethrows -> R {
        let saved = acts
        acts = decodeActivations(tokens: tokens)
        defer { acts = saved }
        return try body()
    }

    /// The environment of this pass's linear ops: the regions, and the pass as their deltas see it
    /// unless merged.
    var linearEnv: LinearEnv {
        let a = acts
        let deltaPass = deltas?.merged == false ? DeltaPass(context: pass, rows: a.n, kept: a.training) : nil
        return LinearEnv(regions: regions, deltas: deltaPass, half: a.half.count > 0 ? a.half.base : nil,
                         halfCount: a.half.count)
    }

    /// Parameters that train in this mode, over the whole model (each TP shard counted once).
    public var trainableParameters: Int {
        switch mode {
        case .lora: return deltas?.parameterCount ?? 0
        case .full: return config.parameterCount
        case .adapter: return adapters?.globalCount ?? 0
        case .bitfit: return biases?.globalCount ?? 0
        }
    }

    /// The precision the frozen base computes in.
    public var precision: Precision { base.shape.precision }
}
