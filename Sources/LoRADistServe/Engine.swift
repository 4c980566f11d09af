import Foundation
import LoRADist

/// What a completion's stream carries: each new token with the text it adds (empty while the text
/// might still become a stop string or an unfinished character), then how it ended.
public enum GenerationEvent: Sendable, Equatable {
    case token(id: Int32, text: String)
    /// Text held back until the end (a completion that ended on its length).
    case text(String)
    case finished(FinishReason, promptTokens: Int, completionTokens: Int)
}

/// What `/metrics` reports of an engine.
public struct EngineMetrics: Sendable {
    public var promptTokens = 0
    public var generatedTokens = 0
    /// Completions finished, by adapter name ("" for the base).
    public var completionsByAdapter: [String: Int] = [:]
    /// Forward passes by the rows they ran (a prompt's tokens, or one decoding step's sequences).
    public var passesByRows: [Int: Int] = [:]
    /// Steps by the sequences they ran (the batch size of each step with work).
    public var batchSizes: [Int: Int] = [:]
    /// Steps run, idle ones (plans with no sequence) included.
    public var steps = 0
    /// Requests waiting or running.
    public var queueLength = 0
    /// The ledger's collectives so far: site, op, count, bytes.
    public var collectives: [(site: String, op: String, count: Int, bytes: Int)] = []

    public init() {}
}

/// The model side of the server, behind which the HTTP layer never sees a model: it takes checked
/// requests and answers each with a stream of tokens; lists, loads and unloads adapters; and
/// reports its metrics. `BatchingEngine` (continuous batching, one process or under mpirun) is what
/// `serve` runs.
public protocol ServeEngine: AnyObject, Sendable {
    /// The base's name in the API (`model` of a request that wants no adapter).
    var baseName: String { get }
    /// The adapters now loaded, in the order they were loaded.
    func adapterNames() -> [String]
    /// Queues `request`; throws an `APIError` at once for a prompt longer than the context, an
    /// unknown adapter, or a full queue (429). The stream ends after `.finished`; ending it early
    /// (a client gone) cancels the request.
    func submit(_ request: CompletionRequest) throws -> AsyncThrowingStream<GenerationEvent, Error>
    /// Loads the adapter at `path` as `name` between passes (`MultiLoRASet.load`'s refusals).
    func loadAdapter(name: String, path: String) async throws
    func unloadAdapter(name: String) async throws
    func metrics() -> EngineMetrics
}

/// The checks and the stream every engine's `submit` makes.
enum Submission {
    /// A prompt of `count` tokens leaves room for a completion within `context`.
    static func checkPrompt(_ count: Int, context: Int) throws {
        guard count < context else {
            throw APIError(
                400,
                """
                this model's maximum context length is \(context) tokens; the prompt has \(count), which leaves \
                no room for a completion
                """,
                param: "prompt", code: "context_length_exceeded")
        }
    }

    /// `r` may queue: its adapter is loaded, the engine is not stopping, the queue has room.
    static func checkQueue(
        _ r: CompletionRequest, names: [String], stopping: Bool, pending: Int, maxQueue: Int
    ) throws {
        if let a = r.adapter, !names.contains(a) {
            throw APIError(404, "the model `\(a)` does not exist", param: "model", code: "model_not_found")
        }
        guard !stopping else { throw APIError(503, "the server is shutting down") }
        guard pending < maxQueue else {
            throw APIError(
                429, "\(pending) requests are queued, the most this server holds; retry later",
                type: "rate_limit_error", code: "rate_limit_exceeded")
        }
    }

    /// A request's stream, its continuation, and the flag its early end sets.
    static func stream() -> (
        AsyncThrowingStream<GenerationEvent, Error>, AsyncThrowingStream<GenerationEvent, Error>.Continuation,
        CancelFlag
    ) {
        let flag = CancelFlag()
        let (stream, continuation) = AsyncThrowingStream<GenerationEvent, Error>.makeStream()
        continuation.onTermination = { _ in flag.cancel() }
        return (stream, continuation, flag)
    }
}

/// Set once when a request's stream ends early.
final class CancelFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isCancelled: Bool { lock.withLock { value } }
    func cancel() { lock.withLock { value = true } }
}

/// A request's decoding, one token at a time: greedy by the model's argmax (as `Generator`), or a
/// sample at `temperature` from the smallest set of most likely tokens holding `topP` of the
/// probability, drawn with a counter-based RNG seeded by the request's seed. Stop strings are
/// matched on the decoded text; text that might still become one, or an unfinished character,
/// is held back until it cannot.
struct TokenDecoder {
    let request: CompletionRequest
    let tokenizer: any Tokenizer
    var rng: RNG
    var ids: [Int32] = []
    /// Characters of the decoded text already sent.
    var sent = 0

    init(_ request: CompletionRequest, tokenizer: any Tokenizer) {
        self.request = request
        self.tokenizer = tokenizer
        rng = RNG(seed: request.seed)
    }

    /// The token to emit from `logits` [vocab] (sampling only).
    mutating func sample(_ logits: UnsafePointer<Float>, vocab: Int) -> Int32 {
        let t = request.temperature
        var mx = -Double.infinity
        for j in 0..<vocab { mx = max(mx, Double(logits[j])) }
        var p = (0..<vocab).map { (j: Int32($0), p: exp((Double(logits[$0]) - mx) / t)) }
        let z = p.reduce(0) { $0 + $1.p }
        p.sort { $0.p > $1.p || ($0.p == $1.p && $0.j < $1.j) }
        var kept = 0
        var mass = 0.0
        while kept < p.count && (kept == 0 || mass < request.topP * z) {
            mass += p[kept].p
            kept += 1
        }
        var u = rng.uniformDouble() * mass
        for c in p.prefix(kept) {
            u -= c.p
            if u <= 0 { return c.j }
        }
        return p[kept - 1].j
    }

    /// Takes `id`; returns the text to send now and whether a stop string ended the completion.
    mutating func add(_ id: Int32) -> (text: String, stopped: Bool) {
        ids.append(id)
        let text = tokenizer.decode(ids)
        if let cut = request.stop.compactMap({ text.range(of: $0)?.lowerBound }).min() {
            let kept = String(text[..<cut])
            return (String(kept.dropFirst(sent)), true)
        }
        // Hold back what could be the start of a stop string, and an unfinished character.
        var safe = text.count - max(0, (request.stop.map(\.count).max() ?? 0) - 1)
        let chars = Array(text)
        while safe > sent && safe <= chars.count && chars[safe - 1] == "\u{FFFD}" { safe -= 1 }
        guard safe > sent else { return ("", false) }
        let out = String(chars[sent..<safe])
        sent = safe
        return (out, false)
    }

    /// The text still held back when the completion ends without a stop string.
    mutating func rest() -> String {
        let chars = Array(tokenizer.decode(ids))
        guard chars.count > sent else { return "" }
        defer { sent = chars.count }
        return String(chars[sent...])
    }
}
