import Foundation

/// Where the base model comes from.
public enum BaseSpec: Sendable, Equatable {
    /// A lora-dist or HF safetensors checkpoint: a file, a GPT-2 directory (model.safetensors +
    /// config.json), or a Llama-family directory (config.json + model.safetensors or its shards).
    case file(String)
    /// GPT-2 initialisation of a named or explicit shape, from a seed (benchmarks, pretraining).
    case random(GPTConfig, seed: UInt64)
}

/// Everything `lora-dist train` (and `pretrain`) needs.
public struct RunOptions: Sendable {
    public var train = TrainOptions()
    public var adapters: AdapterConfig?
    /// Tensor-parallel degree; nil = the whole world.
    public var tp: Int?
    public var base: BaseSpec
    /// Directory with train.jsonl and valid.jsonl (test.jsonl optional); nil = the built-in task.
    public var dataDir: String?
    /// Plain-text file for language-model training (pretraining); nil = completion data.
    public var textFile: String?
    /// A tokenizer.json or a directory with tokenizer files; nil: the base's own (`TokenizerChoice`).
    public var tokenizer: String?
    public var out: String
    public var evalExamples = 64
    /// How the held-out generations are decoded.
    public var decoding = Decoding.greedy
    /// Most new tokens per held-out generation; nil: the longest reference of the evaluated
    /// examples plus a margin (`Evaluate.maxNewTokens`).
    public var evalMaxTokens: Int?
    /// Whether to evaluate before training as well as after.
    public var evalBefore = true
    /// Held-out examples for the validation loss: the first N (nil: all, 0: no validation loss).
    public var validLimit: Int? = 64
    public var logEvery = 10
    /// BitFit: also write the base with the trained biases to out/model/ (full fine-tuning always writes it).
    public var saveBase = false
    public var quiet = false
    /// Write a checkpoint every N steps (0: never) and keep the newest `keep`.
    public var saveEvery = 0
    public var keep = 3
    /// "latest" or a checkpoint directory.
    public var resume: String?
    /// Fault injection for tests: (step, world rank).
    public var injectNaN: (step: Int, rank: Int)?
    public var injectFail: (step: Int, rank: Int)?
    public var injectExit: (step: Int, rank: Int)?
    /// A rank that stops responding at a step boundary: for `seconds`, or for good (nil).
    public var injectHang: (step: Int, rank: Int, seconds: Double?)?
    public init(base: BaseSpec, out: String) { self.base = base; self.out = out }
}

/// The summary a run writes to summary.json (rank 0), all figures measured in this run.
public struct RunSummary: Codable, Sendable {
    public var method: String
    public var world: Int, tp: Int, dp: Int
    public var steps: Int
    public var tokensPerStep: Int
    /// nil when no step ran (a run stopped by a signal before its first step).
    public var trainLossFirst: Double?, trainLossFinal: Double?
    public var evalLossBefore: Double?, evalLossAfter: Double?
    public var exactMatchBefore: Double?, exactMatchAfter: Double?
    /// Corpus BLEU on sacreBLEU's 0–100 scale (the `bleu` of `e2eBefore` and `e2eAfter`).
    public var bleuBefore: Double?, bleuAfter: Double?
    /// E2E metrics (BLEU, NIST, ROUGE-L, CIDEr against every reference) of the held-out generations.
    public var e2eBefore: E2EScores?, e2eAfter: E2EScores?
    public var decoding: String?
    /// The held-out examples the validation loss ran over, and how many there were.
    public var evalLossExamples: Int?, heldOutExamples: Int?
    /// The bound on new tokens per held-out generation, and the tokens generated over all of
    /// them after training (before, when training stopped early).
    public var evalMaxNewTokens: Int?, evalTokensGenerated: Int?
    public var trainableParams: Int, totalParams: Int
    public var tokensPerSecond: Double
    public var seconds: Double
    public var adapterFileBytes: Int?
    public var fullModelBytes: Int
    public var gradSyncBytesPerStep: Int
    public var fullFtGradBytesPerStep: Int
    public var collectivesPerStep: [String: [String: Double]]
    public var droppedTooLong: Int
    public var base: String
    public var tokenizer: String?
    public var resumedFrom: Int?
    public var interrupted: Bool
    /// A hash of the trainable A/B on every rank (LoRA): all equal iff the replicas are bit-identical.
    public var replicaFingerprints: [String]
    public var seq: Int
    public var peakRSSBytes: Int
    /// How the frozen base computed (fp32, or bf16 storage and GEMM inputs).
    public var precision: String
    /// Bytes this rank holds for the base (its shard; 2 per GEMM weight under bf16).
    public var baseBytesPerRank: Int
    /// The CPU rank 0 ran on and what the GEMM libraries used of it (`lora-dist doctor` shows every rank's).
    public var cpu: CPUInfo
    /// The GEMM backend, and under bf16 its kernel (native or widened).
    public var gemm: String
}

