import Foundation

/// Errors of a training run; messages name the option or the rank at fault.
public enum TrainError: Error, CustomStringConvertible {
    case invalidOption(String)
    case nonFinite(String)
    case data(String)

    public var description: String {
        switch self {
        case .invalidOption(let m), .nonFinite(let m), .data(let m): return m
        }
    }
}

/// One micro-batch of this replica, in buffers the caller allocates once (batch × seq tokens):
/// tokens, targets and loss weights (mask / number of masked tokens in the whole step's global
/// batch). Its examples are either one per row, padded to seq, or packed: laid end to end from
/// row 0 as the sequences `lengths`, so no padding is computed.
public final class MicroBatch {
    public let batch: Int, seq: Int
    public var tokens: [Int32]
    public var targets: [Int32]
    public var mask: [Float]
    public var weights: [Float]
    /// Row of this micro-batch's first example in the step's global batch.
    public var globalRow = 0
    /// The packed examples' lengths (their tokens with a target), in order from row 0; empty: one
    /// example per row of seq tokens.
    public var lengths: [Int] = []
    /// Tokens that are not padding (computed tokens less padding): `TokenDataset.fill` and `pack`
    /// set it; batch × seq until then.
    public var realTokens: Int

    /// The sequences a pass over this micro-batch runs: the packed examples, or `batch` rows.
    public var sequences: Sequences {
        lengths.isEmpty ? .uniform(batch: batch, length: seq) : Sequences(lengths: lengths)
    }

    /// The rows a pass computes: Σ lengths when packed, batch × seq otherwise.
    public var rows: Int { lengths.isEmpty ? batch * seq : lengths.reduce(0, +) }

    /// The global index of each row of a packed micro-batch (its example's row in the step's global
    /// batch × seq + its position): the dropout keys its tokens have unpacked. Empty unpacked.
    public var rowKeys: [Int] {
        guard !lengths.isEmpty else { return [] }
        var keys: [Int] = []
        keys.reserveCapacity(rows)
        for (k, len) in lengths.enumerated() {
            for t in 0..<len { keys.append((globalRow + k) * seq + t) }
        }
        return keys
    }

    public init(batch: Int, seq: Int) {
        self.batch = batch
        self.seq = seq
        tokens = [Int32](repeating: 0, count: batch * seq)
        targets = tokens
        mask = [Float](repeating: 0, count: batch * seq)
        weights = mask
        realTokens = batch * seq
    }
}

/// What one optimizer step did.
public struct StepStats: Codable, Sendable {
    public var step: Int
    public var loss: Double
    public var lr: Float
    public var gradNorm: Float
    /// Tokens of the global batch that are not padding (what tok/s counts).
    public var tokens: Int
    /// Tokens the step computed over the global batch (padding included: `--packing off`).
    public var computedTokens: Int
    public var seconds: Double
    public var forward: Double, backward: Double, gradSync: Double, optimizer: Double
}

/// Runs optimizer steps of one rank: forward/backward over this replica's micro-batches, the one
/// gradient AllReduce, clipping and AdamW on the trainable parameters only.
///
/// LoRA: A/B gradients (partial over TP, per replica over DP) are summed by ONE AllReduce over the
/// whole world; every rank then holds the same gradient and applies the same update, so the
/// replicas stay bit-identical. Full FT and BitFit: each rank's shard gradients are summed over its
/// DP group (a replicated tensor's are whole, and identical, on every TP rank).
/// Loss weights are mask / (masked tokens of the global batch), so the sums are the global mean.
public final class Trainer {
    public let grid: ProcessGrid
    public let ledger: Ledger
    public let model: GPTModel
    public let options: TrainOptions
    public let optimizer: AdamW
    public private(set) var step = 0
    /// What the method updates, and its rules (`Trainable`).
    let trainable: Trainable
    var params: UnsafeMutablePointer<Float> { trainable.values }
    let grads: UnsafeMutablePointer<Float>
    public var trainableCount: Int { trainable.count }
    /// The buffers of one micro-batch's forward and backward (the evaluation's loss uses them too).
    public let activations: Activations
    /// Fault injection for tests: a NaN in this world rank's gradient at this step.
    public var injectNaN: (step: Int, rank: Int)?

