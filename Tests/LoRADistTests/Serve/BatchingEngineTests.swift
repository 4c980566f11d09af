import Foundation
import XCTest

@testable import LoRADist
@testable import LoRADistServe

/// The continuous-batching engine in process (rank 0's scheduler with the other ranks following
/// its broadcast plans, TP 1, 2 and 4 on the in-process communicator): requests on two adapters
/// of different ranks and targets and the bare base, more than fit one step (they join as others
/// finish, long prompts fed in chunks), each give `Generator`'s greedy tokens with that adapter
/// alone (the model `generate` builds), GPT-2 and the Llama family; the ledger holds the bare
/// base's per-step collectives for each step with work plus one plan broadcast per step; sampling
/// is the same at every TP degree; an unload of an adapter in use is refused, a live load is used.
final class BatchingEngineTests: XCTestCase {
    static let dir = makeTempDir("batching-engine")

    static func config(_ family: ModelFamily) -> GPTConfig {
        family == .gpt2
            ? GPTConfig(nLayer: 2, nEmbd: 32, nHead: 4, vocabSize: 257, nPositions: 48)
            : GPTConfig.llama(nLayer: 2, nEmbd: 32, nHead: 4, nKVHead: 2, ffn: 64, vocabSize: 257, nPositions: 48)
    }

    static func identity(_ family: ModelFamily) -> BaseIdentity {
        BaseIdentity(config: config(family), fingerprint: "random-8", source: "random init")
    }

    static func path(_ name: String, _ family: ModelFamily) -> String { dir + "/\(family)-\(name).safetensors" }

    /// Adapters A (rank 3, every target) and B (rank 6, some targets) of `family`, written once.
    static func writeAdapters(_ family: ModelFamily) throws {
        let targets: [LoRATarget] = family == .gpt2 ? [.q, .v, .mlpOut] : [.k, .o, .up, .down]
        let configs = [
            ("A", LoRAConfig(rank: 3, alpha: 12, targets: LoRATarget.available(in: family)), 3),
            ("B", LoRAConfig(rank: 6, alpha: 24, targets: targets), 4)
        ]
        for (name, lora, seed) in configs where !FileManager.default.fileExists(atPath: path(name, family)) {
            let w = LoRAWeights(config: lora, model: config(family))
            Fixtures.initLoRA(w, seed: UInt64(seed), nonZeroB: 1.5, bSeed: UInt64(seed + 10))
            try AdapterFile.save(w, base: identity(family), to: path(name, family))
        }
    }

    /// Requests: (adapter, prompt, max_tokens), prompts of 2 to 17 bytes.
    static let requests: [(String?, String, Int)] = [
        ("A", "hello", 6), ("B", "a longer prompt here", 5), (nil, "xy", 7), ("B", "zz top", 4),
        ("A", "the quick brown f", 8), (nil, "base two", 3), ("A", "q", 5)
    ]

    static func request(_ r: (String?, String, Int), temperature: Double = 0, seed: UInt64 = 0) -> CompletionRequest {
        CompletionRequest(
            adapter: r.0, model: r.0 ?? "base", prompt: r.1, maxTokens: r.2, temperature: temperature, seed: seed)
    }

    /// The events of a finished stream.
    static func drain(_ s: AsyncThrowingStream<GenerationEvent, Error>) -> Result<[GenerationEvent], Error> {
        let box = ServeHTTPTests.Events()
        let done = DispatchSemaphore(value: 0)
        let failure = ServeHTTPTests.Events()
        Task {
            do { for try await e in s { box.append(e) } } catch { failure.append(.text("\(error)")) }
            done.signal()
        }
        done.wait()
        if let f = failure.all.first { return .failure(APIError(500, "\(f)")) }
        return .success(box.all)
    }

    /// Ends a stream's reader at once (what a client that disconnects does); true once it ended,
    /// within 30 seconds.
    static func abandon(_ s: AsyncThrowingStream<GenerationEvent, Error>) -> Bool {
        let reader = Task { for try await _ in s {} }
        reader.cancel()
        let done = DispatchSemaphore(value: 0)
        Task {
            _ = await reader.result
            done.signal()
        }
        return done.wait(timeout: .now() + 30) == .success
    }

    static func tokens(_ events: [GenerationEvent]) -> [Int32] {
        events.compactMap { if case .token(let id, _) = $0 { return id } else { return nil } }
    }

    struct Served {
        var tokens: [[Int32]]
        var metrics: EngineMetrics
        var ledger: [Ledger.Row]
        var reference: [[Int32]]
    }

