import Foundation
import LoRADist

/// The continuous-batching engine, on rank 0 (vLLM's scheduler idea on CPU): every step admits
/// waiting requests up to `maxBatch` running sequences and a budget of `tokenBudget` tokens (a
/// long prompt is fed in chunks over several steps), runs ONE forward over all the step's
/// sequences, each on its own KV cache (sized to its prompt and max_tokens within the context),
/// its rows on its adapter (the sequences ordered by adapter, so each adapter is one row group: one
/// GEMM pair per adapter and op), picks each sequence's next token (greedy: the model's argmax, so
/// a completion equals `Generator`'s with its adapter alone; sampling as `TokenDecoder` does),
/// streams it, and retires finished and cancelled sequences, freeing their caches. Loads and
/// unloads run at the start of a step, in its plan. Unloading an adapter that a running or waiting
/// request uses is refused (409) until they finish. Under mpirun the step's plan is broadcast to
/// the other ranks (`StepRunner.exchange`), which run the same step; when idle, rank 0 sends an
/// empty plan every `heartbeat` seconds so the others never wait in a collective for long, and a
/// rank that died is found within the collective timeout. `stop()` lets the requests in flight
/// finish, then the last plan tells every rank to stop.
public final class BatchingEngine: ServeEngine, @unchecked Sendable {
    public let baseName: String
    public let runner: StepRunner
    public let tokenizer: any Tokenizer
    /// Requests waiting or running at most; one more is answered 429.
    public let maxQueue: Int
    /// Seconds between empty plans while idle on several ranks.
    public let heartbeat: Double
    public var model: GPTModel { runner.model }
    /// Why POST /v1/adapters is refused, when the server serves one fixed model (`--merge`, or a
    /// trained file's layers): nil when LoRA adapters load live.
    public let loadsRefused: String?

    private struct Waiting {
        var request: CompletionRequest
        var ids: [Int32]
        var out: AsyncThrowingStream<GenerationEvent, Error>.Continuation
        var flag: CancelFlag
    }

    /// A request admitted: its cache slot, how much of its prompt has been fed, its decoder.
    private final class Running {
        let w: Waiting
        let slot: Int32
        let capacity: Int
        var fed = 0
        var created = false
        var next: Int32?
        var decoder: TokenDecoder
        init(_ w: Waiting, slot: Int32, capacity: Int, tokenizer: any Tokenizer) {
            self.w = w
            self.slot = slot
            self.capacity = capacity
            decoder = TokenDecoder(w.request, tokenizer: tokenizer)
        }
    }

    private let cond = NSCondition()
    // Under `cond`: what other threads hand over and read.
    private var waiting: [Waiting] = []
    private var controls: [(StepPlan.Control, CheckedContinuation<Void, Error>)] = []
    private var pending = 0
    private var stopping = false
    private var names: [String] = []
    private var counters = EngineMetrics()
    // The engine thread's own.
    private var running: [Running] = []
    private var freeSlots: [Int32] = []
    private var slotCount: Int32 = 0
    private var release: [Int32] = []