    /// The trainer of `model`'s trainable (built for training, of `options.method`); `activations`
    /// are its micro-batches' buffers (default: made here for `options`' micro-batch and sequence).
    public init(
        grid: ProcessGrid, ledger: Ledger, model: GPTModel, options: TrainOptions,
        activations: Activations? = nil
    ) throws {
        try options.validate(dp: grid.dpDegree)
        self.grid = grid
        self.ledger = ledger
        self.model = model
        self.options = options
        let method = options.method
        guard let t = model.trainable else { throw TrainError.invalidOption(Trainer.untrainable(method)) }
        guard t.method == method else {
            throw TrainError.invalidOption(
                "the model computes \(t.method.rawValue) but the run trains \(method.rawValue)")
        }
        guard let g = t.gradients else { throw TrainError.invalidOption(Trainer.untrainable(method)) }
        t.gatherFromBase()
        trainable = t
        grads = g
        let acts =
            try activations
            ?? model.activations(batch: options.microBatch, seq: options.seq, recompute: options.recompute)
        guard acts.recompute == options.recompute else {
            let (have, want) = (acts.recompute.rawValue, options.recompute.rawValue)
            throw TrainError.invalidOption("the activations recompute \(have) but the run asks for \(want)")
        }
        self.activations = acts
        optimizer = AdamW(count: t.count, beta1: options.beta1, beta2: options.beta2, weightDecay: options.weightDecay)
    }

    /// Why a model without `method`'s trainable state (or without its gradients) cannot train it.
    static func untrainable(_ method: Method) -> String {
        switch method {
        case .lora: return "LoRA training needs LoRA weights"
        case .full: return "full fine-tuning needs a gradient arena"
        case .bitfit: return "BitFit needs a model built for it (mode bitfit)"
        case .adapterH, .adapterL: return "adapter training needs adapter weights"
        }
    }

    /// Restores the step counter (resume; the optimizer's own count comes from the checkpoint).
    public func setStep(_ s: Int) { step = s }

    /// The trainable parameters (what a checkpoint saves).
    public var parameters: UnsafeMutablePointer<Float> { params }

    /// Makes the model compute with the trainable parameters after they changed (an update, a
    /// restored checkpoint): full fine-tuning under bf16 rounds the fp32 masters into the GEMMs'
    /// bf16 working copy; BitFit writes its compact masters into the base's biases.
    public func publishParameters() { trainable.publish() }