    /// Runs `requests` through an engine on `tp` ranks (all queued before the first step, so the
    /// schedule depends on nothing but the limits) and, on every rank, `Generator` on the model
    /// `generate` builds for each request's adapter alone.
    static func serve(
        _ family: ModelFamily, tp: Int, requests: [CompletionRequest], maxBatch: Int = 3, tokenBudget: Int = 8,
        reference: Bool = true, precision: Precision = .fp32
    ) throws -> Served {
        try writeAdapters(family)
        let base = BaseSpec.random(config(family), seed: 8)
        let out = try InProcessCommunicator.run(ranks: tp) { raw -> Served? in
            let comm = RecordingCommunicator(raw)
            let runner = try StepRunner(
                comm: comm, base: base, adapters: [("A", path("A", family)), ("B", path("B", family))],
                maxAdapters: 4, maxBatch: maxBatch, tokenBudget: tokenBudget, precision: precision)
            comm.ledger.reset()
            var served: Served?
            if comm.rank == 0 {
                let engine = try BatchingEngine(runner: runner, tokenizer: ByteTokenizer(), heartbeat: 0.2)
                let streams = try requests.map { try engine.submit($0) }
                engine.stop()
                try engine.run()
                let tokens = try streams.map { Self.tokens(try Self.drain($0).get()) }
                served = Served(tokens: tokens, metrics: engine.metrics(), ledger: comm.ledger.summary(), reference: [])
            } else {
                try runner.follow()
            }
            guard reference else { return served }
            var ref: [[Int32]] = []
            for r in requests {
                let m = try GPTModel.forDecoding(
                    base, adapter: r.adapter.map { path($0, family) }, tp: raw, precision: precision)
                let ids = ByteTokenizer().encodeStart(r.prompt)
                ref.append(try Generator(m).greedy(prompt: ids, maxNew: r.maxTokens, stop: ByteTokenizer().eot))
            }
            served?.reference = ref
            return served ?? Served(tokens: [], metrics: EngineMetrics(), ledger: [], reference: ref)
        }
        var first = out[0]!
        for (r, o) in out.enumerated() where r > 0 && reference {
            XCTAssertEqual(o?.reference, first.reference, "rank \(r)'s Generator agrees with rank 0's")
        }
        first.ledger = first.ledger.map {
            var row = $0
            row.seconds = 0
            return row
        }
        return first
    }

    func checkGreedy(_ family: ModelFamily) throws {
        let requests = Self.requests.map { Self.request($0) }
        var byTP: [Int: [[Int32]]] = [:]
        for tp in [1, 2, 4] {
            let s = try Self.serve(family, tp: tp, requests: requests)
            for (i, r) in requests.enumerated() {
                XCTAssertEqual(
                    s.tokens[i], s.reference[i], "\(family) tp \(tp) request \(i) (\(r.adapter ?? "base")) vs generate")
                XCTAssertFalse(s.tokens[i].isEmpty)
            }
            // More requests than --max-batch: several steps ran at once, and some with a full batch.
            XCTAssertEqual(s.metrics.batchSizes.keys.max(), 3, "\(family) tp \(tp) \(s.metrics.batchSizes)")
            XCTAssertEqual(s.metrics.completionsByAdapter, ["A": 3, "B": 2, "": 2])
            XCTAssertEqual(s.metrics.queueLength, 0)
            byTP[tp] = s.tokens
        }
        // The adapters change the tokens (the same prompt on A, and alone).
        let alone = try Self.serve(
            family, tp: 1, requests: [Self.request(("A", "xy", 7)), Self.request((nil, "xy", 7))], reference: false)
        XCTAssertNotEqual(alone.tokens[0], alone.tokens[1], "\(family): adapter A must change the greedy tokens")
        XCTAssertEqual(byTP[2], byTP[1])
        XCTAssertEqual(byTP[4], byTP[1])
    }

    func testMixedAdaptersEqualGenerateAloneGPT2() throws { try checkGreedy(.gpt2) }

    func testMixedAdaptersEqualGenerateAloneLlama() throws { try checkGreedy(.llama) }

