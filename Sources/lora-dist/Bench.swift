import ArgumentParser
import Foundation
import LoRADist

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks that print measured figures.",
        subcommands: [BenchTrain.self, BenchInference.self, BenchPredict.self, BenchGemm.self, BenchServe.self])
}

struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Tokens/s, time per phase, MFU, gradient and activation bytes and peak RSS of training steps.",
        discussion:
            """
            LoRA takes train's options and defaults; the paper's GPT-2 setting is --lora-targets q,v --lora-rank 4. \
            For one method's own peak RSS, run one method per process. With --data DIR the steps train on \
            DIR/train.jsonl (byte-level ids, as train's random bases take them) through train's own data path: \
            each step the next --batch examples of the epoch's shuffle, packed (--packing on, train's default) or \
            one a row padded to --seq (--packing off; --seq defaults to the longest example, capped at the model's \
            context); tok/s then counts real tokens only, and it reports examples/s, the tokens computed per step \
            and the padding fraction.
            """
    )

    @Option(help: "Model shapes (comma-separated).") var models = "tiny,gpt2"
    @Option(help: "Methods: lora, full, bitfit, adapter-h, adapter-l (comma-separated).") var methods = "lora,full"
    @OptionGroup var loraOptions: LoRAOptions
    @Option(help: "Sequences per step.") var batch = 4
    @Option(
        help: """
            Tokens per sequence (capped at the model's context; default 128, with --data the data's longest \
            example).
            """)
    var seq: Int?
    @Option(help: "Train on DIR/train.jsonl's examples instead of random tokens.") var data: String?
    @Option(help: "With --data: pack each micro-batch's examples (on, train's default) or one a row (off).")
    var packing: OnOff?
    @Option(help: "Measured steps (after the warm-up steps).") var steps = 3
    @Option(help: "Warm-up steps, not measured.") var warmup = 1
    @OptionGroup var parallel: ParallelOptions
    @Option(help: "GEMM threads per rank (default: the environment's; launch/mpirun sets 1).") var threads: Int?
    @Option(help: "Seed of the random base, LoRA init and tokens.") var seed: UInt64 = 1234
    @Option(help: "GEMM GFLOP/s per rank for MFU (default: measured now, as doctor does, for the precision in use).")
    var peakGflops: Double?
    @Option(help: precisionHelp) var precision: Precision = .fp32
    @Option(help: recomputeHelp) var recompute = trainDefaults.recompute
    @Option(help: "Write the results as JSON.") var json: String?

    func validate() throws {
        try checkRanges()
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1 (got \(t))") }
        guard steps >= 1 else { throw ValidationError("--steps must be at least 1 (got \(steps))") }
        guard warmup >= 0 else { throw ValidationError("--warmup must not be negative (got \(warmup))") }
        if let s = seq, s < 2 { throw ValidationError("--seq must be at least 2 (got \(s))") }
        if packing != nil && data == nil {
            throw ValidationError("--packing needs --data (random tokens fill every row)")
        }
    }

    /// `--data`'s examples for a model of `cfg`, in rows of `--seq` tokens, or of the longest
    /// example's (capped at the model's context) without it.
    func dataset(_ examples: [Example], source: String, for cfg: GPTConfig) throws -> TokenDataset {
        let cap = min(seq ?? cfg.nPositions, cfg.nPositions)
        let tokenizer = ByteTokenizer()
        var d = try TokenDataset(examples: examples, tokenizer: tokenizer, seq: cap, source: source)
        if seq == nil, let longest = d.examples.map({ $0.tokens.count - 1 }).max(), longest < cap {
            d = try TokenDataset(examples: examples, tokenizer: tokenizer, seq: max(2, longest), source: source)
        }
        guard d.largestToken < cfg.vocabSize else {
            throw TrainError.data(
                "\(source) holds token id \(d.largestToken), beyond the vocabulary of \(cfg.vocabSize) of the shape")
        }
        return d
    }

    func run() throws {
        // LoRA's targets follow each model's family (its defaults, and the names it has).
        var loras: [String: LoRAConfig] = [:]
        for name in models.split(separator: ",").map(String.init) {
            guard let cfg = GPTConfig.named(name) else { throw ValidationError("unknown model \(name)") }
            loras[name] = try loraOptions.config(family: cfg.family)
        }
        let code = parallel.run { world in
            if let threads { Gemm.setThreads(threads) }  // after World.run's default of one
            var peak = peakGflops ?? 0
            if peakGflops == nil {
                // The GEMM peak of the precision this run computes in: a GPT-2 MLP-shaped GEMM on
                // the backend in use, with the base's operand type.
                // bf16 on the kernel the run's GEMMs take (widened unless LORA_DIST_BF16=native).
                var g = [
                    GemmBench.measure(
                        backend: Gemm.backend, type: precision == .bf16 ? .bf16 : .f32, m: 512, n: 3072, k: 768,
                        seconds: 0.3, widenFirst: Gemm.bf16Kernel == .widened
                    ).bestGflops
                ]
                try Collective.max(&g, over: world, at: .timing)
                peak = g[0]
            }
            var examples: [Example]?
            if let dir = data {
                var isDir: ObjCBool = false
                guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
                    throw TrainError.data("--data \(dir): no such directory (lora-dist data --out DIR writes one)")
                }
                examples = try JSONLines.read(dir + "/train.jsonl")
            }
            var results: [TrainBenchResult] = []
            for name in models.split(separator: ",").map(String.init) {
                let cfg = GPTConfig.named(name)!
                let corpus = try examples.map { try dataset($0, source: data! + "/train.jsonl", for: cfg) }
                for m in methods.split(separator: ",").map(String.init) {
                    var o = TrainOptions()
                    o.steps = 1000
                    o.globalBatch = batch
                    o.seq = corpus?.seq ?? min(seq ?? 128, cfg.nPositions)
                    o.precision = precision
                    o.recompute = recompute
                    o.packing = packing.map { $0 == .on } ?? trainDefaults.packing
                    o.lora = loras[name]!
                    o.seed = seed
                    let degree = parallel.tpDegree(world: world.size)
                    o.microBatch = max(1, batch / (world.size / degree))
                    var b = TrainBenchOptions(config: cfg, options: o, tp: degree)
                    guard let method = Method(rawValue: m) else {
                        throw ValidationError(
                            "unknown method \(m) (methods: \(Method.allCases.map(\.rawValue).joined(separator: ", ")))")
                    }
                    b.options.method = method
                    b.adapters = method.adapters(bottleneck: 64, placement: .sharded)
                    b.steps = steps
                    b.warmup = warmup
                    b.threadsPerRank = threads
                    b.peakFlopsPerRank = peak * 1e9
                    b.data = corpus
                    let r = try TrainBench.run(world: world, options: b, name: name)
                    results.append(r)
                    if world.rank == 0 {
                        let ex = r.examplesPerSecond.map { ", \(fixed($0, 2)) examples/s" } ?? ""
                        print("measured \(name) \(m): \(fixed(r.tokensPerSecond, 0)) tok/s\(ex)")
                        fflush(stdout)
                    }
                }
            }
            if world.rank == 0 {
                var t = TextTable(
                    [
                        "model", "method", "world", "tp", "tok/s", "s/step", "fwd s", "bwd s", "sync s", "opt s",
                        "GEMM s", "GEMM GF/s", "MFU",
                        "trainable", "grad bytes/step", "act. collectives/step", "act. bytes/step", "recompute",
                        "act. arena MiB", "peak RSS MiB", "job RSS MiB", "saved/task bytes"
                    ], left: [0, 1])
                for r in results {
                    t.add([
                        r.model, r.method, String(r.world), String(r.tp), fixed(r.tokensPerSecond, 0),
                        fixed(r.secondsPerStep, 3),
                        fixed(r.forward, 3), fixed(r.backward, 3), fixed(r.gradSync, 4), fixed(r.optimizer, 4),
                        fixed(r.gemm, 3), fixed(r.gemmGflops, 0),
                        r.mfu.map { fixed(100 * $0, 1) + "%" } ?? "-", String(r.trainableParams),
                        String(r.gradSyncBytesPerStep),
                        String(r.activationCollectivesPerStep), String(r.activationBytesPerStep), r.recompute,
                        String(r.activationArenaBytes >> 20), String(r.peakRSSBytes >> 20),
                        String(r.jobPeakRSSBytes >> 20),
                        r.savedBytesPerTask.map(String.init) ?? "-"
                    ])
                }
                let lora = loras.values.first!
                let ts = Set(loras.values.map { $0.targets.map(\.rawValue).joined(separator: ",") }).sorted()
                print("CPU: \(CPUInfo.current.summary)")
                print(
                    """
                    LoRA r \(lora.rank), α \(fixed(Double(lora.alpha), 0)) on \(ts.joined(separator: " / ")); \
                    \(threads.map { "\($0) GEMM thread(s) per rank; " } ?? "")seed \(seed)
                    """
                )
                let kernel =
                    precision == .bf16 ? (Gemm.backend == .onednn ? " \(Gemm.bf16Kernel.rawValue)" : " widened") : ""
                print(
                    (peak > 0
                        ? """
                        GEMM peak per rank (\(Gemm.backendName) \(precision.rawValue)\(kernel), 512×3072×768): \
                        \(fixed(peak, 1)) GFLOP/s; MFU = model FLOPs / s / (peak × ranks)
                        """
                        : "MFU left out (--peak-gflops 0)")
                            + """
                            ; act. arena: one rank's training activations; peak RSS: the largest rank's high-water \
                            mark so far; job RSS: the sum over the job's processes
                            """
                )
                print(t.render(), terminator: "")
                if let d = results.first, let source = d.data {
                    print(
                        """
                        data: \(source), \(d.examples ?? 0) examples (\(d.droppedTooLong ?? 0) dropped as longer than \
                        --seq), \(batch) a step, \(d.packing == true ? "packed" : "one a row of seq tokens"); \
                        tok/s above counts real tokens only
                        """)
                    var dt = TextTable(
                        ["model", "method", "seq", "examples/s", "real tok/s", "tok computed/step", "padding"],
                        left: [0, 1])
                    for r in results {
                        dt.add([
                            r.model, r.method, String(r.seq ?? 0), fixed(r.examplesPerSecond ?? 0, 2),
                            fixed(r.tokensPerSecond, 0), fixed(r.tokensComputedPerStep ?? 0, 0),
                            fixed(100 * (r.paddingFraction ?? 0), 1) + " %"
                        ])
                    }
                    print(dt.render(), terminator: "")
                }
                if let json { try writeFileAtomically(try encodeJSON(results), to: json) }
            }
        }
        if code != 0 { throw ExitCode(code) }
    }
}

