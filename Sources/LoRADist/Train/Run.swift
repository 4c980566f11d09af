import Foundation

/// A whole `lora-dist train` run on this rank: opens the base and builds the trainer (`init`),
/// then `train` reads as its script. The pieces: `RunData` (tokenizer and datasets),
/// `RunCheckpoints` (resume and checkpoints), `RunEvaluation` (before and after), `StepLoop`
/// (the steps, metrics.jsonl, the stop at a signal, the `FaultPlan`), `RunFiles` (what the run
/// writes) and `RunSummary` (summary.json).
public final class TrainRun {
    public let options: RunOptions
    public let world: RecordingCommunicator
    /// The data (read before the trainer: it may set the sequence length, `RunOptions.seqFromData`,
    /// and packed it sizes the activations).
    private let runData: RunData
    public let grid: ProcessGrid
    public let model: GPTModel
    public let trainer: Trainer
    public let baseIdentity: BaseIdentity
    let sayLine: (String, String) -> Void
    func say(_ s: String, terminator: String = "\n") { sayLine(s, terminator) }

    /// The signal that stopped the run early (every rank agrees on it), nil if it ran to the end.
    public private(set) var stoppedBy: Int32?

    public init(world: RecordingCommunicator, options given: RunOptions) throws {
        var options = given
        self.world = world
        let quiet = options.quiet
        let sayLine = { (s: String, t: String) in
            if world.rank == 0 && !quiet {
                print(s, terminator: t)
                fflush(stdout)
            }
        }
        self.sayLine = sayLine
        try RunFiles.checkSaving(options)
        grid = try ProcessGrid(world: world, tp: options.tp ?? world.size)
        // Every rank opens the checkpoint: a bad one stops all of them, each with its message.
        var opened: OpenedBase?
        try Collective.agree(over: world, at: .load) { opened = try BaseFiles.open(options.base) }
        let base = opened!
        baseIdentity = base.identity
        // No --seq when resuming: the checkpoint's own (a run before the data set it had 168 by default).
        if options.seqFromData, let r = options.resume, let d = try? Checkpoint.resolve(r, out: options.out),
            let seq = Checkpoint.recordedSeq(d)
        {
            options.seqFromData = false
            options.train.seq = seq
            sayLine("resume: --seq \(seq), as \(d) recorded it (no --seq given)", "\n")
        }
        // No --seq on completion data: the longest training example sets it (every rank reads alike).
        // Otherwise the data is read here too, but its errors are thrown after the base's (below).
        let read: Result<RunData, Error>
        if options.seqFromData && options.textFile == nil {
            let sized = try RunData.sized(
                options, context: base.config.nPositions, vocabSize: base.config.vocabSize, say: { sayLine($0, "\n") })
            options.train.seq = sized.seq
            read = .success(sized.data)
        } else {
            read = Result { try RunData.load(options, vocabSize: base.config.vocabSize, say: { sayLine($0, "\n") }) }
        }
        self.options = options
        // Packed, the activations hold the largest micro-batch the data makes (and the validation
        // loss's largest pass), not micro-batch × seq tokens.
        let o = options.train
        let (validLimit, dp) = (options.validLimit, grid.dpDegree)
        let packed =
            o.packing
            ? (try? read.get()).map { data in
                Batcher.packedBound(
                    train: data.train, valid: data.valid,
                    validExamples: data.valid.map { min(validLimit ?? $0.count, $0.count) } ?? 0, options: o,
                    steps: o.steps, dp: dp)
            } : nil
        // Each rank loads (and checks) its own shard: all learn whether every rank could.
        trainer = try Trainer(
            grid: grid, ledger: world.ledger, config: base.config, base: base.weights,
            options: o, adapters: options.adapters, packed: packed)
        runData = try read.get()
        model = trainer.model
    }

    public func run() throws -> RunSummary {
        do { return try train() } catch CommError.timeout(var t) {
            // The ranks that waited stop here; what they wrote before is intact.
            let latest = Checkpoint.completeCheckpoints(options.out).last
            t.hint =
                "stopping; "
                + (latest.map { "the newest complete checkpoint, \($0), is intact: continue with --resume latest" }
                    ?? "no checkpoint was written (use --save-every N to keep one)")
            throw CommError.timeout(t)
        }
    }