    /// The ledger of one step of the bare base (the random base of `cfg`, no adapter loaded) on
    /// `tp` ranks, as its own engine runs it.
    static func bareBaseStep(_ cfg: GPTConfig, tp: Int) throws -> [Ledger.Row] {
        try InProcessCommunicator.run(ranks: tp) { raw -> [Ledger.Row] in
            let comm = RecordingCommunicator(raw)
            let runner = try StepRunner(
                comm: comm, base: .random(cfg, seed: 8), adapters: [], maxAdapters: 4, maxBatch: 3, tokenBudget: 8)
            var plan = StepPlan()
            plan.sequences = [StepPlan.Sequence(slot: 0, capacity: 8, adapter: nil, tokens: [1, 2, 3])]
            comm.ledger.reset()
            _ = try runner.execute(plan)
            return comm.ledger.summary()
        }[0]
    }

    /// Per step with work, the ledger holds the bare base's forward and argmax collectives (one
    /// step on the base alone, with no adapter loaded, counted by site), and one plan broadcast per
    /// step at `serve-plan`, idle steps included; adapters add nothing.
    func testLedgerIsTheBaseStepsPlusOnePlanPerStep() throws {
        for family in [ModelFamily.gpt2, .llama] {
            for tp in [2, 4] {
                let mixed = try Self.serve(
                    family, tp: tp, requests: Self.requests.map { Self.request($0) }, reference: false)
                let base = try Self.bareBaseStep(Self.config(family), tp: tp)
                let label = "\(family) tp \(tp)"
                let work = mixed.metrics.batchSizes.values.reduce(0, +)
                let steps = mixed.metrics.steps
                XCTAssertGreaterThan(work, 4, label)
                var expected: [String: Int] = [:]
                for row in base { expected[row.site, default: 0] += row.count * work }
                expected["serve-plan"] = steps
                var got: [String: Int] = [:]
                for row in mixed.ledger { got[row.site, default: 0] += row.count }
                XCTAssertEqual(got, expected, label)
                XCTAssertEqual(Set(base.map(\.site)), ["embedding", "attn-out", "mlp-out", "argmax"], label)
                // The activations' bytes follow the rows: 4·d per row and block at attn-out.
                let rows = mixed.metrics.passesByRows.reduce(0) { $0 + $1.key * $1.value }
                let attn = mixed.ledger.filter { $0.site == "attn-out" }.reduce(0) { $0 + $1.bytes }
                XCTAssertEqual(attn, rows * 4 * Self.config(family).nEmbd * Self.config(family).nLayer, label)
                let plans = mixed.ledger.filter { $0.site == "serve-plan" }
                XCTAssertTrue(plans.allSatisfy { $0.op == .broadcast }, "\(plans) \(label)")
            }
        }
    }

    /// Sampled completions (temperature, top_p, seed) are the same at TP 1 and 2: the ranks' logit
    /// shards are gathered for rank 0's draw; greedy requests in the same steps are unchanged.
    func testSamplingIsTheSameAtEveryDegree() throws {
        let requests = [
            Self.request(("A", "hello", 6), temperature: 0.8, seed: 5),
            Self.request(("B", "a longer prompt here", 5)),
            Self.request((nil, "xy", 7), temperature: 1.3, seed: 9)
        ]
        let one = try Self.serve(.gpt2, tp: 1, requests: requests)
        let two = try Self.serve(.gpt2, tp: 2, requests: requests)
        XCTAssertEqual(one.tokens, two.tokens)
        XCTAssertEqual(one.tokens[1], one.reference[1], "a greedy request among sampled ones")
        XCTAssertNotEqual(one.tokens[0], one.reference[0], "sampling at 0.8 differs from greedy here")
    }