/// Loads the base, the data and the method; trains; evaluates before and after; saves; reports.
public final class TrainRun {
    public let options: RunOptions
    public let world: RecordingCommunicator
    public let grid: ProcessGrid
    public let model: GPTModel
    public let trainer: Trainer
    public let baseIdentity: BaseIdentity
    let sayLine: (String, String) -> Void
    func say(_ s: String, terminator: String = "\n") { sayLine(s, terminator) }

    public static func loadBaseSource(_ spec: BaseSpec) throws -> (GPTConfig, WeightSource, BaseIdentity) {
        switch spec {
        case let .random(c, seed):
            return (c, try RandomInitSource(config: c, seed: seed), BaseIdentity(config: c, fingerprint: "random-\(seed)", source: "random init"))
        case let .file(p):
            // Shapes are checked against config.json and the tensors before anything is allocated;
            // each rank checks the weights it loads for NaN and Inf.
            if let dir = try LlamaFiles.directory(p) {
                let (c, src) = try LlamaFiles.open(dir)
                let id = BaseIdentity(config: c, fingerprint: try LlamaFiles.fingerprint(configPath: dir + "/config.json", source: src),
                                      source: URL(fileURLWithPath: p).lastPathComponent)
                return (c, FiniteWeightSource(src), id)
            }
            let (path, dir) = try ModelFiles.locate(p)
            let f = try SafeTensorsFile(path: path)
            let (c, configSource) = try ModelFiles.configAndSource(of: f, dir: dir)
            if c.family == .llama {
                // A Llama-family model in one file (as --save-model and merge write it), its shape in
                // the file's metadata or the config.json beside it.
                var src = try SafeTensorsDirectorySource(file: path)
                src.rename = LlamaFiles.renamer(for: src.names)
                try LlamaFiles.checkShapes(c, source: src, configSource: configSource)
                return (c, FiniteWeightSource(src), BaseIdentity(config: c, fingerprint: try fileFingerprint(path), source: URL(fileURLWithPath: path).lastPathComponent))
            }
            let rename = ModelFiles.renamer(for: f)
            try ModelFiles.checkShapes(c, file: f, rename: rename, configSource: configSource)
            let src = FiniteWeightSource(SafeTensorsWeightSource(file: f, rename: rename))
            return (c, src, BaseIdentity(config: c, fingerprint: try fileFingerprint(path), source: URL(fileURLWithPath: path).lastPathComponent))
        }
    }

    /// The family of the model `spec` names, read from its shape alone (no weights are read).
    public static func family(of spec: BaseSpec) throws -> ModelFamily { try shape(of: spec).family }

    /// The shape of the model `spec` names, read from its configuration alone (no weights are read).
    public static func shape(of spec: BaseSpec) throws -> GPTConfig {
        switch spec {
        case let .random(c, _): return c
        case let .file(p):
            if let dir = try LlamaFiles.directory(p) {
                let config = dir + "/config.json"
                return try ModelFiles.parse(try TextFile.readJSON(config, emptyHint: "expected the model's Hugging Face configuration"), source: config)
            }
            let (path, dir) = try ModelFiles.locate(p)
            return try ModelFiles.config(of: try SafeTensorsFile(path: path), dir: dir)
        }
    }

    public init(world: RecordingCommunicator, options: RunOptions) throws {
        self.options = options
        self.world = world
        let quiet = options.quiet
        sayLine = { s, t in if world.rank == 0 && !quiet { print(s, terminator: t); fflush(stdout) } }
        let tp = options.tp ?? world.size
        try TrainRun.checkSaving(options)
        grid = try ProcessGrid(world: world, tp: tp)
        // Every rank opens the checkpoint: a bad one stops all of them, each with its message.
        var loaded: (GPTConfig, WeightSource, BaseIdentity)?
        try Collective.agree(over: world, at: .load) { loaded = try TrainRun.loadBaseSource(options.base) }
        let (cfg, source, id) = loaded!
        baseIdentity = id
        // Each rank loads (and checks) its own shard: all learn whether every rank could.
        let t = try Trainer(grid: grid, ledger: world.ledger, config: cfg, base: source, options: options.train, adapters: options.adapters)
        trainer = t
        model = t.model
    }

