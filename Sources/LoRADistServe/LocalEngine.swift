import Foundation
import LoRADist

/// The one-process engine: the base (GPT-2 or the Llama family, fp32 or bf16) with a
/// `MultiLoRASet`, one request at a time in arrival order, each decoded on its own KV cache with
/// every row on its adapter (`RowAssignment.all`): greedy decoding is `Generator`'s, token for
/// token. Loads and unloads run between requests, on the same thread as the passes. `run()` is
/// that thread's loop; `stop()` lets it finish what is queued and return.
public final class LocalEngine: ServeEngine, @unchecked Sendable {
    public let baseName: String
    public let model: GPTModel
    public let tokenizer: any Tokenizer
    public let identity: BaseIdentity
    /// Requests waiting or running at most; one more is answered 429.
    public let maxQueue: Int
    private let set: MultiLoRASet
    private let comm: RecordingCommunicator

    private enum Job {
        case generate(CompletionRequest, [Int32], AsyncThrowingStream<GenerationEvent, Error>.Continuation, CancelFlag)
        case control(() throws -> Void, CheckedContinuation<Void, Error>)
    }

    private let cond = NSCondition()
    private var jobs: [Job] = []
    private var pending = 0
    private var stopping = false
    /// Read by other threads under `cond`: the adapters' names and the metrics.
    private var names: [String] = []
    private var counters = EngineMetrics()
    /// Buffers of the longest generation so far.
    private var acts: Activations?
    private var cache: KVCache?

    /// Opens `base` on `comm` (a world of one) and loads `adapters` (name, path) at start.
    public init(
        comm: Communicator, base: BaseSpec, adapters: [(name: String, path: String)], maxAdapters: Int,
        maxQueue: Int = 64, precision: Precision = .fp32, tokenizer: any Tokenizer, baseName: String = "base"
    ) throws {
        guard comm.size == 1 else {
            throw ModelError.invalidParallel(
                "serve runs on one process for now; mpirun comes with the continuous-batching engine")
        }
        guard maxQueue >= 1 else { throw ModelError.invalidConfig("--max-queue must be at least 1 (got \(maxQueue))") }
        guard MultiLoRASet.validName(baseName) else { throw AdapterSetError.badName(baseName) }
        let recording = comm as? RecordingCommunicator ?? RecordingCommunicator(comm)
        self.comm = recording
        let opened = try BaseFiles.open(base)
        try TokenizerChoice.check(tokenizer, fits: opened.config.vocabSize)
        model = try GPTModel(
            config: opened.config, tp: recording, trainable: .multiLoRA(maxAdapters: maxAdapters), training: false,
            precision: precision)
        try model.base.load(from: opened.weights)
        set = model.multiLoRA!
        identity = opened.identity
        self.tokenizer = tokenizer
        self.maxQueue = maxQueue
        self.baseName = baseName
        for a in adapters {
            guard a.name != baseName else { throw AdapterSetError.duplicate(a.name) }
            try set.load(name: a.name, path: a.path, base: identity)
        }
        names = set.names
        updateCollectives()
    }

    public func adapterNames() -> [String] { cond.withLock { names } }

    public func metrics() -> EngineMetrics { cond.withLock { counters } }

    public func submit(_ r: CompletionRequest) throws -> AsyncThrowingStream<GenerationEvent, Error> {
        let ids = tokenizer.encodeStart(r.prompt)
        try Submission.checkPrompt(ids.count, context: model.config.nPositions)
        let (stream, continuation, flag) = Submission.stream()
        try cond.withLock {
            try Submission.checkQueue(r, names: names, stopping: stopping, pending: pending, maxQueue: maxQueue)
            pending += 1
            counters.queueLength = pending
            jobs.append(.generate(r, ids, continuation, flag))
            cond.signal()
        }
        return stream
    }

    public func loadAdapter(name: String, path: String) async throws {
        guard name != baseName else { throw AdapterSetError.duplicate(name) }
        try await control { [set, identity] in try set.load(name: name, path: path, base: identity) }
    }

    public func unloadAdapter(name: String) async throws {
        try await control { [set] in try set.remove(name) }
    }

