import Foundation

extension TPLayout {
    /// Refuses a method that trains the key/value projections' own weights (full fine-tuning, and
    /// BitFit when k and v have biases) while each key/value head is held whole by several ranks
    /// (`kvReplicated`): each of those ranks computes only the part of the head's gradient its own
    /// query heads give, and summing the parts over the ranks sharing the head is not implemented.
    public func requireKVTrainable(by method: Method) throws {
        guard kvReplicated, method == .full || (method == .bitfit && config.qkvBias) else { return }
        let what = method == .full ? "full fine-tuning" : "BitFit (with the k_proj and v_proj biases)"
        throw ModelError.invalidParallel("\(what) at --tp \(degree) is not supported for this model: its \(config.nKVHead) key/value head\(config.nKVHead == 1 ? " is" : "s are") shared by \(degree / config.nKVHead) ranks each, whose gradients would have to be summed; use a --tp that divides \(config.nKVHead), or LoRA")
    }
}

/// One tensor-parallel rank's decoder (GPT-2 or the Llama family): its shard of the base, what
/// trains or is added to it (`Trainable`), and the forward/backward passes (explicit, llm.c
/// style). It holds no pass state: a forward writes into the caller's `Activations` and returns a
/// `ForwardPass` that the loss and backward take; decoding has its own buffers (`Generator`). All
/// communication goes through `regions`.
///
/// Backward stages, bottom to top: 0 = embeddings, then per block l: 1+6l attention input (ln_1,
/// c_attn or q|k|v_proj, LoRA q/k/v), 2+6l attention output (c_proj or o_proj, LoRA o), 3+6l the
/// adapter after attention, 4+6l MLP input (ln_2, c_fc or gate|up_proj, LoRA mlp_in/gate/up), 5+6l
/// MLP output (mlp.c_proj or down_proj, LoRA mlp_out/down), 6+6l the adapter after the MLP, and
/// 1+6L the final norm. The Llama family's blocks (RMSNorm, rotary positions, grouped-query
/// attention, SwiGLU) have the same stages and collectives as GPT-2's. Backward stops at the lowest stage holding
/// a trainable parameter: nothing below it is computed.
public final class GPTModel {
    public let config: GPTConfig
    public let layout: TPLayout
    public let regions: TPRegions
    public let base: BaseWeights
    /// What trains (with its gradients when built for training), or what decoding adds to the
    /// base; nil for the base alone.
    public let trainable: Trainable?
    public private(set) var loraMerged = false
    /// Each block's four linear ops, and the LM head (vocab-parallel).
    let blocks: [BlockLinears]
    let head: Linear
    /// The rotary angles of the Llama family's attention (nil for GPT-2, which has learned positions).
    let rotary: RotaryTable?

    /// This rank's shard of `config` on `tp`, and `trainable` built on it: with its gradients when
    /// `training`. `sharing` is another model's base of the same layout and precision, used in place.
    public init(config: GPTConfig, tp: Communicator, trainable spec: Trainable.Spec?, training: Bool = true,
                sharing shared: BaseWeights? = nil, precision: Precision = .fp32) throws {
        try config.validate()
        self.config = config
        layout = try TPLayout(config: config, degree: tp.size, rank: tp.rank)
        if let spec { try layout.requireKVTrainable(by: spec.method) }
        regions = TPRegions(comm: tp)
        if let shared {
            guard shared.shape.layout == layout, shared.shape.precision == precision else {
                throw ModelError.invalidParallel("shared base weights have another layout or precision")
            }
            base = shared
        } else {
            // Full fine-tuning keeps fp32 master weights; a frozen base is held in bf16 alone.
            base = BaseWeights(shape: BaseLayout(layout: layout, precision: precision, master: spec == .full))
        }
        let b = base, lay = layout
        let t = try spec.map { try Trainable($0, base: b, layout: lay, training: training) }
        trainable = t
        blocks = (0..<config.nLayer).map { l in
            BlockLinears(layer: l, base: b, grad: t?.baseGradients, biasGrad: t?.biases, lora: t?.lora,
                         loraGrad: t?.loraGradients, layout: lay)
        }
        // The LM head reads wte (tied) or lm_head transposed: [Vl, d] → logits [n, Vl].
        let hw = b.shape.head ?? b.shape.wte, grad = t?.baseGradients
        head = Linear(kind: .column, site: .headInGrad, w: b.matrix(hw, lay.localVocab, config.nEmbd).T, bias: nil,
                      dw: grad.map { Mat($0.ptr(hw.f32), lay.localVocab, config.nEmbd) }, dbias: nil,
                      inOffset: 0, inGlobal: config.nEmbd)
        rotary = config.family == .gpt2 ? nil
            : RotaryTable(headDim: config.headDim, positions: config.nPositions, theta: config.ropeTheta, llama3: config.ropeScaling)
    }