    /// Everything that must match for a checkpoint to continue this run.
    func runFingerprint(data: String) -> String {
        let o = options.train
        var parts = [o.method.modeName, "\(model.config)", baseIdentity.fingerprint, data, "tp\(grid.tpDegree)"]
        parts.append("\(o.lora)")
        parts.append("\(String(describing: options.adapters))")
        if o.precision != .fp32 { parts.append(o.precision.rawValue) }
        parts.append("\(o.steps) \(o.globalBatch) \(o.microBatch) \(o.seq) \(o.lr) \(o.warmup) \(o.decay) \(o.minLRRatio) \(o.weightDecay) \(o.beta1) \(o.beta2) \(o.clip) \(o.labelSmoothing) \(o.seed)")
        var h = FNV1a()
        for b in parts.joined(separator: "|").utf8 { h.mix(UInt64(b)) }
        return h.hex
    }

    /// The options `runFingerprint` covers, by their names on the command line, for a refused
    /// resume to name the ones that differ.
    func runSettings(data: String, tokenizer: String) -> [RunSetting] {
        let o = options.train
        var s: [RunSetting] = [RunSetting("--method", o.method.rawValue),
                               RunSetting("--base", "\(baseIdentity.source) (fingerprint \(baseIdentity.fingerprint))"),
                               RunSetting("model", "\(model.config)"),
                               RunSetting("--data", data), RunSetting("--tokenizer", tokenizer), RunSetting("--tp", "\(grid.tpDegree)")]
        if o.method == .lora {
            let l = o.lora
            s += [RunSetting("--lora-rank", "\(l.rank)"), RunSetting("--lora-alpha", "\(l.alpha)"),
                  RunSetting("--lora-targets", l.targets.map(\.rawValue).joined(separator: ",")), RunSetting("--lora-dropout", "\(l.dropout)"),
                  RunSetting("--lora-init", l.initA.rawValue), RunSetting("--rslora", "\(l.rsLoRA)")]
        }
        if o.method.adapterKind != nil, let a = options.adapters {
            s += [RunSetting("--bottleneck", "\(a.bottleneck)"), RunSetting("--placement", a.placement.rawValue)]
        }
        s += [RunSetting("--precision", o.precision.rawValue), RunSetting("--steps", "\(o.steps)"), RunSetting("--batch", "\(o.globalBatch)"),
              RunSetting("--micro-batch", "\(o.microBatch)"), RunSetting("--seq", "\(o.seq)"), RunSetting("--lr", "\(o.lr)"),
              RunSetting("--warmup", "\(o.warmup)"), RunSetting("--decay", o.decay.rawValue), RunSetting("--weight-decay", "\(o.weightDecay)"),
              RunSetting("--clip", "\(o.clip)"), RunSetting("--label-smoothing", "\(o.labelSmoothing)"), RunSetting("--seed", "\(o.seed)")]
        return s
    }

    /// The signal that stopped the run early (every rank agrees on it), nil if it ran to the end.
    public private(set) var stoppedBy: Int32?

    public func run() throws -> RunSummary {
        do { return try train() } catch CommError.timeout(var t) {
            // The ranks that waited stop here; what they wrote before is intact.
            let latest = Checkpoint.completeCheckpoints(options.out).last
            t.hint = "stopping; " + (latest.map { "the newest complete checkpoint, \($0), is intact: continue with --resume latest" }
                                     ?? "no checkpoint was written (use --save-every N to keep one)")
            throw CommError.timeout(t)
        }
    }

    /// A rank that stops responding for `seconds` (nil: for good, never entering another
    /// collective: under MPI it sleeps until the job is killed; in-process it returns once the
    /// world has failed).
    func hang(seconds: Double?) throws {
        let t0 = now()
        while seconds.map({ now() - t0 < $0 }) ?? true {
            if let ip = world.inner as? InProcessCommunicator, ip.isAborted { throw CommError.aborted("rank \(world.rank) hung (injected) until the job ended") }
            usleep(10_000)
        }
    }

    /// The data of a run: examples to train on, held-out ones for the loss, and test examples to generate from.
    struct RunData {
        var train: TokenDataset
        var valid: TokenDataset?
        var test: [Example]
    }

