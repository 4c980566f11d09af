import ArgumentParser
import Foundation
import LoRADist
import LoRADistServe

struct BenchServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: """
            Load a running `lora-dist serve` (on this machine) with concurrent clients: throughput, time to first \
            token, time per output token and the server's collectives per generated token.
            """,
        discussion: """
            --clients clients send --requests greedy completions in all (each client one at a time), request i naming \
            the i-th model of the --adapters mix and the i-th prompt, and ask for token ids so every token is \
            counted. Reports requests ok, failed and not sent (none is lost), output tokens/s over the run, time to \
            first token (TTFT: with --stream the first token's arrival, else the whole response's) and time per \
            output token (TPOT: (last token − first token) / (tokens − 1), else the whole time / tokens), p50 and \
            p99 over the requests, and the ledger's collectives by site from /metrics before and after, per token the \
            server generated. Loopback only: any other host is refused.
            """)

    @Option(help: "The server, http://127.0.0.1:PORT (127.0.0.1, ::1 or localhost only).") var url: String
    @Option(help: "Concurrent clients.") var clients = 4
    @Option(help: "Requests in all.") var requests = 32
    @Option(
        help: """
            Models of the requests, round-robin: adapter names (or the base's), comma-separated; NAME:WEIGHT gives a \
            mix (a:3,b:1).
            """)
    var adapters: String
    @Option(
        help: """
            Prompts: a file with one prompt a line (\\n is a newline), or a .jsonl file of {"prompt"} or \
            {"context"} objects.
            """)
    var promptFile: String?
    @Option(help: "built-in: the built-in task's test prompts (the default without --prompt-file).") var prompts:
        String?
    @Option(help: "Most new tokens a request.") var maxTokens = 32
    @Flag(help: "Stream (server-sent events): TTFT is then the first token's.") var stream = false
    @Option(help: "Seconds for the whole run.") var timeout: Double = 600
    @Option(help: "Write the result as JSON.") var json: String?

    func validate() throws {
        guard clients >= 1 else { throw ValidationError("--clients must be at least 1 (got \(clients))") }
        guard requests >= 1 else { throw ValidationError("--requests must be at least 1 (got \(requests))") }
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1 (got \(maxTokens))") }
        guard timeout > 0 else { throw ValidationError("--timeout must be positive (got \(timeout))") }
        if let p = prompts, p != "built-in" { throw ValidationError("--prompts takes built-in (got \(p))") }
        if prompts != nil && promptFile != nil {
            throw ValidationError("--prompts built-in and --prompt-file are alternatives")
        }
        do { _ = try ServeBenchOptions.checkLoopback(url) } catch { throw ValidationError("\(error)") }
    }

    /// The prompts of `--prompt-file`, or the built-in task's test contexts.
    func loadPrompts() throws -> [String] {
        guard let path = promptFile else { return BuiltinTask.standardSplits().test.map(\.context) }
        let text = try TextFile.read(path)
        let lines = text.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
        let out: [String]
        if path.hasSuffix(".jsonl") {
            out = try lines.enumerated().map { i, line in
                let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                guard let p = (o?["prompt"] ?? o?["context"]) as? String, !p.isEmpty else {
                    throw ValidationError("--prompt-file \(path): line \(i + 1) has no \"prompt\" or \"context\"")
                }
                return p
            }
        } else {
            out = lines.map { $0.replacingOccurrences(of: "\\n", with: "\n") }
        }
        guard !out.isEmpty else { throw ValidationError("--prompt-file \(path): no prompt") }
        return out
    }

    func run() throws {
        var o = ServeBenchOptions(
            url: try ServeBenchOptions.checkLoopback(url), models: try ServeBenchOptions.mix(adapters),
            prompts: try loadPrompts())
        o.clients = clients
        o.requests = requests
        o.maxTokens = maxTokens
        o.stream = stream
        o.timeout = timeout
        let r = try ServeBench.run(o)
        print(
            """
            \(r.url): \(clients) client(s), \(requests) request(s) over \(Set(o.models).count) model(s) \
            (\(o.models.joined(separator: ","))), \(o.prompts.count) prompt(s), max \(maxTokens) tokens, greedy, \
            \(stream ? "streamed" : "not streamed")
            """)
        print(ServeBench.table(r), terminator: "")
        if let json { try writeFileAtomically(try encodeJSON(r), to: json) }
        if r.ok != r.requests { throw ExitCode(1) }
    }
}
