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
            SIGINT (to rank 0) finishes the requests in flight and every rank exits 0.
            """)

    @OptionGroup var modelOptions: ModelOptions
    @Option(
        help: """
            An adapter served at start, NAME=PATH (PATH: an adapter file written by train, or a PEFT directory); \
            repeat for several.
            """)
    var adapter: [String] = []
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
    }

    func run() throws {
        let spec = try modelOptions.spec()
        let tok = try TokenizerChoice.forBase(spec, override: tokenizer)
        let adapters = adapter.map { a -> (name: String, path: String) in
            let i = a.firstIndex(of: "=")!
            return (String(a[..<i]), String(a[a.index(after: i)...]))
        }
        let (host, port) = (self.host, self.port)
        // --merge NAME: the base with NAME merged into it, served under NAME's name with no adapter.
        let (base, served, baseName) =
            merge.map { (BaseSpec.merged(spec, adapter: adapters[0].path), [], $0) } ?? (spec, adapters, self.baseName)
        CollectiveDeadline.seconds = collectiveTimeout
        // The others wait at most this long for a plan while idle: well within the deadline.
        let heartbeat = collectiveTimeout > 0 ? min(1, collectiveTimeout / 4) : 1
        let code = ranks.run { world in
            let runner = try StepRunner(
                comm: world, base: base, adapters: served, maxAdapters: maxAdapters, maxBatch: maxBatch,
                tokenBudget: maxBatchTokens, precision: precision,
                adapterMemory: Int((adapterMemory * 1_048_576).rounded(.down)))
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
                runner: runner, maxQueue: maxQueue, tokenizer: tok, baseName: baseName, heartbeat: heartbeat)
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

/// The server's error, if it stopped on one.
final class ServeFailure: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Error?
    var error: Error? { lock.withLock { value } }
    func set(_ e: Error) { lock.withLock { value = e } }
}