    /// Reads `--text`, `--data` or the built-in task with `tokenizer` and checks it fits the base.
    func prepareData(tokenizer: Tokenizer) throws -> RunData {
        let o = options.train
        let data: RunData
        if let text = options.textFile {
            guard FileManager.default.fileExists(atPath: text) else { throw DataError.missing(text) }
            let s = try TextFile.read(text, emptyHint: "--text needs plain text to train on (documents separated by blank lines)")
            let cut = s.utf8.count * 95 / 100
            let head = String(decoding: Array(s.utf8)[..<cut], as: UTF8.self), tail = String(decoding: Array(s.utf8)[cut...], as: UTF8.self)
            data = RunData(train: try TokenDataset(text: head, tokenizer: tokenizer, seq: o.seq, source: text),
                           valid: try? TokenDataset(text: tail, tokenizer: tokenizer, seq: o.seq, source: text + " (last 5%)"), test: [])
        } else if let dir = options.dataDir {
            // train.jsonl first: its errors are reported before valid.jsonl's.
            let train = try TokenDataset(examples: try JSONLines.read(dir + "/train.jsonl"), tokenizer: tokenizer, seq: o.seq,
                                         source: dir + "/train.jsonl")
            let valid = try JSONLines.read(dir + "/valid.jsonl")
            data = RunData(train: train,
                           valid: try TokenDataset(examples: valid, tokenizer: tokenizer, seq: o.seq, source: dir + "/valid.jsonl"),
                           test: FileManager.default.fileExists(atPath: dir + "/test.jsonl") ? try JSONLines.read(dir + "/test.jsonl") : valid)
        } else {
            let s = BuiltinTask.splits(train: 4000, valid: 200, test: 200, seed: 42)
            data = RunData(train: try TokenDataset(examples: s.train, tokenizer: tokenizer, seq: o.seq, source: "built-in task (train)"),
                           valid: try TokenDataset(examples: s.valid, tokenizer: tokenizer, seq: o.seq, source: "built-in task (valid)"),
                           test: s.test)
        }
        for d in [data.train] + (data.valid.map { [$0] } ?? []) where d.largestToken >= model.config.vocabSize {
            throw TrainError.invalidOption("\(d.source) holds token id \(d.largestToken), beyond the base's vocabulary of \(model.config.vocabSize) (\(tokenizer.description))")
        }
        if data.train.droppedTooLong > 0 {
            say("data: dropped \(data.train.droppedTooLong) training examples longer than --seq \(o.seq) tokens")
        }
        return data
    }

    /// Restores the checkpoint `--resume` names into the trainer and `batcher`: the step it
    /// continues from, and the lines of metrics.jsonl up to it (later ones were of the interrupted run).
    func resume(_ r: String, batcher: Batcher, fingerprint: String, settings: [RunSetting], replicated: Bool) throws -> (step: Int, log: [String]) {
        let d = try Checkpoint.resolve(r, out: options.out)
        let st = try world.ledger.with(.checkpoint) {
            try Checkpoint.load(d, params: trainer.parameters, count: trainer.trainableCount, optimizer: trainer.optimizer,
                                grid: grid, replicated: replicated, fingerprint: fingerprint, settings: settings)
        }
        trainer.publishParameters()   // the restored parameters into what the model computes with
        batcher.restore(st.loader)
        trainer.setStep(st.step)
        var log: [String] = []
        if let text = try? String(contentsOfFile: options.out + "/metrics.jsonl", encoding: .utf8) {
            for line in text.split(separator: "\n") {
                if let d = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                   let k = (d["step"] as? NSNumber)?.intValue, k <= st.step { log.append(String(line)) }
            }
        }
        say("resumed from \(d) at step \(st.step)")
        return (st.step, log)
    }

    /// Held-out loss and generations, as measured before and after training.
    struct Evaluation {
        var loss: Double?
        var generation: Evaluate.Generation?
    }

    /// What the evaluation covers: the held-out examples of the validation loss and the test
    /// examples generated for, with the bound on new tokens.
    struct EvalPlan {
        var validExamples = 0, validTotal = 0
        var generations = 0, maxNew = 0
    }

    /// The evaluation's size from the data and the options, said once before it first runs.
    func evalPlan(_ data: RunData, tokenizer: Tokenizer) -> EvalPlan {
        var p = EvalPlan()
        if let v = data.valid {
            p.validTotal = v.count
            p.validExamples = min(options.validLimit ?? v.count, v.count)
            say("validation loss on \(p.validExamples) of \(v.count) held-out examples (--valid-limit)")
        }
        if !data.test.isEmpty && options.evalExamples > 0 {
            let ex = Array(data.test.prefix(options.evalExamples))
            p.generations = ex.count
            if let m = options.evalMaxTokens {
                p.maxNew = m
                say("generations for \(ex.count) of \(data.test.count) test examples (--eval-examples), each until end-of-text or \(m) new tokens (--eval-max-tokens)")
            } else {
                p.maxNew = Evaluate.maxNewTokens(for: ex, tokenizer: tokenizer)
                let longest = ex.flatMap(\.allReferences).map { tokenizer.encode($0).count }.max() ?? 0
                say("generations for \(ex.count) of \(data.test.count) test examples (--eval-examples), each until end-of-text or \(p.maxNew) new tokens (the longest reference, \(longest) tokens, + \(p.maxNew - longest); --eval-max-tokens)")
            }
        }
        return p
    }

