import Foundation

/// What `bench train` measures: steps on synthetic tokens for a model shape, method and grid, or on
/// a dataset's real lengths (`data`).
public struct TrainBenchOptions {
    public var config: GPTConfig
    public var options: TrainOptions
    public var adapters: AdapterConfig?
    public var tp: Int
    public var warmup = 1
    public var steps = 3
    /// GEMM threads each rank was given, recorded in the result (nil: the environment's default).
    public var threadsPerRank: Int?
    /// The machine's sgemm FLOP/s per rank (from `doctor`), for MFU; 0 leaves MFU out.
    public var peakFlopsPerRank: Double = 0
    /// The examples to train on (`bench train --data`): each step takes the next global batch of
    /// them through `Batcher`, as `train` does, packed or one a row of `options.seq` as
    /// `options.packing` says; nil: every step the same rows of random tokens, all of them targets.
    public var data: TokenDataset?
    public init(config: GPTConfig, options: TrainOptions, tp: Int) {
        self.config = config
        self.options = options
        self.tp = tp
    }
}

public struct TrainBenchResult: Codable, Sendable {
    /// The CPU the figures were measured on (rank 0's; `doctor` shows every rank's).
    public var cpu: CPUInfo
    /// The bf16 GEMM kernel of a bf16 run (nil for fp32).
    public var bf16Kernel: String?
    public var model: String
    public var method: String
    public var world: Int, tp: Int, dp: Int
    public var tokensPerStep: Int
    public var secondsPerStep: Double
    public var tokensPerSecond: Double
    public var forward: Double, backward: Double, gradSync: Double, optimizer: Double
    /// Seconds per step inside GEMMs (rank 0) and the GFLOP/s they ran at; the rest of the step is
    /// elementwise kernels, attention's softmax, the loss, conversions and communication.
    public var gemm: Double, gemmGflops: Double
    public var flopsPerStep: Double
    public var mfu: Double?
    public var trainableParams: Int
    public var totalParams: Int
    public var gradSyncBytesPerStep: Int
    public var activationCollectivesPerStep: Int
    public var activationBytesPerStep: Int
    /// What the forward kept for the backward (`Recompute`: none or blocks).
    public var recompute: String
    /// Bytes of rank 0's training activations (their arena and bf16 scratch).
    public var activationArenaBytes: Int
    /// The largest rank's peak RSS.
    public var peakRSSBytes: Int
    /// The job's: the sum of every process's peak RSS (each MPI rank is a process; `--local-ranks` share one).
    public var jobPeakRSSBytes: Int
    public var threadsPerRank: Int?
    /// Bytes on disk of what must be kept per task: the adapter file (LoRA A/B, or the adapter
    /// layers), the biases (BitFit) or, for full fine-tuning, the whole model file. Written and measured, rank 0.
    public var savedBytesPerTask: Int?
    /// Ledger totals over the measured steps.
    public var measuredSteps: Int
    public var collectives: [Ledger.Row]
    /// On a dataset (nil on random tokens): where it was read, the examples kept and dropped as too
    /// long for `seq`, the tokens of each row, whether the examples were packed, and over the
    /// measured steps the examples a second, the tokens computed per step (padding included:
    /// rows × seq unpacked, the examples' own tokens packed) and the share of them that is padding.
    /// `tokensPerStep` and `tokensPerSecond` then count real tokens only: each example's tokens
    /// that predict a target (context and completion; its end-of-text is only a target).
    public var data: String?
    public var examples: Int?, droppedTooLong: Int?, seq: Int?
    public var packing: Bool?
    public var examplesPerSecond: Double?
    public var tokensComputedPerStep: Double?
    public var paddingFraction: Double?
}

