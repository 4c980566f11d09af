import ArgumentParser
import Foundation
import LoRADist
import LoRADistServe

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the base and any number of LoRA adapters over an OpenAI-style HTTP API.",
        discussion: """
            POST /v1/completions (model: an adapter's name or the base's, --base-name; prompt, max_tokens, \
            temperature (0: greedy), top_p, seed, stop, stream), GET /v1/models, POST /v1/adapters {"name", "path"}, \
            DELETE /v1/adapters/NAME, GET /health, GET /metrics (Prometheus text). Adapters stay unmerged; requests \
            are batched continuously: every step runs one forward over all running requests (up to --max-batch, \
            --max-batch-tokens tokens), each request's rows on its adapter. Under mpirun (or --local-ranks N) the \
            base is tensor-parallel over every rank; rank 0 answers HTTP and broadcasts each step's plan. SIGTERM or \
            SIGINT (to rank 0) finishes the requests in flight and every rank exits 0. An --adapter file of \
            bottleneck adapters (train --method adapter-h or adapter-l) or BitFit is served alone, on every request \
            under its NAME: bottleneck adapters are layers of their own (placed by --placement), not a delta of a \
            weight, so they are neither batched beside others nor merged.
            """)

    @OptionGroup var modelOptions: ModelOptions
    @Option(
        help: """
            An adapter served at start, NAME=PATH (PATH: an adapter file written by train, or a PEFT directory); \
            repeat for several LoRA adapters.
            """)
    var adapter: [String] = []
    @Option(
        help: """
            Where bottleneck adapters sit on the tensor-parallel base: replicated (no collective), sharded (+1 \
            AllReduce per adapter and step) or owner (on rank 0, +1 Broadcast per adapter and step).
            """)
    var placement: AdapterPlacement = .replicated
    @Option(help: "Address to listen on (loopback by default).") var host = "127.0.0.1"
    @Option(help: "Port to listen on (0: any free port, printed at start).") var port = 8000
    @Option(help: "Most adapters loaded at once (at start and by POST /v1/adapters).") var maxAdapters = 16
    @Option(
        help: """
            MiB the loaded adapters' weights may take together (every rank holds each adapter whole); a load past \
            it (at start or by POST /v1/adapters) is refused.
            """)
    var adapterMemory = Double(MultiLoRASet.defaultMemoryBudget) / 1_048_576
    @Option(help: "Most requests waiting or running; one more is answered 429.") var maxQueue = 64
    @Option(help: "Most sequences (requests) in one step's forward.") var maxBatch = 16
    @Option(help: "Most tokens in one step's forward; a longer prompt is fed in chunks.") var maxBatchTokens = 256
    @OptionGroup var ranks: RanksOptions
    @Option(help: "Seconds any collective may wait for the other ranks before they report and stop (0: no limit).")
    var collectiveTimeout: Double = 300
    @Option(help: "The base's name in the API (model of a request without adapter).") var baseName = "base"
    @Option(help: precisionHelp) var precision: Precision = .fp32
    @Option(
        help: """
            Tokenizer: a tokenizer.json or a directory with tokenizer.json or vocab.json + merges.txt. Default: the \
            tokenizer files in the --base directory if there are any, else bytes.
            """)
    var tokenizer: String?
    @Option(
        help: """
            Serve the adapter NAME (its --adapter NAME=PATH the only one) merged into the base, W0 + (α/r)·B·A: \
            LoRA's zero-latency case; requests name NAME, and no other adapter is served.
            """)
    var merge: String?

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535 (got \(port))") }
        guard maxBatch >= 1 else { throw ValidationError("--max-batch must be at least 1 (got \(maxBatch))") }
        guard maxBatchTokens >= maxBatch else {
            throw ValidationError(
                "--max-batch-tokens must be at least --max-batch (\(maxBatch)); got \(maxBatchTokens)")
        }
        guard adapterMemory.isFinite, adapterMemory * 1_048_576 >= 1 else {
            throw ValidationError("--adapter-memory must be at least one byte, in MiB (got \(adapterMemory))")
        }
        for a in adapter where !a.contains("=") {
            throw ValidationError("--adapter \(a): expected NAME=PATH")
        }
        if let m = merge, adapter.count != 1 || !adapter[0].hasPrefix(m + "=") {
            throw ValidationError("--merge \(m) serves one adapter merged: give it alone, as --adapter \(m)=PATH")
        }
        let other = parsedAdapters.filter { Self.isLayers($0.path) }
        if let o = other.first, adapter.count > 1 {
            throw ValidationError(
                """
                --adapter \(o.name)=\(o.path) holds \(Self.kindName(o.path)): it is served alone, on every request \
                (LoRA adapters batch side by side through one base; bottleneck layers and BitFit's biases change the \
                model itself); give it as the only --adapter
                """)
        }
        if merge != nil, let o = other.first {
            throw ValidationError("--merge merges a LoRA adapter; \(o.path) holds \(Self.kindName(o.path))")
        }
    }

    func run() throws {
        let spec = try modelOptions.spec()
        let tok = try TokenizerChoice.forBase(spec, override: tokenizer)
        let adapters = parsedAdapters
        let (host, port) = (self.host, self.port)
        // A trained file of another method than LoRA: the model runs it on every row, alone.
        let other = adapters.filter { Self.isLayers($0.path) }
        let layers = other.first.map { StepRunner.Layers(path: $0.path, placement: placement) }
        // --merge NAME: each rank's shard with NAME merged into it, served under NAME's name with no
        // adapter; a trained file's layers likewise.
        let fixed = merge ?? other.first?.name
        let (served, baseName) = fixed.map { ([], $0) } ?? (adapters, self.baseName)
        let mergePath = merge.map { _ in adapters[0].path }
        let loadsRefused = merge.map { "this server serves \($0) merged into its base; it loads no other adapter" }
        CollectiveDeadline.seconds = collectiveTimeout
        // The others wait at most this long for a plan while idle: well within the deadline.
        let heartbeat = collectiveTimeout > 0 ? min(1, collectiveTimeout / 4) : 1
        let code = ranks.run { world in
            let runner = try StepRunner(
                comm: world, base: spec, adapters: served, maxAdapters: maxAdapters, maxBatch: maxBatch,
                tokenBudget: maxBatchTokens, precision: precision,
                adapterMemory: Int((adapterMemory * 1_048_576).rounded(.down)), layers: layers, merge: mergePath)
            guard world.rank == 0 else {
                // Rank 0 alone answers signals: the last plan tells this rank to stop.
                if ranks.localRanks == nil {
                    signal(SIGTERM, SIG_IGN)
                    signal(SIGINT, SIG_IGN)
                }
                try runner.follow()
                return
            }
            let engine = try BatchingEngine(
                runner: runner, maxQueue: maxQueue, tokenizer: tok, baseName: baseName, heartbeat: heartbeat,
                loadsRefused: loadsRefused)
            let failure = ServeFailure()
            Task.detached {
                do {
                    try await ServeServer.run(engine: engine, host: host, port: port) { bound in
                        print("lora-dist serve: listening on http://\(host):\(bound)")
                        fflush(stdout)
                    }
                } catch { failure.set(error) }
                engine.stop()
            }
            try engine.run()
            if let e = failure.error { throw e }
        }
        if code != 0 { throw ExitCode(code) }
    }
}

extension Serve {
    /// The --adapter NAME=PATH pairs.
    var parsedAdapters: [(name: String, path: String)] {
        adapter.map { a in
            let i = a.firstIndex(of: "=")!
            return (String(a[..<i]), String(a[a.index(after: i)...]))
        }
    }

    /// A lora-dist trained file of bottleneck adapters or BitFit (not a LoRA adapter, not a PEFT
    /// directory; a path that cannot be read is left to the load's own message).
    static func isLayers(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue,
            let kind = try? TrainedFile.kind(path).kind
        else { return false }
        if case .lora = kind { return false }
        return true
    }

    static func kindName(_ path: String) -> String {
        switch try? TrainedFile.kind(path).kind {
        case .bottleneck(let c)?: return "\(c.kind.rawValue) bottleneck adapters (bottleneck \(c.bottleneck))"
        case .bitfit?: return "BitFit's biases"
        default: return "a LoRA adapter"
        }
    }
}

/// The server's error, if it stopped on one.
final class ServeFailure: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Error?
    var error: Error? { lock.withLock { value } }
    func set(_ e: Error) { lock.withLock { value = e } }
}