    /// Runs `body` on the engine's thread between requests.
    private func control(_ body: @escaping () throws -> Void) async throws {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
            cond.withLock {
                guard !stopping else {
                    c.resume(throwing: APIError(503, "the server is shutting down"))
                    return
                }
                jobs.append(.control(body, c))
                cond.signal()
            }
        }
    }

    /// Serves jobs until `stop()` and the queue is empty.
    public func run() {
        while true {
            let job: Job? = cond.withLock {
                while jobs.isEmpty && !stopping { cond.wait() }
                return jobs.isEmpty ? nil : jobs.removeFirst()
            }
            guard let job else { return }
            switch job {
            case .control(let body, let c):
                do {
                    try body()
                    c.resume()
                } catch { c.resume(throwing: error) }
                cond.withLock { names = set.names }
            case .generate(let r, let ids, let out, let flag):
                var failure: Error?
                do { try generate(r, ids, out, flag) } catch { failure = error }
                cond.withLock {
                    pending -= 1
                    counters.queueLength = pending
                }
                updateCollectives()
                // The stream ends once the request has left the queue and the metrics count it.
                if let failure { out.finish(throwing: failure) } else { out.finish() }
            }
        }
    }

    /// Lets `run()` return once the queued jobs are done; refuses new ones.
    public func stop() {
        cond.withLock {
            stopping = true
            cond.signal()  // only run()'s thread waits on it
        }
    }

    private func updateCollectives() {
        let rows = comm.ledger.summary().map { (site: $0.site, op: "\($0.op)", count: $0.count, bytes: $0.bytes) }
        cond.withLock { counters.collectives = rows }
    }

    /// One request, on this thread: the prompt in one pass, then a pass per token; `run()` ends
    /// its stream.
    private func generate(
        _ r: CompletionRequest, _ ids: [Int32], _ out: AsyncThrowingStream<GenerationEvent, Error>.Continuation,
        _ flag: CancelFlag
    ) throws {
        if flag.isCancelled { return }
        if let a = r.adapter, set.adapter(a) == nil {
            throw APIError(404, "the model `\(a)` was unloaded", param: "model", code: "model_not_found")
        }
        try set.assign(.all(r.adapter))
        let m = model
        let context = m.config.nPositions
        let positions = min(context, ids.count + r.maxTokens)
        if acts == nil || acts!.seq < positions {
            acts = nil
            cache = nil
            acts = try m.activations(batch: 1, seq: positions, training: false)
            cache = KVCache(config: m.config, layout: m.layout, batch: 1, capacity: positions)
        }
        let (acts, cache) = (acts!, cache!)
        cache.length = 0
        var decoder = TokenDecoder(r, tokenizer: tokenizer)
        func next(_ pass: ForwardPass) throws -> Int32 {
            if r.temperature == 0 { return try m.argmaxLast(pass)[0] }
            return decoder.sample(try m.lastLogitsShard(pass), vocab: min(m.config.vocabSize, tokenizer.vocabSize))
        }
        var pass = try ids.withUnsafeBufferPointer {
            try m.forward(tokens: $0.baseAddress!, batch: 1, len: ids.count, into: acts, cache: cache)
        }
        count(rows: ids.count)
        var token = try next(pass)
        var reason = FinishReason.length
        while true {
            if flag.isCancelled { break }
            if token == tokenizer.eot {
                reason = .stop
                break
            }
            let (text, stopped) = decoder.add(token)
            out.yield(.token(id: token, text: text))
            if stopped {
                reason = .stop
                break
            }
            if decoder.ids.count >= r.maxTokens || ids.count + decoder.ids.count >= context { break }
            var t = token
            pass = try m.forward(tokens: &t, batch: 1, len: 1, into: acts, pos0: cache.length, cache: cache)
            count(rows: 1)
            token = try next(pass)
        }
        if reason == .length {
            let rest = decoder.rest()
            if !rest.isEmpty { out.yield(.text(rest)) }
        }
        let generated = decoder.ids.count
        cond.withLock {
            counters.promptTokens += ids.count
            counters.generatedTokens += generated
            counters.completionsByAdapter[r.adapter ?? "", default: 0] += 1
        }
        out.yield(.finished(reason, promptTokens: ids.count, completionTokens: generated))
    }

    private func count(rows: Int) { cond.withLock { counters.passesByRows[rows, default: 0] += 1 } }
}
