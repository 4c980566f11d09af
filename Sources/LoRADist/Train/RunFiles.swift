import Foundation

/// What a run writes into its output directory besides checkpoints and metrics.jsonl: the
/// predictions and references, what the method trained, and summary.json. Every write is agreed
/// on by all ranks: one that fails (a full disk) stops every rank with an error naming the file.
struct RunFiles {
    let run: TrainRun
    var out: String { run.options.out }
    var adapterPath: String { out + "/adapter.safetensors" }
    var modelDir: String { out + "/model" }
    /// Whether the run writes the whole trained model to out/model/ (full fine-tuning always;
    /// BitFit with --save-model).
    var savesModel: Bool {
        let method = run.options.train.method
        return method == .full || (method == .bitfit && run.options.saveBase)
    }

    /// Refuses, before anything loads or trains, an option combination the end of the run could
    /// not honour: --save-model writes a base the method changes.
    static func checkSaving(_ o: RunOptions) throws {
        guard o.saveBase else { return }
        let saves = "--save-model writes the base a method trains (full, bitfit), and"
        switch o.train.method {
        case .full, .bitfit: return
        case .lora:
            throw TrainError.invalidOption(
                "\(saves) LoRA leaves it frozen: the run saves OUT/adapter.safetensors, "
                    + "and lora-dist merge --adapter OUT/adapter.safetensors --out DIR "
                    + "writes the merged model")
        case let m:
            throw TrainError.invalidOption(
                "\(saves) \(m.rawValue) leaves it frozen: the run saves its adapters in "
                    + "OUT/adapter.safetensors, which generate and evaluate --adapter run "
                    + "(bottleneck adapters cannot be merged into the base)")
        }
    }

    /// Makes the output directory, and checks before step 1 that what the end of the run writes
    /// has room to go (rank 0 writes it).
    func prepare() throws {
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        guard FileManager.default.isWritableFile(atPath: out) else {
            throw IOError.cannotWrite(out, "the output directory is not writable")
        }
        let world = run.world
        let method = run.options.train.method
        try Collective.agree(over: world, at: .write) {
            guard world.rank == 0 else { return }
            let files = FileManager.default
            var isDir: ObjCBool = false
            if method != .full, files.fileExists(atPath: adapterPath, isDirectory: &isDir), isDir.boolValue {
                throw IOError.cannotWrite(
                    adapterPath,
                    "a directory is where the trained \(method.rawValue) file goes; "
                        + "remove it or choose another --out")
            }
            if savesModel, files.fileExists(atPath: modelDir, isDirectory: &isDir), !isDir.boolValue {
                throw IOError.cannotWrite(
                    modelDir,
                    "a file is where the trained model's directory goes; "
                        + "remove it or choose another --out")
            }
        }
    }

    /// The run's files after training: predictions and references (as the official E2E scripts
    /// read them) and what the method trained (`TrainedFile`): LoRA's, the bottleneck adapters'
    /// or BitFit's out/adapter.safetensors, and full fine-tuning's out/model/ (BitFit's too with
    /// `--save-model`). Returns the size of adapter.safetensors.
    func save(after: Evaluation) throws -> Int? {
        if let g = after.generation {
            let (predictions, references) = (out + "/predictions.txt", out + "/references.txt")
            try written {
                try E2EMetrics.writeFiles(
                    hypotheses: g.hypotheses, references: g.references, predictions: predictions,
                    referencesPath: references)
            }
        }
        let adapterBytes = try saveTrained()
        if savesModel { try saveModel() }
        return adapterBytes
    }

    /// What the method trained, whole: rank 0 writes it; sharded tensors are first gathered over
    /// each TP group (every rank takes part in the gathers, outside the agreed writes).
    func saveTrained() throws -> Int? {
        let (model, world, id, method) = (run.model, run.world, run.baseIdentity, run.options.train.method)
        var bytes: Int?
        func wrote(_ what: String) {
            bytes = Self.size(adapterPath)
            run.say("saved \(adapterPath) (\(bytes!) bytes\(what))")
        }
        switch method {
        case .lora:
            try written {
                try AdapterFile.save(model.lora!, base: id, to: adapterPath)
                wrote("")
            }
        case .adapterH, .adapterL:
            let ad = model.trainable!.adapters!
            let tensors = try world.ledger.with(.checkpoint) { try TrainedFile.wholeAdapters(ad, tp: run.grid.tp) }
            try written {
                try TrainedFile.saveBottleneck(tensors, config: ad.config, base: id, to: adapterPath)
                wrote(
                    ": \(method.rawValue) adapters, bottleneck \(ad.config.bottleneck), \(ad.globalCount) "
                        + "parameters; generate/evaluate --adapter run them")
            }
        case .bitfit:
            let tensors = try world.ledger.with(.checkpoint) {
                try model.base.gatherFullTensors(
                    over: run.grid.tp, keep: world.rank == 0,
                    include: BiasParameters.trains)
            }
            try written {
                try TrainedFile.saveBitFit(tensors, base: id, to: adapterPath)
                wrote(
                    ": \(tensors.count) BitFit biases; generate/evaluate --adapter run them, merge --adapter writes "
                        + "the base with them")
            }
        case .full:
            break
        }
        return bytes
    }

    /// The whole trained model as an HF directory, gathered from the shards at any TP degree.
    func saveModel() throws {
        let (model, world) = (run.model, run.world)
        let tensors = try world.ledger.with(.checkpoint) {
            try model.base.gatherFullTensors(over: run.grid.tp, keep: world.rank == 0)
        }
        try written {
            try FileManager.default.createDirectory(atPath: modelDir, withIntermediateDirectories: true)
            let hfBase = ModelFiles.hfDirectory(of: run.options.base)
            let file = modelDir + "/model.safetensors"
            try ModelFiles.save(tensors: tensors, config: model.config, to: file, hfConfig: true, hfBase: hfBase)
            let files = "config.json + model.safetensors, \(Self.size(file)) bytes"
            run.say("saved \(modelDir)/ (\(files); use it as --base \(modelDir))")
        }
    }

    /// out/summary.json.
    func write(_ summary: RunSummary) throws {
        try written { try writeFileAtomically(try encodeJSON(summary, snakeCase: true), to: out + "/summary.json") }
    }

    /// Rank 0 runs `body`, a write every rank agrees on, with `resumeHint`'s advice if it fails.
    func written(_ body: () throws -> Void) throws {
        let world = run.world
        try Self.resumeHint(out: out) {
            try Collective.agree(over: world, at: .write) { if world.rank == 0 { try body() } }
        }
    }

    static func size(_ p: String) -> Int {
        (try? FileManager.default.attributesOfItem(atPath: p)[.size] as? NSNumber)?.intValue ?? 0
    }

    /// Adds to a failed write what is left and how to go on: the newest complete checkpoint (if
    /// any) under `out` is intact and `--resume latest` continues from it once there is space.
    static func resumeHint(out: String, _ body: () throws -> Void) throws {
        do { try body() } catch let e as AgreedFailure {
            let latest = Checkpoint.completeCheckpoints(out).last
            throw AgreedFailure(
                origin: e.origin, message: e.message,
                hint: latest.map {
                    """
                    the newest complete checkpoint, \($0), is intact: free space (or choose another --out) and \
                    continue\u{20}
                    """
                        + "with --resume latest"
                } ?? "free space (or choose another --out) and run again")
        }
    }
}