struct BenchGemm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gemm",
        abstract:
            """
            GFLOP/s of the GEMMs a linear layer runs in training (forward, weight and input gradient), per backend and \
            type, and the per-call time of a tiny GEMM.
            """
    )

    @Option(help: "Forward shapes MxNxK of x[M,K]·W[K,N] (comma-separated); each also runs as xᵀ·dy and dy·Wᵀ.")
    var shapes = "512x2304x768,512x768x3072,512x3072x768"
    @Option(help: "Backends (comma-separated): onednn, openblas.") var backends = "onednn,openblas"
    @Option(
        help:
            """
            Operand types (comma-separated): f32, bf16, and bf16w (bf16 widened to fp32 in the call, then the fp32 \
            GEMM).
            """
    )
    var types = "f32,bf16,bf16w"
    @Option(help: "Size of the square GEMM whose per-call time is the overhead figure.") var tiny = 64
    @Option(help: "GEMM threads (Gemm.setThreads).") var threads = 1
    @Option(help: "Seconds each measurement runs.") var seconds = 0.3
    @Option(help: "Write the measurements as JSON.") var json: String?

    func run() throws {
        try Gemm.checkEnvironment()
        guard let shapeList = GemmBench.parseShapes(shapes) else {
            throw ValidationError("bad --shapes \(shapes) (use MxNxK,...)")
        }
        let bs = try backends.split(separator: ",").map { s -> GemmBackend in
            guard let b = GemmBackend(rawValue: String(s)) else {
                throw ValidationError("unknown backend \(s) (onednn, openblas)")
            }
            return b
        }
        let ts = try types.split(separator: ",").map { s -> (DType, Bool) in
            if s == "bf16w" { return (.bf16, true) }
            guard let t = DType(rawValue: String(s)) else {
                throw ValidationError("unknown type \(s) (f32, bf16, bf16w)")
            }
            return (t, false)
        }
        guard threads >= 1, tiny >= 1, seconds > 0 else {
            throw ValidationError("--threads, --tiny and --seconds must be positive")
        }
        // OpenBLAS's bf16 path already widens, so its bf16w column would repeat its bf16 one.
        let columns = bs.flatMap { b in
            ts.filter { !(b == .openblas && $0.1) }.map { (backend: b, type: $0.0, widen: $0.1) }
        }
        Gemm.setThreads(threads)
        var rows: [GemmMeasurement] = []
        var t = TextTable(
            ["layer M×N×K", "GEMM", "op", "m×n×k"]
                + columns.map { "\($0.backend.rawValue) \($0.widen ? "bf16w" : $0.type.rawValue)" }
                + ["faster fp32", "kernels (oneDNN)"], left: [0, 1, 2, 3])
        var cases = shapeList.flatMap { s in GemmBench.trainingCases(m: s.m, n: s.n, k: s.k).map { (s, $0) } }
        cases.append(((tiny, tiny, tiny), ("tiny", false, false, tiny, tiny, tiny)))
        for (layer, c) in cases {
            var cells: [String] = []
            var kernels: [String] = []
            for col in columns {
                FileHandle.standardError.write(
                    Data(
                        """
                        measuring \(col.backend.rawValue) \(col.widen ? "bf16w" : col.type.rawValue) \(c.name) \
                        \(c.m)x\(c.n)x\(c.k)\n
                        """
                        .utf8))
                let r = GemmBench.measure(
                    backend: col.backend, type: col.type, transA: c.transA, transB: c.transB, m: c.m, n: c.n, k: c.k,
                    seconds: seconds, widenFirst: col.widen)
                rows.append(r)
                cells.append(
                    !r.available ? r.implementation : c.name == "tiny" ? "\(fixed(r.medianMicros, 1)) µs" : r.bestCell)
                if col.backend == .onednn && !col.widen && r.available { kernels.append(r.implementation) }
            }
            // Which library runs this fp32 GEMM faster on this CPU, and by how much.
            let mine = rows.suffix(columns.count).filter { $0.type == "f32" }
            var faster = "-"
            if let o = mine.first(where: { $0.backend == "onednn" }),
                let b = mine.first(where: { $0.backend == "openblas" })
            {
                let (x, y) = c.name == "tiny" ? (1 / o.medianMicros, 1 / b.medianMicros) : (o.bestGflops, b.bestGflops)
                faster = x >= y ? "onednn \(fixed(x / y, 2))×" : "openblas \(fixed(y / x, 2))×"
            }
            t.add(
                ["\(layer.m)×\(layer.n)×\(layer.k)", c.name, rows.last!.op, "\(c.m)×\(c.n)×\(c.k)"] + cells
                    + [faster, Array(Set(kernels)).sorted().joined(separator: ", ")])
        }
        print("CPU: \(CPUInfo.current.summary)")
        print(
            """
            GEMM GFLOP/s (best of \(fixed(seconds, 1)) s), \(threads) thread\(threads == 1 ? "" : "s"); the tiny row \
            is the median time per call
            """
        )
        print(t.render(), terminator: "")
        if let json {
            try writeFileAtomically(try encodeJSON(GemmBenchReport(cpu: CPUInfo.current, measurements: rows)), to: json)
        }
    }
}