    /// The one evaluation of a run, before and after training; says its line as `label`, and
    /// progress lines with an ETA while a pass takes long.
    func evaluate(_ data: RunData, plan: EvalPlan, batch: MicroBatch, tokenizer: Tokenizer, label: String) throws -> Evaluation {
        var e = Evaluation()
        let line: (String) -> Void = { [self] in say($0) }
        try world.ledger.with(.eval) {
            if let v = data.valid, plan.validExamples > 0 {
                e.loss = try Evaluate.loss(model: model, acts: trainer.activations, data: v, grid: grid, batch: batch,
                                           limit: plan.validExamples,
                                           progress: ProgressMeter("validation examples", total: plan.validExamples, say: line))
            }
            if plan.generations > 0 {
                e.generation = try Evaluate.generation(model: model, examples: data.test, limit: plan.generations, grid: grid,
                                                       tokenizer: tokenizer, decoding: options.decoding, maxNew: plan.maxNew,
                                                       progress: ProgressMeter("generations", total: plan.generations, say: line))
            }
        }
        var parts: [String] = []
        if let l = e.loss { parts.append("eval loss \(fixed(l, 4))") }
        if let g = e.generation { parts.append("exact match \(fixed(100 * g.exactMatch, 1))%, BLEU \(fixed(g.bleu, 1))") }
        if !parts.isEmpty { say("\(label) " + parts.joined(separator: ", ")) }
        return e
    }

    /// What the step loop leaves for the report.
    struct LoopOutcome {
        var firstLoss = Double.nan, lastLoss = Double.nan
        var trainSeconds = 0.0
        var interrupted = false
        var stepsRun = 1
        /// The ledger's entries of the steps (checkpoints and control left out).
        var stepEntries: [LedgerEntry] = []
    }

    /// The steps from the trainer's current one to the last: one metrics.jsonl line per step (rank
    /// 0), progress lines, checkpoints every `--save-every`, and a stop with a checkpoint at the
    /// first boundary after a signal. Every write is agreed on by all ranks: one that fails (a full
    /// disk) stops every rank with an error naming the file, and the newest complete checkpoint
    /// stays as it was.
    func runSteps(batcher: Batcher, log logLines: [String], fingerprint: String, settings: [RunSetting], replicated: Bool, t0: Double) throws -> LoopOutcome {
        let o = options.train, ledger = world.ledger
        let accum = o.accumulation(dp: grid.dpDegree)
        let micro = (0..<accum).map { _ in MicroBatch(batch: o.microBatch, seq: o.seq) }
        let metrics = options.out + "/metrics.jsonl"
        var log: AppendFile?
        try Collective.agree(over: world, at: .write) {
            guard world.rank == 0 else { return }
            try writeFileAtomically(Data(logLines.map { $0 + "\n" }.joined().utf8), to: metrics)
            log = try AppendFile(path: metrics)
        }
        defer { log?.close() }
        var metricsError: Error?
        /// Every rank learns whether rank 0 could write the log; all stop if it could not.
        func agreeOnMetrics(known: Bool) throws {
            guard known else { return }
            try ledger.with(.control) { try resumeHint { try Collective.agree(over: world, at: .write) { if let e = metricsError { throw e } } } }
        }
        var out = LoopOutcome()
        let stepsLedgerStart = ledger.entries.count
        let startStep = trainer.step
        trainer.injectNaN = options.injectNaN
        func checkpoint() throws {
            let st = CheckpointState(step: trainer.step, loader: batcher.position, fingerprint: fingerprint, world: world.size, tp: grid.tpDegree,
                                     settings: settings)
            try resumeHint {
                try ledger.with(.checkpoint) {
                    try Checkpoint.save(out: options.out, state: st, params: trainer.parameters, count: trainer.trainableCount,
                                        optimizer: trainer.optimizer, grid: grid, replicated: replicated, keep: options.keep)
                }
            }
        }
        while trainer.step < o.steps {
            try injectFaults(at: trainer.step, before: true)
            // Every rank agrees on stopping at this boundary (a signal may reach only some), and
            // learns whether rank 0 could write the last step's line of the log.
            var stop = [Float(StopSignal.signalNumber), metricsError == nil ? 0 : 1]
            if world.size > 1 { try ledger.with(.control) { try Collective.max(&stop, over: world, at: .stop) } }
            try agreeOnMetrics(known: stop[1] > 0)
            if stop[0] > 0 {
                try checkpoint()
                stoppedBy = Int32(stop[0])
                say("interrupted by \(StopSignal.name(Int32(stop[0]))): stopped after step \(trainer.step) and wrote \(Checkpoint.dir(options.out, step: trainer.step)); continue with --resume latest")
                out.interrupted = true
                break
            }
            try injectFaults(at: trainer.step, before: false)
            let tokens = batcher.next(into: micro, options: o, replica: grid.replica, dp: grid.dpDegree)
            let st = try trainer.trainStep(micro, globalTokens: tokens)
            out.trainSeconds += st.seconds
            if out.firstLoss.isNaN { out.firstLoss = st.loss }
            out.lastLoss = st.loss
            if metricsError == nil {
                do { try log?.append("{\"step\":\(st.step),\"loss\":\(st.loss),\"lr\":\(st.lr),\"grad_norm\":\(st.gradNorm),\"seconds\":\(st.seconds)}\n") } catch {
                    metricsError = error
                }
            }
            if world.rank == 0 && (st.step % options.logEvery == 0 || st.step == o.steps) {
                let elapsed = now() - t0
                let eta = elapsed / Double(st.step - startStep) * Double(o.steps - st.step)
                say("step \(st.step)/\(o.steps)  loss \(fixed(st.loss, 4))  lr \(String(format: "%.2e", st.lr))  \(Int(Double(st.tokens) / st.seconds)) tok/s  ETA \(Int(eta.rounded()))s")
            }
            if options.saveEvery > 0 && (trainer.step % options.saveEvery == 0 || trainer.step == o.steps) { try checkpoint() }
        }
        try agreeOnMetrics(known: true)
        out.stepsRun = max(1, trainer.step - startStep)
        out.stepEntries = Array(ledger.entries[stepsLedgerStart...]).filter { $0.phase != .checkpoint && $0.phase != .control }
        return out
    }