    public init(
        runner: StepRunner, maxQueue: Int = 64, tokenizer: any Tokenizer, baseName: String = "base",
        heartbeat: Double = 1, loadsRefused: String? = nil
    ) throws {
        guard maxQueue >= 1 else { throw ModelError.invalidConfig("--max-queue must be at least 1 (got \(maxQueue))") }
        guard MultiLoRASet.validName(baseName) else { throw AdapterSetError.badName(baseName) }
        guard !runner.adapterNames.contains(baseName) else { throw AdapterSetError.duplicate(baseName) }
        try TokenizerChoice.check(tokenizer, fits: runner.model.config.vocabSize)
        self.runner = runner
        self.maxQueue = maxQueue
        self.tokenizer = tokenizer
        self.baseName = baseName
        self.heartbeat = heartbeat
        self.loadsRefused =
            loadsRefused
            ?? runner.layers.map {
                "this server runs the trained file \(URL(fileURLWithPath: $0.path).lastPathComponent) on every request "
                    + "as \(baseName); it loads no LoRA adapter"
            }
        names = runner.adapterNames
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
            waiting.append(Waiting(request: r, ids: ids, out: continuation, flag: flag))
            cond.signal()
        }
        return stream
    }

    public func loadAdapter(name: String, path: String) async throws {
        if let why = loadsRefused { throw APIError(400, why, param: "name", code: "adapter_load_refused") }
        guard name != baseName else { throw AdapterSetError.duplicate(name) }
        guard path.utf8.count <= StepPlan.maxPath else {
            throw APIError(400, "an adapter path is at most \(StepPlan.maxPath) bytes", param: "path")
        }
        guard MultiLoRASet.validName(name) else { throw AdapterSetError.badName(name) }
        try await control(.load(name: name, path: path))
    }

    public func unloadAdapter(name: String) async throws {
        try await control(.unload(name: name))
    }

    /// Queues `c` for the start of a step.
    private func control(_ c: StepPlan.Control) async throws {
        try await withCheckedThrowingContinuation { (k: CheckedContinuation<Void, Error>) in
            cond.withLock {
                guard !stopping else {
                    k.resume(throwing: APIError(503, "the server is shutting down"))
                    return
                }
                controls.append((c, k))
                cond.signal()
            }
        }
    }

    /// Lets `run()` return once the requests in flight are done; refuses new ones.
    public func stop() {
        cond.withLock {
            stopping = true
            cond.signal()
        }
    }

    /// Steps until `stop()` and every request is done; then the last plan stops every rank. A
    /// step that fails (a collective timeout, a rank gone) ends every request in flight with its
    /// error and is thrown.
    public func run() throws {
        while true {
            let control = waitForWork()
            var plan = StepPlan()
            plan.control = control?.0
            let step = schedule(&plan)
            plan.stop =
                cond.withLock { stopping && waiting.isEmpty && controls.isEmpty } && running.isEmpty && control == nil
            let outcome: StepRunner.Outcome
            do {
                plan = try runner.exchange(plan)
                outcome = try runner.execute(plan)
            } catch {
                fail(error, control?.1)
                throw error
            }
            let loaded = runner.adapterNames
            cond.withLock { names = loaded }
            if let control {
                if let e = outcome.controlError { control.1.resume(throwing: e) } else { control.1.resume() }
            }
            finishStep(step, outcome, rows: plan.sequences.reduce(0) { $0 + $1.tokens.count })
            if plan.stop { return }
        }
    }

    /// Blocks until there is something to do (on several ranks, at most `heartbeat` seconds) and
    /// takes the next load or unload, refusing at once an unload whose adapter is in use.
    private func waitForWork() -> (StepPlan.Control, CheckedContinuation<Void, Error>)? {
        cond.withLock {
            let deadline = Date(timeIntervalSinceNow: heartbeat)
            while waiting.isEmpty && controls.isEmpty && running.isEmpty && !stopping {
                if runner.comm.size == 1 {
                    cond.wait()
                } else if !cond.wait(until: deadline) {
                    break
                }
            }
            while !controls.isEmpty {
                let c = controls.removeFirst()
                if case .unload(let name) = c.0 {
                    let users =
                        waiting.filter { $0.request.adapter == name }.count
                        + running.filter { $0.w.request.adapter == name }.count
                    if users > 0 {
                        c.1.resume(
                            throwing: APIError(
                                409, "the adapter \(name) is in use by \(users) requests; unload it when they finish",
                                param: "name", code: "adapter_in_use"))
                        continue
                    }
                }
                return c
            }
            return nil
        }
    }

    /// Fills the plan's sequences: retires cancelled requests, then one token for every decoding
    /// sequence, the rest of the budget for prompts in admission order, admitting waiting
    /// requests while there is room; orders them by adapter. Returns the running request of each
    /// planned sequence.
    private func schedule(_ plan: inout StepPlan) -> [Running] {
        for r in running where r.w.flag.isCancelled { retire(r, reason: .length) }
        let context = model.config.nPositions
        var budget = runner.tokenBudget
        var step: [(Running, [Int32])] = []
        for r in running where r.next != nil && budget > 0 {
            step.append((r, [r.next!]))
            budget -= 1
        }
        for r in running where r.fed < r.w.ids.count && budget > 0 {
            let k = min(budget, r.w.ids.count - r.fed)
            step.append((r, Array(r.w.ids[r.fed..<(r.fed + k)])))
            budget -= k
        }
        var gone: [Waiting] = []
        let names = Set(runner.adapterNames)
        cond.withLock {
            while budget > 0 && running.count < runner.maxBatch && !waiting.isEmpty {
                let w = waiting.removeFirst()
                if w.flag.isCancelled || (w.request.adapter.map { !names.contains($0) } ?? false) {
                    gone.append(w)
                    continue
                }
                let slot =
                    freeSlots.popLast()
                    ?? {
                        slotCount += 1
                        return slotCount - 1
                    }()
                let capacity = min(context, w.ids.count + w.request.maxTokens)
                let r = Running(w, slot: slot, capacity: capacity, tokenizer: tokenizer)
                running.append(r)
                let k = min(budget, w.ids.count)
                step.append((r, Array(w.ids[0..<k])))
                budget -= k
            }
        }
        for w in gone {
            if w.flag.isCancelled {
                end(w, error: nil)
            } else {
                end(
                    w,
                    error: APIError(
                        404, "the model `\(w.request.adapter!)` was unloaded", param: "model", code: "model_not_found"))
            }
        }
        // Base first, then adapters by name: each adapter's rows are one group.
        step.sort { ($0.0.w.request.adapter ?? "", $0.0.slot) < ($1.0.w.request.adapter ?? "", $1.0.slot) }
        plan.release = release
        release = []
        plan.sequences = step.map { r, tokens in
            let s = StepPlan.Sequence(
                slot: r.slot, capacity: r.created ? 0 : Int32(r.capacity), adapter: r.w.request.adapter,
                tokens: tokens)
            r.created = true
            return s
        }
        plan.sample = step.contains { $0.0.w.request.temperature > 0 }
        for (r, tokens) in step {
            if r.next != nil { r.next = nil } else { r.fed += tokens.count }
        }
        return step.map(\.0)
    }

    /// Each planned sequence whose prompt is in: its next token, streamed; finished ones retire.
    private func finishStep(_ step: [Running], _ outcome: StepRunner.Outcome, rows: Int) {
        let context = model.config.nPositions
        cond.withLock {
            if !step.isEmpty {
                counters.passesByRows[rows, default: 0] += 1
                counters.batchSizes[step.count, default: 0] += 1
            }
            counters.steps += 1
            names = runner.adapterNames
        }
        for (j, r) in step.enumerated() where r.fed == r.w.ids.count {
            if r.w.flag.isCancelled {
                retire(r, reason: .length)
                continue
            }
            let req = r.w.request
            let token: Int32
            if req.temperature == 0 {
                token = outcome.argmax[j]
            } else {
                let vocab = min(model.config.vocabSize, tokenizer.vocabSize)
                token = outcome.logits[j].withUnsafeBufferPointer { r.decoder.sample($0.baseAddress!, vocab: vocab) }
            }
            if token == tokenizer.eot {
                retire(r, reason: .stop)
                continue
            }
            let (text, stopped) = r.decoder.add(token)
            r.w.out.yield(.token(id: token, text: text))
            if stopped {
                retire(r, reason: .stop)
            } else if r.decoder.ids.count >= req.maxTokens || r.w.ids.count + r.decoder.ids.count >= context {
                retire(r, reason: .length)
            } else {
                r.next = token
            }
        }
        updateCollectives()
    }

    /// Ends `r`: the held-back text, the counts, its cache freed at the next step.
    private func retire(_ r: Running, reason: FinishReason) {
        running.removeAll { $0 === r }
        if r.created {
            release.append(r.slot)
        }
        freeSlots.append(r.slot)
        if reason == .length {
            let rest = r.decoder.rest()
            if !rest.isEmpty { r.w.out.yield(.text(rest)) }
        }
        let generated = r.decoder.ids.count
        cond.withLock {
            counters.promptTokens += r.w.ids.count
            counters.generatedTokens += generated
            counters.completionsByAdapter[r.w.request.adapter ?? "", default: 0] += 1
        }
        r.w.out.yield(.finished(reason, promptTokens: r.w.ids.count, completionTokens: generated))
        end(r.w, error: nil)
    }

    /// The request leaves the queue, then its stream ends.
    private func end(_ w: Waiting, error: Error?) {
        cond.withLock {
            pending -= 1
            counters.queueLength = pending
        }
        if let error { w.out.finish(throwing: error) } else { w.out.finish() }
    }

    /// A failed step: every request in flight and every queued control ends with `error`.
    private func fail(_ error: Error, _ control: CheckedContinuation<Void, Error>?) {
        control?.resume(throwing: error)
        for r in running { end(r.w, error: error) }
        running = []
        let (ws, cs) = cond.withLock {
            stopping = true
            defer {
                waiting = []
                controls = []
            }
            return (waiting, controls)
        }
        for w in ws { end(w, error: error) }
        for c in cs { c.1.resume(throwing: error) }
    }

    private func updateCollectives() {
        let rows = runner.comm.ledger.summary().map {
            (site: $0.site, op: "\($0.op)", count: $0.count, bytes: $0.bytes)
        }
        cond.withLock { counters.collectives = rows }
    }
}