public enum TrainBench {
    /// Runs on the given world; every rank returns the same result (rank 0's timings and ledger).
    public static func run(world: RecordingCommunicator, options b: TrainBenchOptions, name: String) throws
        -> TrainBenchResult
    {
        let ledger = world.ledger
        let grid = try ProcessGrid(world: world, tp: b.tp)
        let o = b.options
        // On a dataset, packed: the activations hold the largest micro-batch its steps make.
        let packed = b.data.flatMap {
            o.packing ? Batcher.packedBound(train: $0, options: o, steps: b.warmup + b.steps, dp: grid.dpDegree) : nil
        }
        let trainer = try Trainer(
            grid: grid, ledger: ledger, config: b.config, base: try RandomInitSource(config: b.config, seed: o.seed),
            options: o, adapters: b.adapters, packed: packed)
        let model = trainer.model
        let accum = o.accumulation(dp: grid.dpDegree)
        let micro = (0..<accum).map { _ in MicroBatch(batch: o.microBatch, seq: o.seq) }
        let globalTokens = o.globalBatch * o.seq
        // Each step's input: its target tokens (the loss normaliser) and its tokens over the global
        // batch, real and computed.
        let next: () -> (targets: Int, tokens: StepTokens)
        if let data = b.data {
            let batcher = Batcher(data: data, seed: o.seed, globalBatch: o.globalBatch)
            next = {
                let targets = batcher.next(into: micro, options: o, replica: grid.replica, dp: grid.dpDegree)
                return (targets, batcher.stepTokens)
            }
        } else {
            var rng = RNG(seed: o.seed)
            for mb in micro {
                for i in 0..<mb.tokens.count {
                    mb.tokens[i] = Int32(rng.below(b.config.vocabSize))
                    mb.targets[i] = Int32(rng.below(b.config.vocabSize))
                    mb.mask[i] = 1
                }
            }
            next = {
                (globalTokens, StepTokens(real: globalTokens, computed: globalTokens, squares: globalTokens * o.seq))
            }
        }
        ledger.enabled = false
        for _ in 0..<b.warmup { _ = try trainer.trainStep(micro, globalTokens: next().targets) }
        ledger.reset()
        ledger.enabled = true
        var stats: [StepStats] = []
        var real = 0
        var computedTotal = 0
        var squaresTotal = 0
        let g0 = Gemm.threadTotals
        for _ in 0..<b.steps {
            let input = next()
            real += input.tokens.real
            computedTotal += input.tokens.computed
            squaresTotal += input.tokens.squares
            stats.append(try trainer.trainStep(micro, globalTokens: input.targets))
        }
        let g1 = Gemm.threadTotals
        ledger.enabled = false
        let n = Double(b.steps)
        func mean(_ f: (StepStats) -> Double) -> Double { stats.map(f).reduce(0, +) / n }
        let sec = mean { $0.seconds }
        // What a step computes, padding included. FLOPs count those tokens; on random rows each
        // attends over seq positions, on a dataset each sequence over its own (Σ len² of the step).
        let computed = Double(computedTotal) / n
        let (kind, loraParams) = (
            o.method == .full ? Method.full : .lora, o.method == .lora ? o.lora.parameterCount(for: b.config) : 0
        )
        let flops =
            b.data == nil
            ? FlopCount.trainPerToken(b.config, seq: o.seq, method: kind, loraParams: loraParams) * computed
            : FlopCount.trainPerPass(
                b.config, rows: computedTotal, squares: squaresTotal, method: kind, loraParams: loraParams) / n
        let realPerStep = Double(real) / n
        let entries = ledger.entries
        // What a task costs on disk, from files actually written (full model: TP = 1 only).
        var saved: Int?
        // Rank 0 writes; every rank learns whether it could (a failed write ends the job on every
        // rank with its message instead of leaving the others waiting in the next collective).
        try Collective.agree(over: world, at: .write) {
            guard world.rank == 0 else { return }
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-dist-bench-\(getpid())").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let path = dir + "/task.safetensors"
            switch o.method {
            case .lora:
                try AdapterFile.save(
                    model.lora!, base: BaseIdentity(config: b.config, fingerprint: "bench", source: name), to: path)
            case .adapterH, .adapterL:
                let a = model.trainable!.adapters!
                guard a.config.placement != .sharded || grid.tpDegree == 1 else { break }
                try SafeTensorsFile.write(path: path, tensors: [("adapters", [a.arena.count], Array(a.arena.buffer))])
            case .full where grid.tpDegree == 1:
                try ModelFiles.save(model.base, to: path)
            case .bitfit where grid.tpDegree == 1:
                let b = model.trainable!.biases!
                try SafeTensorsFile.write(
                    path: path,
                    tensors: b.segments.map {
                        (
                            $0.slot.name, $0.slot.shape,
                            Array(UnsafeBufferPointer(start: b.values.base + $0.offset, count: $0.slot.localCount))
                        )
                    })
            default:
                break
            }
            if FileManager.default.fileExists(atPath: path) {
                saved = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue
            }
        }
        let report = try TrainingReport(model: model, steps: b.steps, stepEntries: entries, world: world)
        return TrainBenchResult(
            cpu: CPUInfo.current,
            bf16Kernel: o.precision == .bf16 ? (Gemm.backend == .onednn ? Gemm.bf16Kernel.rawValue : "widened") : nil,
            model: name, method: trainer.trainable.method.name,
            world: world.size, tp: grid.tpDegree, dp: grid.dpDegree,
            tokensPerStep: b.data == nil ? globalTokens : Int(realPerStep.rounded()), secondsPerStep: sec,
            tokensPerSecond: realPerStep / sec,
            forward: mean { $0.forward }, backward: mean { $0.backward }, gradSync: mean { $0.gradSync },
            optimizer: mean { $0.optimizer },
            gemm: (g1.seconds - g0.seconds) / n,
            gemmGflops: Double(g1.flops - g0.flops) / max(1e-9, g1.seconds - g0.seconds) / 1e9,
            flopsPerStep: flops,
            mfu: b.peakFlopsPerRank > 0 ? flops / sec / (b.peakFlopsPerRank * Double(world.size)) : nil,
            trainableParams: report.trainableParams, totalParams: report.totalParams,
            gradSyncBytesPerStep: report.gradSyncBytesPerStep,
            activationCollectivesPerStep: report.activationCollectivesPerStep,
            activationBytesPerStep: report.activationBytesPerStep,
            recompute: o.recompute.rawValue, activationArenaBytes: trainer.activations.bytes,
            peakRSSBytes: report.peakRSSBytes, jobPeakRSSBytes: report.jobPeakRSSBytes,
            threadsPerRank: b.threadsPerRank, savedBytesPerTask: saved,
            measuredSteps: b.steps, collectives: report.collectives,
            data: b.data?.source, examples: b.data?.count, droppedTooLong: b.data?.droppedTooLong,
            seq: b.data.map { _ in o.seq }, packing: b.data.map { _ in o.packing },
            examplesPerSecond: b.data.map { _ in Double(o.globalBatch) / sec },
            tokensComputedPerStep: b.data.map { _ in computed },
            paddingFraction: b.data.map { _ in 1 - realPerStep / computed })
    }
}