    /// The injected faults of the tests, in one place: a hang before the stop agreement, and a
    /// thrown error or an exit after it (`before` false).
    func injectFaults(at step: Int, before: Bool) throws {
        if before {
            if let h = options.injectHang, h.step == step, h.rank == world.rank { try hang(seconds: h.seconds) }
            return
        }
        if let f = options.injectFail, f.step == step, f.rank == world.rank {
            throw TrainError.invalidOption("injected failure at step \(step)")
        }
        if let f = options.injectExit, f.step == step, f.rank == world.rank { exit(3) }
    }

    /// The run's files after training: predictions and references (as the official E2E scripts
    /// read them) and what the method trained (`TrainedFile`): LoRA's, the bottleneck adapters'
    /// or BitFit's out/adapter.safetensors, and full fine-tuning's out/model/ (BitFit's too with
    /// `--save-model`). Returns the size of adapter.safetensors.
    func save(after: Evaluation) throws -> Int? {
        if let g = after.generation {
            try resumeHint { try Collective.agree(over: world, at: .write) {
                guard world.rank == 0 else { return }
                try E2EMetrics.writeFiles(hypotheses: g.hypotheses, references: g.references,
                                          predictions: options.out + "/predictions.txt", referencesPath: options.out + "/references.txt")
            } }
        }
        // What the method trained, whole: rank 0 writes it; sharded tensors are first gathered
        // over each TP group (every rank takes part in the gathers, outside the agreed writes).
        var adapterBytes: Int?
        let method = options.train.method
        func size(_ p: String) -> Int { (try? FileManager.default.attributesOfItem(atPath: p)[.size] as? NSNumber)?.intValue ?? 0 }
        let adapterPath = options.out + "/adapter.safetensors"
        func write(_ body: () throws -> Void) throws {
            try resumeHint { try Collective.agree(over: world, at: .write) { if world.rank == 0 { try body() } } }
        }
        switch method {
        case .lora:
            try write {
                try AdapterFile.save(model.lora!, base: baseIdentity, to: adapterPath)
                adapterBytes = size(adapterPath)
                say("saved \(adapterPath) (\(adapterBytes!) bytes)")
            }
        case .adapterH, .adapterL:
            let ad = model.trainable!.adapters!
            let tensors = try world.ledger.with(.checkpoint) { try TrainedFile.wholeAdapters(ad, tp: grid.tp) }
            try write {
                try TrainedFile.saveBottleneck(tensors, config: ad.config, base: baseIdentity, to: adapterPath)
                adapterBytes = size(adapterPath)
                say("saved \(adapterPath) (\(adapterBytes!) bytes: \(method.rawValue) adapters, bottleneck \(ad.config.bottleneck), \(ad.globalCount) parameters; generate/evaluate --adapter run them)")
            }
        case .bitfit:
            let tensors = try world.ledger.with(.checkpoint) {
                try model.base.gatherFullTensors(over: grid.tp, keep: world.rank == 0, include: BiasParameters.trains)
            }
            try write {
                try TrainedFile.saveBitFit(tensors, base: baseIdentity, to: adapterPath)
                adapterBytes = size(adapterPath)
                say("saved \(adapterPath) (\(adapterBytes!) bytes: \(tensors.count) BitFit biases; generate/evaluate --adapter run them, merge --adapter writes the base with them)")
            }
        case .full:
            break
        }
        // The whole trained model (full fine-tuning always; BitFit with --save-model) as an HF
        // directory, gathered from the shards at any TP degree.
        if method == .full || (method == .bitfit && options.saveBase) {
            let tensors = try world.ledger.with(.checkpoint) { try model.base.gatherFullTensors(over: grid.tp, keep: world.rank == 0) }
            let dir = options.out + "/model"
            try write {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                let hfBase = ModelFiles.hfDirectory(of: options.base)
                try ModelFiles.save(tensors: tensors, config: model.config, to: dir + "/model.safetensors", hfConfig: true, hfBase: hfBase)
                say("saved \(dir)/ (config.json + model.safetensors, \(size(dir + "/model.safetensors")) bytes; use it as --base \(dir))")
            }
        }
        return adapterBytes
    }

