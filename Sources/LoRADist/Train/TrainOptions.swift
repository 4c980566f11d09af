import Foundation

/// Hyper-parameters of one training run. The defaults are `lora-dist train`'s: its options read
/// them from here, so they are written once (README.md documents them).
public struct TrainOptions: Codable, Equatable, Sendable {
    public var method: Method = .lora
    /// The LoRA of GPT-2's family (the built-in base's); `defaultLoRA(for:)` gives the Llama family's.
    public var lora = TrainOptions.defaultLoRA(for: .gpt2)
    public var steps = 240
    /// Examples per optimizer step over all data-parallel replicas and micro-batches.
    public var globalBatch = 16
    /// Examples per forward pass on one replica (gradient accumulation makes up the rest).
    public var microBatch = 16
    /// Tokens per sequence (`train` shortens the default to a smaller model's context).
    public var seq = 168
    public var lr: Float = 3e-3
    public var warmup = 20
    public var decay: LRSchedule.Decay = .linear
    public var minLRRatio: Float = 0
    public var weightDecay: Float = 0.01
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var clip: Float = 1.0
    public var labelSmoothing: Float = 0
    public var seed: UInt64 = 1234
    /// How the frozen base computes (the trainable parameters are fp32 either way).
    public var precision: Precision = .fp32
    /// What the forward keeps for the backward: every block's intermediates (`none`), or each
    /// block's input, the backward recomputing the rest block by block (`blocks`: less memory,
    /// about one more forward of compute; the same numbers bit for bit).
    public var recompute: Recompute = .none
    /// Each micro-batch's examples laid end to end as its sequences (attention and positions per
    /// example, no padding computed); off: one example per row, padded to `seq`.
    public var packing = true

    public init() {}

    /// LoRA when no other is asked for: r 8, α 32 on every projection a model of `family` has (GPT-2
    /// or the Llama family; the built-in 0.85 M-parameter model needs the MLP too to learn its task).
    public static func defaultLoRA(for family: ModelFamily) -> LoRAConfig {
        LoRAConfig(rank: 8, alpha: 32, targets: LoRATarget.available(in: family))
    }

    public var schedule: LRSchedule {
        LRSchedule(peak: lr, warmup: warmup, total: steps, decay: decay, minRatio: minLRRatio)
    }

    /// Micro-batches each replica runs per optimizer step.
    public func accumulation(dp: Int) -> Int { globalBatch / (microBatch * dp) }

    /// Refuses a value out of its range, naming the option as `train` spells it (the command
    /// refuses them with these messages while parsing, `dp` nil), and with `dp` a global batch the
    /// replicas' micro-batches do not divide.
    public func validate(dp: Int?) throws {
        func bad(_ m: String) -> TrainError { .invalidOption(m) }
        guard steps >= 1 else { throw bad("--steps must be at least 1 (got \(steps))") }
        guard microBatch >= 1 else { throw bad("--micro-batch must be at least 1 (got \(microBatch))") }
        guard globalBatch >= 1 else { throw bad("--batch must be at least 1 (got \(globalBatch))") }
        if let dp, globalBatch % (microBatch * dp) != 0 {
            throw bad("--batch \(globalBatch) is not a multiple of --micro-batch \(microBatch) × dp \(dp)")
        }
        guard lr > 0, lr.isFinite else { throw bad("--lr must be positive (got \(lr))") }
        guard warmup >= 0 else { throw bad("--warmup must not be negative (got \(warmup))") }
        guard weightDecay >= 0 else { throw bad("--weight-decay must not be negative (got \(weightDecay))") }
        guard clip >= 0, clip.isFinite else { throw bad("--clip must be a number, 0 or more (got \(clip))") }
        guard labelSmoothing >= 0 && labelSmoothing < 1 else {
            throw bad("--label-smoothing must be in [0, 1) (got \(labelSmoothing))")
        }
        guard seq >= 2 else { throw bad("--seq must be at least 2 (got \(seq))") }
    }

    /// Which of a step's `globalBatch` examples (indices 0 ..< globalBatch) micro-batch `j` of
    /// data-parallel replica `replica` runs: the global micro-batch j is examples
    /// j·m·dp ..< (j+1)·m·dp, and replica k takes its k-th block of m. The union over replicas and
    /// micro-batches is the whole global batch, whatever dp is.
    public func exampleRange(micro j: Int, replica: Int, dp: Int) -> Range<Int> {
        let lo = (j * dp + replica) * microBatch
        return lo..<(lo + microBatch)
    }
}