    /// A live engine on 2 ranks: an adapter loaded while serving is used (its tokens are
    /// `generate`'s with it alone); unloading one that a request uses is refused (409) until it
    /// is done, then succeeds, and a request naming it is refused (404); a bad load (another base)
    /// is refused on every rank and the set stays the same.
    func testLiveLoadAndUnload() throws {
        try Self.writeAdapters(.gpt2)
        let base = BaseSpec.random(Self.config(.gpt2), seed: 8)
        let ready = DispatchSemaphore(value: 0)
        let box = EngineBox()
        let ranks = Thread {
            box.result = Result(catching: {
                try InProcessCommunicator.run(ranks: 2) { comm -> [String] in
                    let runner = try StepRunner(
                        comm: comm, base: base, adapters: [("A", Self.path("A", .gpt2))], maxAdapters: 3, maxBatch: 3,
                        tokenBudget: 8)
                    if comm.rank == 0 {
                        box.engine = try BatchingEngine(runner: runner, tokenizer: ByteTokenizer(), heartbeat: 0.1)
                        ready.signal()
                        try box.engine!.run()
                    } else {
                        try runner.follow()
                    }
                    return runner.adapterNames
                }
            })
            box.done.signal()
        }
        ranks.stackSize = 64 << 20
        ranks.start()
        XCTAssertEqual(ready.wait(timeout: .now() + 120), .success)
        let engine = try XCTUnwrap(box.engine)
        func sync(_ body: @escaping @Sendable () async throws -> Void) -> Error? {
            let done = DispatchSemaphore(value: 0)
            let failure = ErrorBox()
            Task {
                do { try await body() } catch { failure.error = error }
                done.signal()
            }
            done.wait()
            return failure.error
        }
        // Load B live and use it.
        XCTAssertNil(sync { try await engine.loadAdapter(name: "B", path: Self.path("B", .gpt2)) })
        XCTAssertEqual(engine.adapterNames(), ["A", "B"])
        let viaB = try Self.tokens(Self.drain(try engine.submit(Self.request(("B", "hello", 6)))).get())
        // A long request on B, then its unload: refused while it waits or runs.
        let long = try engine.submit(Self.request(("B", "zz", 30)))
        let refused = sync { try await engine.unloadAdapter(name: "B") }
        XCTAssertEqual((refused as? APIError)?.status, 409, "\(String(describing: refused))")
        XCTAssertEqual(Self.tokens(try Self.drain(long).get()).count, 30)
        XCTAssertNil(sync { try await engine.unloadAdapter(name: "B") })
        XCTAssertEqual(engine.adapterNames(), ["A"])
        XCTAssertThrowsError(try engine.submit(Self.request(("B", "hello", 6)))) {
            XCTAssertEqual(($0 as? APIError)?.status, 404)
        }
        // Another base's adapter: refused on every rank, nothing loaded.
        var other = Self.identity(.gpt2)
        other.fingerprint = "random-9"
        let w = LoRAWeights(config: LoRAConfig(rank: 2, alpha: 4, targets: [.q]), model: Self.config(.gpt2))
        try AdapterFile.save(w, base: other, to: Self.dir + "/other.safetensors")
        let bad = sync { try await engine.loadAdapter(name: "C", path: Self.dir + "/other.safetensors") }
        XCTAssertNotNil(bad)
        XCTAssertEqual(engine.adapterNames(), ["A"])
        engine.stop()
        XCTAssertEqual(box.done.wait(timeout: .now() + 120), .success)
        let names = try XCTUnwrap(box.result).get()
        XCTAssertEqual(names, [["A"], ["A"]], "every rank holds the same set")
        // B's tokens are generate's with B alone.
        let ref = try InProcessCommunicator.run(ranks: 1) { comm in
            let m = try GPTModel.forDecoding(base, adapter: Self.path("B", .gpt2), tp: comm, precision: .fp32)
            return try Generator(m).greedy(
                prompt: ByteTokenizer().encodeStart("hello"), maxNew: 6, stop: ByteTokenizer().eot)
        }[0]
        XCTAssertEqual(viaB, ref)
        XCTAssertGreaterThan(engine.metrics().steps, 5)
    }

    /// Adapters given at start past the memory budget: every rank refuses them with the budget's
    /// message (the load is agreed); the budget exactly (A's and B's 13 824 bytes each) serves.
    func testAdaptersPastTheMemoryBudgetAreRefusedAtStartOnEveryRank() throws {
        try Self.writeAdapters(.gpt2)
        let adapters = [("A", Self.path("A", .gpt2)), ("B", Self.path("B", .gpt2))]
        for budget in [2 * 13_824, 2 * 13_824 - 1] {
            let out = try InProcessCommunicator.run(ranks: 2) { comm -> String in
                do {
                    let runner = try StepRunner(
                        comm: comm, base: .random(Self.config(.gpt2), seed: 8), adapters: adapters, maxAdapters: 4,
                        maxBatch: 2, tokenBudget: 8, adapterMemory: budget)
                    return "loaded \(runner.set!.loadedBytes)"
                } catch { return "\(error)" }
            }
            for (rank, o) in out.enumerated() {
                if budget == 2 * 13_824 {
                    XCTAssertEqual(o, "loaded 27648", "rank \(rank)")
                } else {
                    XCTAssertTrue(o.contains("adapter B takes 13824 bytes"), "rank \(rank): \(o)")
                    XCTAssertTrue(o.contains("--adapter-memory"), "rank \(rank): \(o)")
                }
            }
        }
    }

    final class EngineBox: @unchecked Sendable {
        var engine: BatchingEngine?
        var result: Result<[[String]], Error>?
        let done = DispatchSemaphore(value: 0)
    }