    /// Refuses, before anything loads or trains, an option combination the end of the run could
    /// not honour: --save-model writes a base the method changes.
    static func checkSaving(_ o: RunOptions) throws {
        guard o.saveBase else { return }
        switch o.train.method {
        case .full, .bitfit: return
        case .lora:
            throw TrainError.invalidOption("--save-model writes the base a method trains (full, bitfit), and LoRA leaves it frozen: the run saves OUT/adapter.safetensors, and lora-dist merge --adapter OUT/adapter.safetensors --out DIR writes the merged model")
        case let m:
            throw TrainError.invalidOption("--save-model writes the base a method trains (full, bitfit), and \(m.rawValue) leaves it frozen: the run saves its adapters in OUT/adapter.safetensors, which generate and evaluate --adapter run (bottleneck adapters cannot be merged into the base)")
        }
    }

    /// Data, resume, the evaluation before, the steps, the evaluation after, the files, the report.
    func train() throws -> RunSummary {
        let o = options.train
        let ledger = world.ledger
        let tokenizer = try TokenizerChoice.forBase(options.base, override: options.tokenizer)
        // A small random model may still take bytes on user data whose bytes fit (checked below).
        let bytesOnUserData = tokenizer is ByteTokenizer && (options.textFile != nil || options.dataDir != nil)
        if !bytesOnUserData { try TokenizerChoice.check(tokenizer, fits: model.config.vocabSize) }
        let data = try prepareData(tokenizer: tokenizer)
        try FileManager.default.createDirectory(atPath: options.out, withIntermediateDirectories: true)
        guard FileManager.default.isWritableFile(atPath: options.out) else {
            throw IOError.cannotWrite(options.out, "the output directory is not writable")
        }
        // What the end of the run writes must have room to go, known before step 1 (rank 0 writes it).
        try Collective.agree(over: world, at: .write) {
            guard world.rank == 0 else { return }
            let method = o.method
            var isDir: ObjCBool = false
            let adapter = options.out + "/adapter.safetensors", dir = options.out + "/model"
            if method != .full, FileManager.default.fileExists(atPath: adapter, isDirectory: &isDir), isDir.boolValue {
                throw IOError.cannotWrite(adapter, "a directory is where the trained \(method.rawValue) file goes; remove it or choose another --out")
            }
            if method == .full || (method == .bitfit && options.saveBase),
               FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), !isDir.boolValue {
                throw IOError.cannotWrite(dir, "a file is where the trained model's directory goes; remove it or choose another --out")
            }
        }
        let batcher = Batcher(data: data.train, seed: o.seed, globalBatch: o.globalBatch)
        let fingerprint = runFingerprint(data: data.train.source + "|" + tokenizer.description)
        let settings = runSettings(data: data.train.source, tokenizer: tokenizer.description)
        let replicated = o.method.replicatedState(placement: options.adapters?.placement)
        let resumed = try options.resume.map { try resume($0, batcher: batcher, fingerprint: fingerprint, settings: settings, replicated: replicated) }
        let evalBatch = MicroBatch(batch: o.microBatch, seq: o.seq)
        let trainable = trainer.trainable.parameterCount
        let c = model.config
        say("lora-dist train: \(o.method.modeName) on \(baseIdentity.source) (\(c.nLayer) layers, d \(c.nEmbd), "
            + "\(c.nHead) heads), world \(world.size) = dp \(grid.dpDegree) × tp \(grid.tpDegree); "
            + "\(trainable) trainable of \(c.parameterCount) parameters; "
            + "\(o.steps) steps × \(o.globalBatch) sequences × \(o.seq) tokens")
        say("tokenizer: \(tokenizer.description)")
        say("precision: \(o.precision.rawValue) (base \(model.base.bytes >> 10) KiB per rank; GEMMs on \(Gemm.backend.rawValue))")

