import Foundation

extension TPLayout {
    /// Refuses a method that trains the key/value projections' own weights (full fine-tuning, and
    /// BitFit when k and v have biases) while each key/value head is held whole by several ranks
    /// (`kvReplicated`): each of those ranks computes only the part of the head's gradient its own
    /// query heads give, and summing the parts over the ranks sharing the head is not implemented.
    public func requireKVTrainable(by method: Method) throws {
        guard kvReplicated, method == .full || (method == .bitfit && config.qkvBias) else { return }
        let what = method == .full ? "full fine-tuning" : "BitFit (with the k_proj and v_proj biases)"
        throw ModelError.invalidParallel(
            """
            \(what) at --tp \(degree) is not supported for this model: its \(config.nKVHead) key/value \
            head\(config.nKVHead == 1 ? " is" : "s are") shared by \(degree / config.nKVHead) ranks each, whose \
            gradients would have to be summed; use a --tp that divides \(config.nKVHead), or LoRA
            """
        )
    }
}

/// One tensor-parallel rank's decoder (GPT-2 or the Llama family): its shard of the base, what
/// trains or is added to it (`Trainable`, whose LoRA is the deltas the linear ops call), and the
/// forward/backward passes (explicit, llm.c style). It holds no pass state: a forward writes into
/// the caller's `Activations` and returns a `ForwardPass` that the loss and backward take;
/// decoding has its own buffers (`Generator`). All communication goes through `regions`.
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
    /// What trains (with its gradients when built for training), or what decoding adds to the
    /// base; nil for the base alone.
    public let trainable: Trainable?
    /// Each block's four linear ops, and the LM head (vocab-parallel).
    let blocks: [BlockLinears]
    let head: Linear
    /// Which backward stages run, and where backward stops.
    let backwardPlan: BackwardPlan
    /// Its family's norm, MLP activation and positions (GPT-2's or the Llama family's).
    let family: FamilyParts

    /// This rank's shard of `config` on `tp`, and `trainable` built on it: with its gradients when
    /// `training`. `sharing` is another model's base of the same layout and precision, used in place.
    public init(
        config: GPTConfig, tp: Communicator, trainable spec: Trainable.Spec?, training: Bool = true,
        sharing shared: BaseWeights? = nil, precision: Precision = .fp32
    ) throws {
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
        let b = base
        let lay = layout
        let t = try spec.map { try Trainable($0, base: b, layout: lay, training: training) }
        trainable = t
        let deltas = t?.deltas
        blocks = (0..<config.nLayer).map { l in
            BlockLinears(layer: l, base: b, grad: t?.baseGradients, biasGrad: t?.biases, deltas: deltas, layout: lay)
        }
        // The LM head reads wte (tied) or lm_head transposed: [Vl, d] → logits [n, Vl].
        let hw = b.shape.head ?? b.shape.wte
        let grad = t?.baseGradients
        head = Linear(
            kind: .column, site: .headInGrad, w: b.matrix(hw, lay.localVocab, config.nEmbd).T, bias: nil,
            dw: grad.map { Mat($0.ptr(hw.f32), lay.localVocab, config.nEmbd) }, dbias: nil,
            inOffset: 0, inGlobal: config.nEmbd)
        backwardPlan = spec?.backwardPlan(config: config) ?? BackwardPlan(config: config, method: nil)
        family = FamilyParts(layout: layout, base: base)
    }

    /// The buffers of passes of `batch` sequences of up to `seq` positions: every block's
    /// activations kept for backward when `training` (only each block's input under
    /// `recompute: .blocks`, backward recomputing the rest), one set reused by all blocks otherwise.
    /// `logitBudget` bounds the floats of logits held at once (see `lossForward`); `packed`, when
    /// given, the rows and Σ len² of the largest packed pass they serve (instead of batch × seq).
    public func activations(
        batch: Int, seq: Int, training: Bool = true,
        logitBudget: Int = Activations.logitBudget, recompute: Recompute = .none, packed: PackedCapacity? = nil
    ) throws -> Activations {
        guard seq <= config.nPositions else {
            throw ModelError.invalidConfig("sequence length \(seq) exceeds the model's context \(config.nPositions)")
        }
        let ad = trainable?.adapters
        return Activations(
            config: config, layout: layout, batch: batch, seq: seq, training: training,
            adapterSlots: ad.map { config.nLayer * $0.config.positions.count } ?? 0,
            adapterWidth: ad?.localWidth ?? 0, precision: precision,
            kept: trainable?.spec.keptInputs ?? .none, logitBudget: logitBudget, recompute: recompute,
            packed: packed)
    }

    /// Inference buffers for serving steps (`forward(tokens:sequences:into:caches:)`): up to `rows`
    /// tokens in up to `sequences` sequences whose attention takes at most `probabilities` scores
    /// per head (Σ len_i · (pos0_i + len_i)), not sequences × context².
    public func servingActivations(rows: Int, sequences: Int, probabilities: Int) throws -> Activations {
        guard rows >= 1, sequences >= 1, sequences <= rows, probabilities >= rows else {
            throw ModelError.invalidConfig(
                """
                a serving plan needs rows ≥ sequences ≥ 1, a score per row (got \
                \(rows), \(sequences), \(probabilities))
                """
            )
        }
        let ad = trainable?.adapters
        return Activations(
            config: config, layout: layout, batch: sequences, seq: min(rows, config.nPositions), training: false,
            adapterSlots: ad.map { config.nLayer * $0.config.positions.count } ?? 0,
            adapterWidth: ad?.localWidth ?? 0, precision: precision, kept: .none, rows: rows,
            probabilities: probabilities)
    }

    /// Adapter slot index of (layer, position) in the activation buffers (independent of storage).
    func adapterIndex(_ l: Int, _ pos: AdapterPosition) -> Int? {
        guard let ad = trainable?.adapters, let k = ad.config.positions.firstIndex(of: pos) else { return nil }
        return l * ad.config.positions.count + k
    }

    /// The environment of `fp`'s linear ops: the regions, and the pass as their deltas see it
    /// unless merged.
    func linearEnv(_ fp: ForwardPass) -> LinearEnv {
        let a = fp.acts
        let deltaPass =
            trainable?.deltas?.merged == false
            ? DeltaPass(context: fp.context, rows: a.n, kept: a.training) : nil
        return LinearEnv(
            regions: regions, deltas: deltaPass, half: a.half.count > 0 ? a.half.base : nil,
            halfCount: a.half.count)
    }

    /// The precision the frozen base computes in.
    public var precision: Precision { base.shape.precision }
}