struct BenchInference: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inference",
        abstract:
            """
            Latency and collectives per forward pass and per decoded token: base, LoRA merged/unmerged, adapters × \
            placements.
            """,
        discussion:
            """
            With no options: the tiny shape on 2 ranks as threads of this process (TP 2, so the collectives show), in \
            seconds. Under mpirun, or with --local-ranks N, TP is the whole world; --model gpt2 (or gpt2-medium, the \
            paper's) for real shapes.
            """
    )

    @Option(help: "Model shape.") var model = "tiny"
    @Option(help: "Cases: BxT forward passes and decodeT (one token after T cached). The paper's: 32x512,16x256,1x128.")
    var cases = "1x128,decode128"
    @Option(
        help: "Methods (default all): base, lora-merged, lora-unmerged, adapter-h/replicated, ..., adapter-l/owner.")
    var methods: String?
    @Option(help: "Adapter bottleneck.") var bottleneck = 64
    @Option(help: "Timed repetitions (median reported).") var reps = 5
    @Option(help: "Warm-up repetitions.") var warmup = 2
    @OptionGroup var ranks: RanksOptions
    @Option(help: precisionHelp) var precision: Precision = .fp32
    @Option(help: "Write rows as JSON.") var json: String?
    @Option(help: "Write rows as CSV.") var csv: String?

    static let defaultRanks = 2

    func run() throws {
        guard let cfg = GPTConfig.named(model) else { throw ValidationError("unknown model \(model)") }
        let cs = try cases.split(separator: ",").map { s -> InferenceCase in
            guard let c = InferenceCase.parse(String(s)) else {
                throw ValidationError("bad case \(s) (use BxT or decodeT)")
            }
            return c
        }
        var o = InferenceBenchOptions(config: cfg, cases: cs)
        o.bottleneck = bottleneck
        o.reps = reps
        o.warmup = warmup
        o.precision = precision
        if let m = methods {
            o.methods = try m.split(separator: ",").map { s in
                guard let x = InferenceMethod.parse(String(s)) else { throw ValidationError("unknown method \(s)") }
                return x
            }
        }
        // Without mpirun or --local-ranks, two ranks as threads: one rank would have no collectives to show.
        let underMPI = World.backendName(localRanks: ranks.localRanks) == "mpi"
        let localRanks = ranks.localRanks ?? (underMPI ? nil : Self.defaultRanks)
        let how =
            ranks.localRanks != nil
            ? "ranks as threads of this process (--local-ranks)"
            : underMPI ? "MPI ranks" : "ranks as threads of this process (the default without mpirun or --local-ranks)"
        let code = World.run(localRanks: localRanks) { world in
            let rows = try InferenceBench.run(comm: world, options: o) { msg in
                if world.rank == 0 { FileHandle.standardError.write(Data("measuring \(msg)\n".utf8)) }
            }
            if world.rank == 0 {
                print(
                    """
                    \(model) (\(cfg.nLayer) layers, d \(cfg.nEmbd)), TP = \(world.size) over \(world.size) \(how); \
                    LoRA r 4 on q,v; adapters m = \(bottleneck); median of \(reps) after \(warmup) warm-up
                    """
                )
                print(InferenceBench.table(rows), terminator: "")
                if let json { try writeFileAtomically(try encodeJSON(rows), to: json) }
                if let csv {
                    var s =
                        """
                        method,case,median_ms,overhead_pct,allreduce,broadcast,allgather,bytes,adapter_params_per_rank\n
                        """
                    for r in rows {
                        s +=
                            """
                            \(r.method),\(r.caseName),\(r.medianMs),\(r.overheadPct),\(r.allReduce),\(r.broadcast),\
                            \(r.allGather),\(r.bytes),\(r.adapterParamsPerRank)\n
                            """
                    }
                    try writeFileAtomically(Data(s.utf8), to: csv)
                }
            }
        }
        if code != 0 { throw ExitCode(code) }
    }
}

/// What `bench gemm --json` writes: the CPU it ran on and every measurement.
struct GemmBenchReport: Encodable {
    var cpu: CPUInfo
    var measurements: [GemmMeasurement]
}