        let plan = evalPlan(data, tokenizer: tokenizer)
        var before = Evaluation()
        if options.evalBefore {
            before = try evaluate(data, plan: plan, batch: evalBatch, tokenizer: tokenizer, label: "before:")
        } else if plan.validExamples > 0 || plan.generations > 0 {
            say("before: not evaluated (--eval-before off)")
        }
        let t0 = now()
        let loop = try runSteps(batcher: batcher, log: resumed?.log ?? [], fingerprint: fingerprint, settings: settings, replicated: replicated, t0: t0)
        let after = loop.interrupted ? Evaluation() : try evaluate(data, plan: plan, batch: evalBatch, tokenizer: tokenizer, label: "after: ")
        if let g = after.generation { for smp in g.samples.prefix(2) { say("  \(smp[0])\n    → \(smp[1])") } }
        if let e = after.generation?.e2e { say("E2E metrics (\(options.decoding), \(e.segments) examples, \(e.references) references): " + Evaluate.describe(e)) }
        let adapterBytes = try save(after: after)
        let (genBefore, genAfter) = (before.generation, after.generation)
        let stepEntries = loop.stepEntries, stepsRun = loop.stepsRun, first = loop.firstLoss, last = loop.lastLoss

        var fingerprints: [String] = []
        if let lora = model.lora {
            fingerprints = try ledger.with(.control) { try Collective.gatherStrings(String(lora.fingerprint(), radix: 16), over: world, at: .replicas) }
        }
        let report = try TrainingReport(model: model, steps: stepsRun, stepEntries: stepEntries,
                                        evalEntries: ledger.entries.filter { $0.phase == .eval }, world: world)
        let summary = RunSummary(
            method: o.method.name,
            world: world.size, tp: grid.tpDegree, dp: grid.dpDegree, steps: o.steps, tokensPerStep: o.globalBatch * o.seq,
            trainLossFirst: first.isNaN ? nil : first, trainLossFinal: last.isNaN ? nil : last, evalLossBefore: before.loss, evalLossAfter: after.loss,
            exactMatchBefore: genBefore?.exactMatch, exactMatchAfter: genAfter?.exactMatch,
            bleuBefore: genBefore?.bleu, bleuAfter: genAfter?.bleu, e2eBefore: genBefore?.e2e, e2eAfter: genAfter?.e2e,
            decoding: genAfter != nil || genBefore != nil ? options.decoding.description : nil,
            evalLossExamples: before.loss != nil || after.loss != nil ? plan.validExamples : nil,
            heldOutExamples: data.valid.map { _ in plan.validTotal },
            evalMaxNewTokens: (genAfter ?? genBefore)?.maxNewTokens, evalTokensGenerated: (genAfter ?? genBefore)?.tokensGenerated,
            trainableParams: report.trainableParams, totalParams: report.totalParams,
            tokensPerSecond: Double(o.globalBatch * o.seq * stepsRun) / max(loop.trainSeconds, 1e-9), seconds: now() - t0,
            adapterFileBytes: adapterBytes, fullModelBytes: 4 * model.config.parameterCount,
            gradSyncBytesPerStep: report.gradSyncBytesPerStep, fullFtGradBytesPerStep: 4 * model.config.parameterCount,
            collectivesPerStep: report.collectivesPerStep, droppedTooLong: data.train.droppedTooLong, base: baseIdentity.source,
            tokenizer: tokenizer.description, resumedFrom: resumed?.step, interrupted: loop.interrupted, replicaFingerprints: fingerprints,
            seq: o.seq, peakRSSBytes: report.peakRSSBytes, precision: o.precision.rawValue, baseBytesPerRank: model.base.bytes,
            cpu: CPUInfo.current,
            gemm: Gemm.backendName + (o.precision == .bf16 ? (Gemm.backend == .onednn ? " bf16 \(Gemm.bf16Kernel.rawValue)" : " bf16 widened") : ""))
        if world.rank == 0 {
            say("\ncollectives per training step (rank 0, from the ledger):")
            say(report.table, terminator: "")
            say("gradient bytes all-reduced per step: \(report.gradSyncBytesPerStep) (\(o.method.modeName)); per "
                + "data-parallel replica, full fine-tuning of this model would all-reduce "
                + "\(4 * model.config.parameterCount), BitFit \(4 * BiasParameters.globalCount(of: model.config))")
        }
        try resumeHint { try Collective.agree(over: world, at: .write) {
            if world.rank == 0 { try writeFileAtomically(try encodeJSON(summary, snakeCase: true), to: options.out + "/summary.json") }
        } }
        return summary
    }

    /// Adds to a failed write what is left and how to go on: the newest complete checkpoint (if
    /// any) is intact and `--resume latest` continues from it once there is space.
    func resumeHint(_ body: () throws -> Void) throws {
        do { try body() } catch let e as AgreedFailure {
            let latest = Checkpoint.completeCheckpoints(options.out).last
            throw AgreedFailure(origin: e.origin, message: e.message, hint: latest.map {
                "the newest complete checkpoint, \($0), is intact: free space (or choose another --out) and continue with --resume latest"
            } ?? "free space (or choose another --out) and run again")
        }
    }
}