    /// One optimizer step over `micro` (this replica's micro-batches, filled by the caller) whose
    /// global batch holds `globalTokens` masked tokens; `faults` may poison this rank's gradient.
    public func trainStep(_ micro: [MicroBatch], globalTokens: Int, faults: FaultPlan = .none) throws -> StepStats {
        let t0 = now()
        guard globalTokens > 0 else { throw TrainError.data("step \(step): the global batch has no target tokens") }
        let inv = 1 / Float(globalTokens)
        memsetZero(grads, trainableCount)
        var lossSum = 0.0
        var tf = 0.0
        var tb = 0.0
        for mb in micro {
            let seqs = mb.sequences
            guard activations.fits(seqs) else {
                throw TrainError.data(
                    "step \(step): a micro-batch of \(seqs.count) sequences, \(seqs.rows) tokens and Σ len² "
                        + "\(seqs.squares) does not fit the activations, planned for \(activations.batch) sequences "
                        + "of at most \(activations.seq), \(activations.n) tokens and Σ len² "
                        + "\(activations.probabilities)")
            }
            for i in 0..<mb.rows { mb.weights[i] = mb.mask[i] * inv }
            let context = PassContext(
                training: true, dropoutSeed: options.seed &+ 0x5EED, dropoutStep: UInt64(step),
                rowOffset: mb.globalRow * mb.seq, rowKeys: mb.rowKeys, labelSmoothing: options.labelSmoothing)
            let a = now()
            let pass = try ledger.with(.forward) { () -> ForwardPass in
                var pass = try mb.tokens.withUnsafeBufferPointer {
                    try model.forward(
                        tokens: $0.baseAddress!, sequences: seqs, into: activations, context: context)
                }
                lossSum += try model.lossForward(&pass, targets: mb.targets, weights: mb.weights, backward: true)
                return pass
            }
            let b = now()
            try ledger.with(.backward) {
                try mb.tokens.withUnsafeBufferPointer { try model.backward(pass, tokens: $0.baseAddress!) }
            }
            tf += b - a
            tb += now() - b
        }
        if faults.poisonsGradient(step: step, rank: grid.world.rank), trainableCount > 0 { grads[0] = .nan }
        let c = now()
        try ledger.with(.gradSync) { try syncGradients() }
        let d = now()
        // The loss is identical within a TP group; replicas' partial sums are added for the log.
        if grid.dpDegree > 1 {
            var l = [lossSum]
            try ledger.with(.metrics) { try Collective.sum(&l, over: grid.dp, at: .lossSum) }
            lossSum = l[0]
        }
        guard lossSum.isFinite else {
            try reportGemmFailure()
            throw TrainError.nonFinite("step \(step): the loss is \(lossSum) (non-finite); stopping before the update")
        }
        let norm = try gradNorm()
        guard norm.isFinite else {
            try reportGemmFailure()
            throw TrainError.nonFinite(
                "step \(step): the gradient norm is \(norm) (non-finite gradient); stopping before the update")
        }
        if options.clip > 0 && norm > options.clip {
            let s = options.clip / norm
            for i in 0..<trainableCount { grads[i] *= s }
        }
        let lr = options.schedule.rate(at: step)
        optimizer.step(params: params, grads: grads, lr: lr)
        publishParameters()
        let e = now()
        step += 1
        // This replica's counts times dp (the step loop sets the global batch's exact counts).
        let tokens = micro.reduce(0) { $0 + $1.realTokens } * grid.dpDegree
        let computed = micro.reduce(0) { $0 + $1.rows } * grid.dpDegree
        return StepStats(
            step: step, loss: lossSum, lr: lr, gradNorm: norm, tokens: tokens, computedTokens: computed,
            seconds: e - t0,
            forward: tf, backward: tb, gradSync: d - c, optimizer: e - d)
    }

    /// On the way out of a non-finite step (every rank takes it together: the loss and the norm
    /// are the same on all of them): a GEMM that failed on any rank caused it, so every rank throws
    /// that failure's message instead of the NaN's.
    func reportGemmFailure() throws {
        try Collective.agree(over: grid.world, at: .gemmFailure) {
            if let f = Gemm.failure { throw TrainError.nonFinite("step \(step): a GEMM failed: \(f)") }
        }
    }

    /// LoRA: ONE AllReduce of every A/B gradient over the world. Full FT, adapters and BitFit: the
    /// shard over DP (shards differ across TP ranks, and replicated tensors are whole on each).
    func syncGradients() throws {
        let buf = UnsafeMutableBufferPointer(start: grads, count: trainableCount)
        switch trainable.gradientGroup {
        case .world:
            if grid.world.size > 1 { try Collective.sum(buf, over: grid.world, at: .gradSync) }
        case .dp:
            if grid.dpDegree > 1 && trainableCount > 0 { try Collective.sum(buf, over: grid.dp, at: .gradSync) }
        }
    }

    /// Global gradient norm: √(Σ over the TP group of the sharded squares + the whole ones, counted once).
    func gradNorm() throws -> Float {
        var (sharded, whole) = trainable.squaredGradients()
        if trainable.sharded && grid.tpDegree > 1 {
            var v = [sharded]
            try ledger.with(.optimizer) { try Collective.sum(&v, over: grid.tp, at: .gradNorm) }
            sharded = v[0]
        }
        return Float((sharded + whole).squareRoot())
    }
}

@inline(__always) func memsetZero(_ p: UnsafeMutablePointer<Float>, _ n: Int) { p.update(repeating: 0, count: n) }