    /// Data, resume, the evaluation before, the steps, the evaluation after, the files, the report.
    func train() throws -> RunSummary {
        let data = runData
        let files = RunFiles(run: self)
        try files.prepare()
        let batcher = Batcher(data: data.train, seed: options.train.seed, globalBatch: options.train.globalBatch)
        let checkpoints = RunCheckpoints(self, data: data)
        let resumed = try options.resume.map { try checkpoints.resume($0, batcher: batcher) }
        sayHeader(data)
        let evaluation = RunEvaluation(self, data: data)
        let before = try evaluation.before()
        let t0 = now()
        let steps = StepLoop(run: self, batcher: batcher, checkpoints: checkpoints)
        let loop = try steps.run(log: resumed?.log ?? [], t0: t0)
        stoppedBy = loop.stoppedBy
        let after = try evaluation.after(loop)
        let adapterBytes = try files.save(after: after)
        var summary = RunSummary(setting: self, data: data, resumedFrom: resumed?.step)
        summary.add(loop)
        summary.add(before: before, after: after, of: evaluation)
        summary.adapterFileBytes = adapterBytes
        summary.replicaFingerprints = try replicaFingerprints()
        summary.add(try report(loop))
        summary.seconds = now() - t0
        try files.write(summary)
        return summary
    }

    /// The run's first lines: method, model, grid, sizes and steps; the tokenizer; the precision;
    /// the activations (what the forward keeps, their bytes).
    func sayHeader(_ data: RunData) {
        let o = options.train
        let c = model.config
        let shape = "\(c.nLayer) layers, d \(c.nEmbd), \(c.nHead) heads"
        let layout = "world \(world.size) = dp \(grid.dpDegree) × tp \(grid.tpDegree)"
        let sizes = "\(trainer.trainable.parameterCount) trainable of \(c.parameterCount) parameters"
        let steps = "\(o.steps) steps × \(o.globalBatch) sequences × \(o.seq) tokens"
        say("lora-dist train: \(o.method.modeName) on \(baseIdentity.source) (\(shape)), \(layout); \(sizes); \(steps)")
        say("tokenizer: \(data.tokenizer.description)")
        let base = "base \(model.base.bytes >> 10) KiB per rank; GEMMs on \(Gemm.backend.rawValue)"
        say("precision: \(o.precision.rawValue) (\(base))")
        let kept = o.recompute == .blocks ? "each block's input; backward recomputes the rest" : "every block's"
        let bytes = "\(trainer.activations.bytes >> 10) KiB per rank"
        say("activations: \(bytes), --recompute \(o.recompute.rawValue) (\(kept))")
    }

    /// LoRA's A/B fingerprint on every rank (all equal iff the replicas are bit-identical); none
    /// for the other methods.
    func replicaFingerprints() throws -> [String] {
        guard let lora = model.lora else { return [] }
        return try world.ledger.with(.control) {
            try Collective.gatherStrings(String(lora.fingerprint(), radix: 16), over: world, at: .replicas)
        }
    }

    /// The ledger's report of the steps (every rank builds it: it gathers the peak memory), and
    /// rank 0's table of the collectives per step.
    func report(_ loop: LoopOutcome) throws -> TrainingReport {
        let evalEntries = world.ledger.entries.filter { $0.phase == .eval }
        let report = try TrainingReport(
            model: model, steps: loop.stepsRun, stepEntries: loop.stepEntries,
            evalEntries: evalEntries, world: world)
        if world.rank == 0 {
            let (params, biases) = (model.config.parameterCount, BiasParameters.globalCount(of: model.config))
            say("\ncollectives per training step (rank 0, from the ledger):")
            say(report.table, terminator: "")
            let method = options.train.method.modeName
            say(
                "gradient bytes all-reduced per step: \(report.gradSyncBytesPerStep) (\(method)); per data-parallel "
                    + "replica, full fine-tuning of this model would all-reduce \(4 * params), BitFit \(4 * biases)")
        }
        return report
    }
}
