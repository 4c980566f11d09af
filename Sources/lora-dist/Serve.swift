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
            DELETE /v1/adapters/NAME, GET /health, GET /metrics (Prometheus text). Adapters stay unmerged and each \
            request runs on its own. One process for now, requests one at a time: serving under mpirun comes with \
            the continuous-batching engine. SIGTERM or SIGINT finishes the requests in flight and exits 0.
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
    @Option(help: "Most requests waiting or running; one more is answered 429.") var maxQueue = 64
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
        let code = World.run(localRanks: nil) { world in
            let engine = try LocalEngine(
                comm: world, base: base, adapters: served, maxAdapters: maxAdapters, maxQueue: maxQueue,
                precision: precision, tokenizer: tok, baseName: baseName)
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
            engine.run()
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
