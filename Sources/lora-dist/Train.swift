import ArgumentParser
import Foundation
import LoRADist

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune a base model (LoRA by default) on the built-in task or your data.",
        discussion:
            """
            With no arguments: LoRA (r 8, α 32, on every projection: q, k, v, o and the MLP's) on the built-in base \
            and task; under mpirun the base is sharded over all ranks (--tp). The paper's GPT-2 setting is \
            --lora-targets q,v --lora-rank 4.
            """
    )

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var loraOptions: LoRAOptions
    @OptionGroup(title: "Evaluation decoding") var decodingOptions: DecodingOptions
    @Option(help: "lora, full, bitfit (every bias, LayerNorm β included), adapter-h or adapter-l.") var method: Method =
        .lora
    @Option(help: "Adapter bottleneck width m.") var bottleneck = 16
    @Option(help: "Adapter placement on a sharded model: replicated, sharded or owner.") var placement:
        AdapterPlacement = .replicated
    @OptionGroup var parallel: ParallelOptions
    @Option(
        help:
            """
            Directory with train.jsonl, valid.jsonl (and test.jsonl) of {\"context\", \"completion\"}. Default: the \
            built-in task.
            """
    )
    var data: String?
    @Option(help: "Plain-text file to train a language model on (pretraining) instead of completion data.") var text:
        String?
    @Option(
        help:
            """
            Tokenizer: a tokenizer.json or a directory with tokenizer.json or vocab.json + merges.txt. Default: the \
            tokenizer files in the --base directory (tokenizer.json, or GPT-2's vocab.json + merges.txt) if there are \
            any, else bytes.
            """
    )
    var tokenizer: String?
    @Option(
        help: """
            Optimizer steps (default: \(trainDefaults.steps), or the recipe's epochs with --paper-e2e-recipe; a given \
            --steps wins over the recipe's).
            """)
    var steps: Int?
    @Option(
        help:
            """
            Train for this many passes over the training examples instead of --steps (steps = ⌈epochs · examples / \
            batch⌉).
            """
    ) var epochs: Int?
    @Flag(
        help:
            """
            The paper's E2E recipe (its Table 11, as the LoRA repository's E2E command runs it): LoRA on q and v, r 4, \
            α 32, dropout 0.1, label smoothing 0.1, AdamW lr 2e-4, 500 warm-up steps then linear decay, weight decay \
            0.01, no gradient clipping, batch 8, 5 epochs (unless --steps or --epochs is given), and the evaluation \
            decoded with beam 10, length penalty 0.8, no repeated 4-grams. Overrides those options; --data, --base, \
            --seq, --tp, --out and the rest apply as given.
            """
    )
    var paperE2eRecipe = false
    @Option(help: "Sequences per optimizer step (all replicas).") var batch = trainDefaults.globalBatch
    @Option(help: "Sequences per forward pass on one replica (the rest is gradient accumulation).") var microBatch: Int?
    @Option(
        help:
            """
            Tokens per sequence. Completion data (--data, the built-in task): the longest training example, at most \
            the model's context (longer examples are dropped and counted); --text (default: \(trainDefaults.seq), or \
            the model's context if that is shorter).
            """
    )
    var seq: Int?
    @Option(
        help:
            """
            Pack each micro-batch's examples end to end (attention and positions per example, no padding computed): \
            on or off (one example per row, padded to --seq).
            """
    )
    var packing: OnOff = trainDefaults.packing ? .on : .off
    @Option(help: "Peak learning rate.") var lr = trainDefaults.lr
    @Option(help: "Warm-up steps.") var warmup = trainDefaults.warmup
    @Option(help: "Decay after warm-up: linear, cosine or constant.") var decay = trainDefaults.decay
    @Option(help: "AdamW weight decay.") var weightDecay = trainDefaults.weightDecay
    @Option(help: "Gradient clipping by global norm (0: off).") var clip = trainDefaults.clip
    @Option(help: "Label smoothing.") var labelSmoothing = trainDefaults.labelSmoothing
    @Option(help: "Seed of LoRA init, data order and dropout.") var seed = trainDefaults.seed
    @Option(help: precisionHelp) var precision = trainDefaults.precision
    @Option(help: recomputeHelp) var recompute = trainDefaults.recompute
    @Option(help: "Held-out examples to generate for the task metrics (0: none).")
    var evalExamples = RunOptions.Defaults.evalExamples
    @Option(
        help:
            """
            Most new tokens per held-out generation. Default: the longest reference of the examples generated for, in \
            tokens, plus a quarter (at least 8); a generation also ends at end-of-text.
            """
    )
    var evalMaxTokens: Int?
    @Option(help: "Evaluate before training as well as after: on or off.") var evalBefore: OnOff = .on
    @Option(help: "Print progress every N steps.") var logEvery = RunOptions.Defaults.logEvery
    @Option(help: "Held-out examples for the validation loss: the first N, all, or 0 for none.")
    var validLimit = ValidLimit(RunOptions.Defaults.validLimit)
    @Option(
        help:
            """
            Run directory: adapter.safetensors (LoRA, adapter-h/-l, BitFit) or model/ (full), metrics.jsonl, \
            summary.json.
            """
    ) var out = "runs/latest"
    @Flag(
        help:
            """
            BitFit: also write the base with its trained biases to OUT/model/ (config.json + model.safetensors), at \
            any --tp. Full fine-tuning always writes OUT/model/; the other methods leave the base frozen.
            """
    ) var saveModel = false
    @Option(help: "Write a checkpoint every N steps (and at the end); 0: never.")
    var saveEvery = RunOptions.Defaults.saveEvery
    @Option(help: "Keep the newest K checkpoints.") var keep = RunOptions.Defaults.keep
    @Option(help: "Resume from a checkpoint: latest (the newest under --out) or a checkpoint directory.") var resume:
        String?
    @Option(help: .hidden) var injectNanAt: String?
    @Option(help: .hidden) var injectFailAt: String?
    @Option(help: .hidden) var injectExitAt: String?
    @Option(help: .hidden) var injectHangAt: String?
    @Option(
        help:
            """
            Seconds any collective may wait for the other ranks; then every waiting rank reports the phase, the \
            operation and the ranks that did not arrive, and the job ends (0: no limit).
            """
    )
    var collectiveTimeout: Double = 300

    /// The note a --text run whose default --seq was shortened to the model's context prints.
    func seqNote(_ o: RunOptions) -> String? {
        guard seq == nil, !o.seqFromData, o.train.seq < trainDefaults.seq else { return nil }
        let seq = o.train.seq
        return "note: --seq defaults to \(trainDefaults.seq) tokens; this model's context is \(seq), so sequences are "
            + "\(seq) tokens"
    }

    /// "STEP:RANK" of the fault-injection options.
    static func stepRank(_ s: String?) throws -> (step: Int, rank: Int)? {
        guard let s else { return nil }
        let p = s.split(separator: ":").compactMap { Int($0) }
        guard p.count == 2 else { throw ValidationError("fault injection takes STEP:RANK (got \(s))") }
        return (p[0], p[1])
    }

    /// The faults the hidden --inject-*-at options ask for.
    func faultPlan() throws -> FaultPlan {
        var f = FaultPlan()
        f.nan = try Self.stepRank(injectNanAt)
        f.fail = try Self.stepRank(injectFailAt)
        f.exit = try Self.stepRank(injectExitAt)
        if let h = injectHangAt {
            let p = h.split(separator: ":")
            guard p.count == 2 || p.count == 3, let step = Int(p[0]), let rank = Int(p[1]) else {
                throw ValidationError("--inject-hang-at takes STEP:RANK or STEP:RANK:SECONDS (got \(h))")
            }
            f.hang = (step, rank, p.count == 3 ? Double(p[2]) : nil)
        }
        return f
    }

    func validate() throws {
        try Ranges.atLeast(bottleneck, 1, "--bottleneck")
        // The hyper-parameters' ranges are the library's (`TrainOptions.validate`), refused here while parsing.
        do { try trainOptions.validate(dp: nil) } catch let e as TrainError { throw ValidationError(e.description) }
        try Ranges.atLeast(evalExamples, 0, "--eval-examples")
        try Ranges.atLeast(logEvery, 1, "--log-every")
        if steps != nil && epochs != nil { throw ValidationError("--steps and --epochs cannot be combined: give one") }
        if data != nil && text != nil { throw ValidationError("--data and --text cannot be combined") }
        try Ranges.atLeast(saveEvery, 0, "--save-every")
        try Ranges.atLeast(keep, 1, "--keep")
        guard collectiveTimeout >= 0, collectiveTimeout.isFinite else {
            throw ValidationError(
                "--collective-timeout must be a number of seconds, 0 or more (got \(collectiveTimeout))")
        }
        try Ranges.atLeast(evalMaxTokens, 1, "--eval-max-tokens")
        try Ranges.atLeast(epochs, 1, "--epochs")
        if (epochs != nil || paperE2eRecipe) && text != nil {
            throw ValidationError(
                "--epochs and --paper-e2e-recipe count examples of --data or the built-in task, not --text")
        }
        if paperE2eRecipe && method != .lora {
            throw ValidationError("--paper-e2e-recipe is a LoRA recipe (got --method \(method.rawValue))")
        }
    }

    /// The hyper-parameters as given on the command line, the library's defaults for the rest
    /// (`runOptions` sets the LoRA, and --seq's and --micro-batch's defaults, from the base and the world).
    var trainOptions: TrainOptions {
        var o = TrainOptions()
        o.method = method
        if let steps { o.steps = steps }
        o.globalBatch = batch
        if let microBatch { o.microBatch = microBatch }
        if let seq { o.seq = seq }
        o.packing = packing == .on
        o.lr = lr
        o.warmup = warmup
        o.decay = decay
        o.weightDecay = weightDecay
        o.clip = clip
        o.labelSmoothing = labelSmoothing
        o.seed = seed
        o.precision = precision
        o.recompute = recompute
        return o
    }

    /// What these options ask of `TrainRun` on a world of `worldSize` ranks.
    func runOptions(worldSize: Int) throws -> RunOptions {
        var o = trainOptions
        let base = try modelOptions.spec()
        let shape = try BaseFiles.shape(of: base)
        o.lora = try loraOptions.config(family: shape.family)
        if seq == nil { o.seq = min(o.seq, shape.nPositions) }
        var decoding = decodingOptions.decoding
        var epochs = self.epochs
        if paperE2eRecipe {
            o.lora = LoRAConfig(rank: 4, alpha: 32, targets: [.q, .v], dropout: 0.1, initA: loraOptions.initA)
            o.labelSmoothing = 0.1
            o.lr = 2e-4
            o.warmup = 500
            o.decay = .linear
            o.weightDecay = 0.01
            o.clip = 0
            o.globalBatch = 8
            // The recipe's 5 epochs unless --steps (or --epochs) says how long.
            if steps == nil { epochs = epochs ?? 5 }
            decoding = .paper
        }
        if let e = epochs {
            let n = try data.map { try JSONLines.read($0 + "/train.jsonl").count } ?? BuiltinTask.standard.train
            o.steps = max(1, (e * n + o.globalBatch - 1) / o.globalBatch)
        }
        var ro = RunOptions(base: base, out: out)
        let degree = parallel.tpDegree(world: worldSize)
        guard worldSize % degree == 0 else {
            throw ModelError.invalidParallel(
                """
                the world of \(worldSize) ranks is not divisible by --tp \(degree): \
                \(TPLayout.suggestion(shape, world: worldSize))
                """
            )
        }
        let dp = worldSize / degree
        o.microBatch = microBatch ?? max(1, o.globalBatch / dp)
        ro.train = o
        ro.seqFromData = seq == nil && text == nil
        ro.tp = degree
        ro.dataDir = data
        ro.textFile = text
        ro.tokenizer = tokenizer
        ro.evalExamples = evalExamples
        ro.decoding = decoding
        ro.validLimit = validLimit.count
        ro.evalMaxTokens = evalMaxTokens
        ro.evalBefore = evalBefore == .on
        ro.logEvery = logEvery
        ro.saveBase = saveModel
        ro.saveEvery = saveEvery
        ro.keep = keep
        ro.resume = resume
        ro.faults = try faultPlan()
        ro.adapters = method.adapters(bottleneck: bottleneck, placement: placement)
        return ro
    }

    func run() throws {
        let interrupted = SharedFlag()
        // From the start, so that a stop asked for while loading still ends at a step boundary.
        StopSignal.install()
        CollectiveDeadline.seconds = collectiveTimeout
        let code = parallel.run { world in
            // Options every rank reads alike (the base's family among them): a bad one stops all, each saying it.
            var ro: RunOptions?
            try Collective.agree(over: world, at: .load) { ro = try runOptions(worldSize: world.size) }
            if world.rank == 0, let note = seqNote(ro!) {
                print(note)
                fflush(stdout)
            }
            let run = try TrainRun(world: world, options: ro!)
            _ = try run.run()
            if let s = run.stoppedBy { interrupted.set(s) }
        }
        if code != 0 { throw ExitCode(code) }
        // Stopped by a signal after writing a checkpoint: the conventional status, 128 + the signal.
        if let s = interrupted.value { throw ExitCode(StopSignal.exitStatus(s)) }
    }
}

/// A signal number set from rank threads.
final class SharedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var v: Int32?
    func set(_ s: Int32) {
        lock.lock()
        v = s
        lock.unlock()
    }
    var value: Int32? {
        lock.lock()
        defer { lock.unlock() }
        return v
    }
}

/// on or off.
enum OnOff: String, ExpressibleByArgument, CaseIterable { case on, off }

/// `--valid-limit`: a number of examples (0: none) or all of them.
struct ValidLimit: ExpressibleByArgument, CustomStringConvertible {
    /// nil: all.
    var count: Int?
    init(_ count: Int?) { self.count = count }
    init?(argument: String) {
        if argument == "all" { count = nil } else if let n = Int(argument), n >= 0 { count = n } else { return nil }
    }
    var description: String { count.map(String.init) ?? "all" }
    var defaultValueDescription: String { description }
}