    /// The buffers of passes of `batch` sequences of up to `seq` positions: every block's
    /// activations kept for backward when `training`, one set reused by all blocks otherwise.
    /// `logitBudget` bounds the floats of logits held at once (see `lossForward`).
    public func activations(batch: Int, seq: Int, training: Bool = true,
                            logitBudget: Int = Activations.logitBudget) throws -> Activations {
        guard seq <= config.nPositions else {
            throw ModelError.invalidConfig("sequence length \(seq) exceeds the model's context \(config.nPositions)")
        }
        let ad = trainable?.adapters
        return Activations(config: config, layout: layout, batch: batch, seq: seq, training: training,
                           loraSlots: lora?.slots.count ?? 0, loraRank: lora?.maxRank ?? 1,
                           adapterSlots: ad.map { config.nLayer * $0.config.positions.count } ?? 0,
                           adapterWidth: ad?.localWidth ?? 0, precision: precision,
                           kept: trainable?.keptInputs ?? .none, logitBudget: logitBudget)
    }

    /// The lowest backward stage holding a trainable parameter (the final norm's, above every
    /// block, when nothing trains).
    var lowestStage: Int { trainable?.lowestStage(config: config) ?? 1 + 6 * config.nLayer }

    /// The lowest backward stage holding a trainable parameter: backward stops there (see the stage
    /// numbering above). The collective schedule (`StepSchedule`) reads the same rule.
    static func lowestStage(config: GPTConfig, method: Method, lora: LoRAConfig?, adapters: AdapterConfig?) -> Int {
        let top = 1 + 6 * config.nLayer
        switch method {
        case .full, .bitfit:
            // BitFit's lowest bias is block 0's ln_1 β, below its attention input: all blocks run.
            return 0
        case .lora:
            return lora.map { $0.targets.map { GPTModel.stage(layer: 0, target: $0) }.min() ?? top } ?? top
        case .adapterH, .adapterL:
            return adapters.map { $0.positions.map { $0 == .attention ? 3 : 6 }.min() ?? top } ?? top
        }
    }

    static func stage(layer l: Int, target: LoRATarget) -> Int {
        switch target {
        case .q, .k, .v: return 1 + 6 * l
        case .o: return 2 + 6 * l
        case .mlpIn, .gate, .up: return 4 + 6 * l
        case .mlpOut, .down: return 5 + 6 * l
        }
    }

    /// Adapter slot index of (layer, position) in the activation buffers (independent of storage).
    func adapterIndex(_ l: Int, _ pos: AdapterPosition) -> Int? {
        guard let ad = trainable?.adapters, let k = ad.config.positions.firstIndex(of: pos) else { return nil }
        return l * ad.config.positions.count + k
    }

    // MARK: merge

    /// W0 += s·B·A for every LoRA slot (this rank's part of W0); forward then skips the LoRA path.
    public func mergeLoRA() {
        guard lora != nil, !loraMerged else { return }
        for b in blocks { b.all.forEach { $0.mergeLoRA(sign: 1) } }
        loraMerged = true
    }

    /// W0 −= s·B·A: restores W0 to float rounding.
    public func unmergeLoRA() {
        guard lora != nil, loraMerged else { return }
        for b in blocks { b.all.forEach { $0.mergeLoRA(sign: -1) } }
        loraMerged = false
    }

    var loraActive: Bool { lora != nil && !loraMerged }

    /// LoRA's weights, when it is what trains or what decoding adds.
    public var lora: LoRAWeights? { trainable?.lora }

    /// The environment of `fp`'s linear ops: the regions, and LoRA's state unless merged.
    func linearEnv(_ fp: ForwardPass) -> LinearEnv {
        let a = fp.acts, pass = fp.context
        var env = LinearEnv(regions: regions, lora: nil, half: a.half.count > 0 ? a.half.base : nil, halfCount: a.half.count)
        guard loraActive, let lc = lora?.config else { return env }
        let drop = pass.training && lc.dropout > 0
            ? LoRADropout(p: lc.dropout, seed: pass.dropoutSeed, step: pass.dropoutStep, rowOffset: pass.rowOffset) : nil
        env.lora = LoRAEnv(dropout: drop, u: { a.u($0) }, du: a.du, scratch: a.scratch, half: a.n * a.scratchWidth)
        return env
    }

    /// The precision the frozen base computes in.
    public var precision: Precision { base.shape.precision }
}