    final class ErrorBox: @unchecked Sendable {
        var error: Error?
    }

    /// A request whose stream ends before it runs (a client gone) generates nothing; the others
    /// in the same steps are unchanged (`generate`'s tokens).
    func testEndingAStreamCancelsItsRequest() throws {
        try Self.writeAdapters(.gpt2)
        let res = try InProcessCommunicator.run(ranks: 2) { comm -> ([Int32], EngineMetrics)? in
            let runner = try StepRunner(
                comm: comm, base: .random(Self.config(.gpt2), seed: 8), adapters: [("A", Self.path("A", .gpt2))],
                maxAdapters: 2, maxBatch: 3, tokenBudget: 8)
            guard comm.rank == 0 else {
                try runner.follow()
                return nil
            }
            let engine = try BatchingEngine(runner: runner, tokenizer: ByteTokenizer(), heartbeat: 0.1)
            let dropped = try engine.submit(Self.request(("A", "hello", 20)))
            let kept = try engine.submit(Self.request(("A", "xy", 7)))
            XCTAssertTrue(Self.abandon(dropped), "the reader ended")
            engine.stop()
            try engine.run()
            return (Self.tokens(try Self.drain(kept).get()), engine.metrics())
        }
        let (tokens, metrics) = try XCTUnwrap(res[0])
        let ref = try InProcessCommunicator.run(ranks: 1) { comm in
            let m = try GPTModel.forDecoding(
                .random(Self.config(.gpt2), seed: 8), adapter: Self.path("A", .gpt2), tp: comm, precision: .fp32)
            return try Generator(m).greedy(
                prompt: ByteTokenizer().encodeStart("xy"), maxNew: 7, stop: ByteTokenizer.eot)
        }[0]
        XCTAssertEqual(tokens, ref)
        XCTAssertEqual(metrics.generatedTokens, tokens.count, "the cancelled request generated nothing")
        XCTAssertEqual(metrics.completionsByAdapter, ["A": 1])
        XCTAssertEqual(metrics.queueLength, 0)
    }

    /// Plans survive their frame: every field, and a frame too small is refused.
    func testPlanFrameRoundTrip() throws {
        var plan = StepPlan()
        plan.stop = true
        plan.sample = true
        plan.control = .load(name: "x-1", path: "/tmp/é/adapter.safetensors")
        plan.release = [3, 9]
        plan.sequences = [
            .init(slot: 0, capacity: 12, adapter: nil, tokens: [1, 2, 3]),
            .init(slot: 7, adapter: "B", tokens: [-5, 256])
        ]
        let bytes = StepPlan.frameBytes(maxBatch: 2, tokenBudget: 8)
        let frame = try plan.encoded(bytes: bytes)
        XCTAssertEqual(frame.count, bytes)
        XCTAssertEqual(try StepPlan(frame: frame), plan)
        plan.control = .unload(name: "B")
        XCTAssertEqual(try StepPlan(frame: try plan.encoded(bytes: bytes)), plan)
        XCTAssertEqual(try StepPlan(frame: try StepPlan().encoded(bytes: bytes)), StepPlan())
        XCTAssertThrowsError(try plan.encoded(bytes: 20))
    }
}

/// The engine under bf16, its own class so that the suite's second pass with oneDNN capped at AVX2
/// runs it (launch/test): each machine's own bf16 path, and the widened AVX2 one.
final class BF16ServeTests: XCTestCase {
    /// Under bf16 (the base's GEMM weights and inputs in bf16, on this CPU's bf16 path), mixed
    /// batches still give `generate`'s tokens with each adapter alone (its model in bf16 too), at
    /// TP 1 and 2, GPT-2 and the Llama family; and bf16 changes some tokens against fp32.
    func testBF16MixedAdaptersEqualGenerateAlone() throws {
        let requests = BatchingEngineTests.requests.map { BatchingEngineTests.request($0) }
        for family in [ModelFamily.gpt2, .llama] {
            for tp in [1, 2] {
                let s = try BatchingEngineTests.serve(family, tp: tp, requests: requests, precision: .bf16)
                XCTAssertEqual(s.tokens, s.reference, "\(family) bf16 tp \(tp)")
                XCTAssertTrue(s.tokens.allSatisfy { !$0.isEmpty })
                let fp32 = try BatchingEngineTests.serve(family, tp: tp, requests: requests, reference: false)
                XCTAssertNotEqual(s.tokens, fp32.tokens, "\(family) tp \(tp): bf16 must change some tokens")
            }
        }
    }
}
