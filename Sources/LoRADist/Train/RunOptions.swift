import Foundation

/// Everything `lora-dist train` (and `pretrain`) needs. The defaults are the command's: it reads
/// them from here (`Defaults`, and `TrainOptions`'s; README.md documents them).
public struct RunOptions: Sendable {
    public var train = TrainOptions()
    public var adapters: AdapterConfig?
    /// Tensor-parallel degree; nil = the whole world.
    public var tp: Int?
    /// No --seq on completion data (`--data`, the built-in task): `TrainRun` sets `train.seq` to
    /// the longest training example's tokens, at most the model's context, dropping (and counting)
    /// the examples longer than the context.
    public var seqFromData = false
    public var base: BaseSpec
    /// Directory with train.jsonl and valid.jsonl (test.jsonl optional); nil = the built-in task.
    public var dataDir: String?
    /// Plain-text file for language-model training (pretraining); nil = completion data.
    public var textFile: String?
    /// A tokenizer.json or a directory with tokenizer files; nil: the base's own (`TokenizerChoice`).
    public var tokenizer: String?
    public var out: String
    /// Held-out examples generated for the task metrics (0: none).
    public var evalExamples = Defaults.evalExamples
    /// How the held-out generations are decoded.
    public var decoding = Decoding.greedy
    /// Most new tokens per held-out generation; nil: the longest reference of the evaluated
    /// examples plus a margin (`Evaluate.maxNewTokens`).
    public var evalMaxTokens: Int?
    /// Whether to evaluate before training as well as after.
    public var evalBefore = true
    /// Held-out examples for the validation loss: the first N (nil: all, 0: no validation loss).
    public var validLimit = Defaults.validLimit
    /// A progress line every N steps (and after the last).
    public var logEvery = Defaults.logEvery
    /// BitFit: also write the base with the trained biases to out/model/ (full fine-tuning always writes it).
    public var saveBase = false
    public var quiet = false
    /// Write a checkpoint every N steps (0: never) and keep the newest `keep`.
    public var saveEvery = Defaults.saveEvery
    public var keep = Defaults.keep
    /// "latest" or a checkpoint directory.
    public var resume: String?
    /// The faults a test injects (none by default).
    public var faults = FaultPlan.none
    public init(base: BaseSpec, out: String) {
        self.base = base
        self.out = out
    }

    /// The defaults of the options above that have a number for one.
    public enum Defaults {
        public static let evalExamples = 48
        public static let validLimit: Int? = 64
        public static let logEvery = 20
        public static let saveEvery = 0
        public static let keep = 3
    }
}
