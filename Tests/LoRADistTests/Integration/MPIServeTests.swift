import Foundation
import XCTest

@testable import LoRADist
@testable import LoRADistServe

/// `lora-dist serve` under real mpirun (2 and 4 ranks) driven by curl on loopback. At 2 ranks, on a
/// small random GPT-2 with a long context (one server start): concurrent greedy requests on two
/// adapters and the base, in mixed batches, each equal `generate`'s decoding (`Generator` on the
/// model `generate` builds) with that adapter alone; an adapter loaded live is used and deleted;
/// every error case answers its status and OpenAI's JSON body, after each of which a greedy
/// completion is still the reference's; loads past `--adapter-memory` and `--max-adapters` are
/// refused; while long streamed requests fill the queue, one more is answered 429 and a DELETE of
/// their adapter 409; their clients then disconnect mid-stream and the server cancels them;
/// /metrics counts every request the test sent and shows one plan broadcast per step; SIGTERM to
/// rank 0 drains and every rank exits 0. At 4 ranks, on the built-in base: an adapter trained by
/// `train` and a random one serve concurrent greedy requests equal to `lora-dist generate
/// --adapter`'s, token for token.
final class MPIServeTests: XCTestCase {
    static let dir = makeTempDir("mpi-serve")
    /// A long context: a long streamed request keeps the server busy for thousands of steps.
    static let cfg = GPTConfig(nLayer: 2, nEmbd: 32, nHead: 4, vocabSize: 257, nPositions: 2048)
    static let identity = BaseIdentity(config: cfg, fingerprint: "random-8", source: "random init")
    static let baseArgs = [
        "--layers", "2", "--dim", "32", "--heads", "4", "--context", "2048", "--vocab", "257", "--init-seed", "8"
    ]
    /// A tiny adapter: rank 1 on q alone, 1·(32 + 32) per layer, 2 layers of fp32.
    static let loraT = LoRAConfig(rank: 1, alpha: 2, targets: [.q])
    /// Bytes of A's and B's weights (rank 3 on every target: 3·(4·64 + 2·160) per layer; rank 6 on
    /// q, v and mlp_out: 6·(64 + 64 + 160) per layer; 2 layers of fp32) and of T's.
    static let bytesA = 4 * 2 * 3 * (4 * 64 + 2 * 160), bytesB = 4 * 2 * 6 * (64 + 64 + 160), bytesT = 4 * 2 * 64
    /// The budget of the 2-rank server: A, B and T exactly, in MiB.
    static var memoryMiB: String { String(Double(bytesA + bytesB + bytesT) / 1_048_576) }

    static func path(_ name: String) -> String { dir + "/\(name).safetensors" }

    override class func setUp() {
        super.setUp()
        let adapters = [("A", ServeHTTPTests.loraA, 3), ("B", ServeHTTPTests.loraB, 4), ("T", loraT, 5)]
        for (name, config, seed) in adapters {
            let w = LoRAWeights(config: config, model: cfg)
            Fixtures.initLoRA(w, seed: UInt64(seed), nonZeroB: 1.5, bSeed: UInt64(seed + 10))
            try? AdapterFile.save(w, base: identity, to: path(name))
            if name == "A" {
                var other = identity
                other.fingerprint = "random-9"
                try? AdapterFile.save(w, base: other, to: path("other-base"))
                w.ptr(w.slots[2].b)[1] = .nan
                try? AdapterFile.save(w, base: identity, to: path("nan"))
            }
        }
    }

    override class func tearDown() {
        try? FileManager.default.removeItem(atPath: dir)
        super.tearDown()
    }

    /// `generate`'s greedy tokens with adapter `name` alone (nil: the base).
    static func reference(_ name: String?, _ prompt: String, _ maxNew: Int) throws -> [Int32] {
        try InProcessCommunicator.run(ranks: 1) { comm in
            let m = try GPTModel.forDecoding(
                .random(cfg, seed: 8), adapter: name.map(path), tp: comm, precision: .fp32)
            let tok = ByteTokenizer()
            return try Generator(m).greedy(prompt: tok.encodeStart(prompt), maxNew: maxNew, stop: tok.eot)
        }[0]
    }

    /// Starts the server on `n` ranks with `args`; its launch and port.
    func start(_ n: Int, _ args: [String]) throws -> (BackgroundLaunch, Int) {
        let launch = try BackgroundLaunch.mpirun(
            n, ["serve"] + args + ["--port", "0", "--max-batch", "3", "--collective-timeout", "30"])
        var port = 0
        let up = launch.wait(timeout: 120) {
            port = ServeHTTPTests.listeningPort(launch.output) ?? 0
            return port > 0
        }
        if !up { Launcher.killTree(launch.pid) }
        XCTAssertTrue(up, "the server starts: \(launch.output)")
        return (launch, port)
    }

    /// The 2-rank server: the random base, A loaded, a queue of 7, 3 adapters and A + B + T's bytes
    /// at most.
    func start2() throws -> (BackgroundLaunch, Int) {
        try start(
            2,
            Self.baseArgs + [
                "--adapter", "A=\(Self.path("A"))", "--max-batch-tokens", "8", "--max-queue", "7", "--max-adapters",
                "3", "--adapter-memory", Self.memoryMiB
            ])
    }

    /// A rank process's world rank, from its environment.
    static func worldRank(_ pid: Int32) -> Int? {
        let env = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ"))) ?? Data()
        let key = "OMPI_COMM_WORLD_RANK="
        return env.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }.first { $0.hasPrefix(key) }
            .flatMap { Int($0.dropFirst(key.count)) }
    }

    /// SIGTERM to rank 0's process: every rank exits 0.
    func stop(_ launch: BackgroundLaunch, ranks n: Int) {
        let pids = Launcher.ranks(below: launch.pid)
        XCTAssertEqual(pids.count, n, "rank processes: \(pids)")
        let rank0 = pids.first { Self.worldRank($0) == 0 }
        guard let rank0 else {
            Launcher.killTree(launch.pid)
            return XCTFail("no rank 0 among \(pids)")
        }
        kill(rank0, SIGTERM)
        let r = launch.finish(timeout: 60, since: Date())
        XCTAssertFalse(r.timedOut, r.output)
        XCTAssertEqual(r.status, 0, "every rank exits 0 after SIGTERM: \(r.output)")
    }

    /// Concurrent greedy requests (one curl each): their responses.
    func concurrent(_ port: Int, _ requests: [(String, String, Int)]) throws -> [ServeHTTPTests.HTTPResult] {
        let results = ServeResults(requests.count)
        DispatchQueue.concurrentPerform(iterations: requests.count) { i in
            let (model, prompt, n) = requests[i]
            let body = try! JSONSerialization.data(withJSONObject: [
                "model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, "return_token_ids": true
            ])
            let r = try? ServeHTTPTests.http(
                "POST", "/v1/completions", String(decoding: body, as: UTF8.self), port: port)
            results.set(i, r)
        }
        return try requests.indices.map { i in
            let r = try XCTUnwrap(results.get(i), "request \(i) answered")
            XCTAssertEqual(r.status, 200, r.body)
            return r
        }
    }

    static let mixed: [(String, String, Int)] = [
        ("A", "name=Blue", 6), ("base", "hello there", 5), ("A", "xy", 7), ("base", "q", 4), ("A", "spice|food", 5)
    ]

    /// The requests the test sent, by the path /metrics counts them under and the status answered.
    final class Tally {
        var counts: [String: Int] = [:]
        func add(_ path: String, _ status: Int, _ n: Int = 1) { counts["\(path) \(status)", default: 0] += n }
    }

    /// One request by curl, counted in `tally`.
    static func send(
        _ tally: Tally, _ method: String, _ path: String, _ body: String? = nil, port: Int
    ) throws -> ServeHTTPTests.HTTPResult {
        let r = try ServeHTTPTests.http(method, path, body, port: port)
        let known = ["/health", "/metrics", "/v1/models", "/v1/completions", "/v1/adapters"]
        tally.add(
            known.contains(path) ? path : path.hasPrefix("/v1/adapters/") ? "/v1/adapters/:name" : "other", r.status)
        return r
    }

    /// The count /metrics gives a sample (0 when absent).
    static func sample(_ metrics: String, _ name: String) -> Int {
        metrics.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Int($0.split(separator: " ")[1]) }
            ?? 0
    }

    func testServeUnderMpirun2MixedAdaptersLiveLoadEveryErrorAndSIGTERM() throws {
        // An adapter and prompt the random base does not end early within the long requests'
        // max_tokens (most greedy continuations of a random model end in a cycle): A on "p30" is the
        // first of the candidates that does, tried first so that the search (7 s) ends at once.
        let long = 2000
        let candidates = [("A", "p30")] + ["A", "B"].flatMap { a in (0..<40).map { (a, "p\($0)") } }
        let found = try candidates.first { try Self.reference($0.0, $0.1, long).count == long }
        let held = try XCTUnwrap(found, "a prompt that runs \(long) tokens")
        print("held requests: adapter \(held.0), prompt \(held.1)")
        let (launch, port) = try start2()
        guard port > 0 else { return }
        defer { if launch.process.isRunning { Launcher.killTree(launch.pid) } }
        let tally = Tally()
        func send(_ method: String, _ path: String, _ body: String? = nil) throws -> ServeHTTPTests.HTTPResult {
            try Self.send(tally, method, path, body, port: port)
        }
        // Load B live; it is listed.
        let load = try send("POST", "/v1/adapters", #"{"name": "B", "path": "\#(Self.path("B"))"}"#)
        XCTAssertEqual(load.status, 201, load.body)
        let models = try send("GET", "/v1/models")
        XCTAssertTrue(models.body.contains(#""B""#), models.body)
        // Mixed-adapter concurrent requests.
        let requests = Self.mixed + [("B", "name=Blue", 6), ("B", "zz top", 5)]
        let got = try concurrent(port, requests).map(ServeHTTPTests.ids)
        tally.add("/v1/completions", 200, requests.count)
        for (i, r) in requests.enumerated() {
            XCTAssertEqual(got[i], try Self.reference(r.0 == "base" ? nil : r.0, r.1, r.2), "\(r)")
        }
        XCTAssertNotEqual(got[0], got[5], "A and B differ on one prompt")
        // Every error: its status and OpenAI's body; then a greedy completion is still right.
        let check = try Self.reference("A", "name=Blue", 4)
        var completions = requests.count
        func stillRight(_ label: String) throws {
            let r = try send(
                "POST", "/v1/completions",
                #"{"model": "A", "prompt": "name=Blue", "max_tokens": 4, "temperature": 0, "return_token_ids": true}"#)
            XCTAssertEqual(ServeHTTPTests.ids(r), check, "the server still answers right after \(label)")
            completions += 1
        }
        let tooLong = String(repeating: "x", count: Self.cfg.nPositions)
        let cases: [(String, String, String, Int, String?)] = [
            ("POST", "/v1/completions", "{\"model\": ", 400, nil),
            ("POST", "/v1/completions", #"{"prompt": "x"}"#, 400, "model"),
            ("POST", "/v1/completions", #"{"model": "A"}"#, 400, "prompt"),
            ("POST", "/v1/completions", #"{"model": "A", "prompt": "x", "max_tokens": 0}"#, 400, "max_tokens"),
            ("POST", "/v1/completions", #"{"model": "A", "prompt": "x", "temperature": 3}"#, 400, "temperature"),
            ("POST", "/v1/completions", #"{"model": "A", "prompt": "x", "max_tokens": "many"}"#, 400, nil),
            ("POST", "/v1/completions", #"{"model": "Z", "prompt": "x"}"#, 404, "model"),
            ("POST", "/v1/completions", #"{"model": "A", "prompt": "\#(tooLong)"}"#, 400, "prompt"),
            ("GET", "/v1/nothing", "", 404, nil),
            ("POST", "/v1/adapters", #"{"name": "O", "path": "\#(Self.path("other-base"))"}"#, 422, "path"),
            ("POST", "/v1/adapters", #"{"name": "N", "path": "\#(Self.path("nan"))"}"#, 422, "path"),
            ("POST", "/v1/adapters", #"{"name": "M", "path": "\#(Self.dir)/missing"}"#, 404, "path"),
            ("POST", "/v1/adapters", #"{"name": "A", "path": "\#(Self.path("B"))"}"#, 409, "name"),
            ("POST", "/v1/adapters", #"{"name": "bad name", "path": "\#(Self.path("A"))"}"#, 400, "name"),
            ("POST", "/v1/adapters", #"{"path": "x"}"#, 400, nil),
            // A and B loaded: a third of A's size passes the memory budget; T (its last bytes) fits.
            ("POST", "/v1/adapters", #"{"name": "C", "path": "\#(Self.path("A"))"}"#, 422, nil),
            ("POST", "/v1/adapters", #"{"name": "T", "path": "\#(Self.path("T"))"}"#, 201, nil),
            // Three loaded: --max-adapters 3.
            ("POST", "/v1/adapters", #"{"name": "U", "path": "\#(Self.path("T"))"}"#, 422, nil),
            ("DELETE", "/v1/adapters/T", "", 200, nil),
            ("DELETE", "/v1/adapters/Z", "", 404, "name")
        ]
        var codes: [String] = []
        for (method, path, body, status, param) in cases {
            let r = try send(method, path, body.isEmpty ? nil : body)
            let label = "\(method) \(path) \(body.prefix(80))"
            XCTAssertEqual(r.status, status, "\(label): \(r.body.prefix(300))")
            if status >= 400 {
                let error = r.json["error"] as? [String: Any]
                XCTAssertNotNil(error, "\(label): an OpenAI error body, got \(r.body.prefix(300))")
                XCTAssertFalse((error?["message"] as? String ?? "").isEmpty, label)
                XCTAssertEqual(error?["type"] as? String, "invalid_request_error", label)
                if let param { XCTAssertEqual(error?["param"] as? String, param, label) }
                codes.append(error?["code"] as? String ?? "")
            }
            try stillRight(label)
        }
        XCTAssertTrue(codes.contains("context_length_exceeded"), "\(codes)")
        XCTAssertEqual(codes.filter { $0 == "adapter_memory_exceeded" }.count, 1, "\(codes)")
        XCTAssertEqual(codes.filter { $0 == "too_many_adapters" }.count, 1, "\(codes)")
        try heldRequests(port, tally, adapter: held.0, prompt: held.1, maxTokens: long)
        try stillRight("the disconnected streams")
        let after = try concurrent(port, Self.mixed)
        tally.add("/v1/completions", 200, Self.mixed.count)
        completions += Self.mixed.count
        for (i, r) in Self.mixed.enumerated() {
            XCTAssertEqual(
                ServeHTTPTests.ids(after[i]), try Self.reference(r.0 == "base" ? nil : r.0, r.1, r.2), "after: \(r)")
        }
        // Delete B: gone for new requests.
        XCTAssertEqual(try send("DELETE", "/v1/adapters/B").status, 200)
        let gone = try send("POST", "/v1/completions", #"{"model": "B", "prompt": "x", "max_tokens": 2}"#)
        XCTAssertEqual(gone.status, 404, gone.body)
        // No request lost: /metrics counts every completion and adapter request the test sent with
        // the status it answered, and none waits or runs.
        let metrics = try send("GET", "/metrics").body
        for (key, n) in tally.counts where key.hasPrefix("/v1/") {
            let parts = key.split(separator: " ")
            let name = #"lora_dist_requests_total{path="\#(parts[0])",status="\#(parts[1])"}"#
            XCTAssertEqual(Self.sample(metrics, name), n, "\(name) in \(metrics)")
        }
        XCTAssertEqual(Self.sample(metrics, "lora_dist_queue_length"), 0, metrics)
        XCTAssertEqual(
            Self.sample(metrics, #"lora_dist_completions_total{model="A"}"#)
                + Self.sample(metrics, #"lora_dist_completions_total{model="B"}"#)
                + Self.sample(metrics, #"lora_dist_completions_total{model="base"}"#), completions + 7,
            "completions accepted: the greedy ones and the 7 held")
        // One plan broadcast per step, and the model's AllReduces, in the metrics.
        XCTAssertTrue(
            metrics.contains(#"lora_dist_collectives_total{site="serve-plan",op="broadcast"}"#), metrics)
        XCTAssertTrue(metrics.contains(#"lora_dist_collectives_total{site="attn-out",op="allReduce"}"#), metrics)
        stop(launch, ranks: 2)
    }

    /// Seven long streamed requests on `adapter` fill the queue (3 running, 4 waiting): one more
    /// request is answered 429 and a DELETE of their adapter 409; then their clients disconnect
    /// mid-stream (curl killed) and the server cancels them: the queue empties, and fewer tokens
    /// are generated than three of them would take to finish (the waiting ones never run to their
    /// end either).
    func heldRequests(_ port: Int, _ tally: Tally, adapter: String, prompt: String, maxTokens: Int) throws {
        let before = try ServeHTTPTests.http("GET", "/metrics", port: port).body
        let body = try JSONSerialization.data(withJSONObject: [
            "model": adapter, "prompt": prompt, "max_tokens": maxTokens, "temperature": 0, "stream": true
        ])
        var clients: [(Process, String)] = []
        defer { for (p, _) in clients where p.isRunning { p.terminate() } }
        for i in 0..<7 {
            let out = Self.dir + "/held-\(i).txt"
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
            p.arguments = [
                "-s", "-N", "-m", "120", "-o", out, "-H", "Content-Type: application/json", "-d",
                String(decoding: body, as: UTF8.self), "http://127.0.0.1:\(port)/v1/completions"
            ]
            try p.run()
            clients.append((p, out))
        }
        tally.add("/v1/completions", 200, 7)
        func read(_ file: String) -> String { (try? String(contentsOfFile: file, encoding: .utf8)) ?? "" }
        // Every request queued, and the first tokens streamed.
        let t0 = Date()
        var queued = 0
        var streaming = 0
        while Date().timeIntervalSince(t0) < 60 {
            let m = try ServeHTTPTests.http("GET", "/metrics", port: port).body
            queued = Self.sample(m, "lora_dist_queue_length")
            streaming = clients.filter { read($0.1).contains("data: {") }.count
            if queued == 7 && streaming > 0 { break }
            usleep(20_000)
        }
        XCTAssertEqual(queued, 7, "the held requests fill the queue")
        XCTAssertGreaterThan(streaming, 0, "a held request streams")
        let full = try Self.send(tally, "POST", "/v1/completions", #"{"model": "A", "prompt": "x"}"#, port: port)
        XCTAssertEqual(full.status, 429, full.body)
        XCTAssertEqual((full.json["error"] as? [String: Any])?["code"] as? String, "rate_limit_exceeded", full.body)
        XCTAssertEqual((full.json["error"] as? [String: Any])?["type"] as? String, "rate_limit_error", full.body)
        let inUse = try Self.send(tally, "DELETE", "/v1/adapters/\(adapter)", port: port)
        XCTAssertEqual(inUse.status, 409, inUse.body)
        XCTAssertEqual((inUse.json["error"] as? [String: Any])?["code"] as? String, "adapter_in_use", inUse.body)
        // The clients go away mid-stream.
        for (p, _) in clients { kill(p.processIdentifier, SIGKILL) }
        for (p, out) in clients {
            p.waitUntilExit()
            XCTAssertFalse(read(out).contains("[DONE]"), "the stream was cut before its end: \(out)")
        }
        let t1 = Date()
        var metrics = ""
        while Date().timeIntervalSince(t1) < 60 {
            metrics = try ServeHTTPTests.http("GET", "/metrics", port: port).body
            if Self.sample(metrics, "lora_dist_queue_length") == 0 { break }
            usleep(20_000)
        }
        XCTAssertEqual(Self.sample(metrics, "lora_dist_queue_length"), 0, "the cancelled requests leave the queue")
        let generated =
            Self.sample(metrics, "lora_dist_generated_tokens_total")
            - Self.sample(before, "lora_dist_generated_tokens_total")
        print("held requests: \(generated) tokens generated in all before they were cancelled")
        XCTAssertLessThan(generated, 3 * maxTokens, "the disconnected requests were cancelled, not run to their end")
        XCTAssertGreaterThan(generated, 0)
    }

    /// A rank that dies ends the job: mpirun returns non-zero, well within the test's bound.
    func testARankThatDiesEndsTheJob() throws {
        let (launch, port) = try start(2, Self.baseArgs + ["--adapter", "A=\(Self.path("A"))"])
        guard port > 0 else { return }
        defer { if launch.process.isRunning { Launcher.killTree(launch.pid) } }
        let pids = Launcher.ranks(below: launch.pid)
        XCTAssertEqual(pids.count, 2)
        let t0 = Date()
        for pid in pids where Self.worldRank(pid) == 1 { kill(pid, SIGKILL) }
        let r = launch.finish(timeout: 90, since: t0)
        XCTAssertFalse(r.timedOut, r.output)
        XCTAssertNotEqual(r.status, 0, r.output)
    }

    /// Bad limits: a clear message and a non-zero exit before any rank starts serving; adapters
    /// given at start past --adapter-memory: its message and a non-zero exit on every rank.
    func testBadLimitsAreRefused() throws {
        let r = try Launcher.lora(
            ["serve"] + Self.baseArgs + ["--max-batch", "8", "--max-batch-tokens", "4", "--port", "0"], timeout: 60)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.output.contains("--max-batch-tokens must be at least --max-batch"), r.output)
        // A fits alone; A and B do not.
        let budget = String(Double(Self.bytesA + Self.bytesB - 1) / 1_048_576)
        let m = try Launcher.mpirun(
            2,
            ["serve"] + Self.baseArgs + [
                "--adapter", "A=\(Self.path("A"))", "--adapter", "B=\(Self.path("B"))", "--adapter-memory", budget,
                "--port", "0"
            ], timeout: 120)
        XCTAssertFalse(m.timedOut, m.output)
        XCTAssertNotEqual(m.status, 0, m.output)
        XCTAssertTrue(m.output.contains("--adapter-memory"), m.output)
        XCTAssertFalse(m.output.contains("listening on"), m.output)
    }

    /// The built-in base at 4 ranks with an adapter trained by `train` (3 steps) and a random one:
    /// concurrent greedy completions on both and the base equal `lora-dist generate --adapter` on
    /// the same prompts, token for token (the ids equal `Generator`'s on the model `generate`
    /// builds, the text is the command's).
    func testServeUnderMpirun4BuiltinBaseTrainedAdapterEqualsGenerate() throws {
        let out = Self.dir + "/trained"
        let t = try Launcher.lora(
            [
                "train", "--steps", "3", "--batch", "4", "--seq", "168", "--lr", "1e-2", "--warmup", "1",
                "--eval-examples", "0", "--valid-limit", "2", "--out", out
            ], timeout: 300)
        XCTAssertEqual(t.status, 0, t.output)
        let trained = out + "/adapter.safetensors"
        let base = Launcher.root.appendingPathComponent("models/tiny-base.safetensors").path
        let opened = try BaseFiles.open(.file(base))
        let random = Self.dir + "/builtin-random.safetensors"
        let w = LoRAWeights(config: LoRAConfig(rank: 4, alpha: 8, targets: [.q, .v, .mlpIn]), model: opened.config)
        Fixtures.initLoRA(w, seed: 21, nonZeroB: 0.5, bSeed: 22)
        try AdapterFile.save(w, base: opened.identity, to: random)
        let (launch, port) = try start(
            4, ["--adapter", "T=\(trained)", "--adapter", "R=\(random)", "--max-batch-tokens", "32"])
        guard port > 0 else { return }
        defer { if launch.process.isRunning { Launcher.killTree(launch.pid) } }
        let split = BuiltinTask.splits(train: 4000, valid: 200, test: 200, seed: 42).test
        let (p0, p1) = (split[0].context, split[1].context)
        let requests = [("T", p0, 16), ("R", p0, 16), ("base", p0, 16), ("T", p1, 12), ("base", p1, 12), ("R", p1, 8)]
        let got = try concurrent(port, requests)
        let paths = ["T": trained, "R": random]
        var ids: [[Int32]] = []
        for (i, r) in requests.enumerated() {
            let want = try InProcessCommunicator.run(ranks: 1) { comm in
                let m = try GPTModel.forDecoding(.file(base), adapter: paths[r.0], tp: comm, precision: .fp32)
                let tok = ByteTokenizer()
                return try Generator(m).greedy(prompt: tok.encodeStart(r.1), maxNew: r.2, stop: tok.eot)
            }[0]
            ids.append(ServeHTTPTests.ids(got[i]))
            XCTAssertEqual(ids[i], want, "\(r): the server's tokens are generate's model's")
            let g = try Launcher.lora(
                ["generate", "--prompt", r.1.replacingOccurrences(of: "\n", with: "\\n"), "--max-tokens", String(r.2)]
                    + (paths[r.0].map { ["--adapter", $0] } ?? []), timeout: 120)
            XCTAssertEqual(g.status, 0, g.output)
            let text = (got[i].json["choices"] as? [[String: Any]])?.first?["text"] as? String
            XCTAssertEqual(text, String(g.output.dropLast()), "\(r): the server's text is generate's")
        }
        XCTAssertTrue(ids[0] != ids[2] || ids[3] != ids[4], "the trained adapter changes the base's tokens")
        XCTAssertNotEqual(ids[1], ids[2], "the random adapter changes the base's tokens")
        stop(launch, ranks: 4)
    }
}

final class ServeResults: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [ServeHTTPTests.HTTPResult?]
    init(_ n: Int) { values = Array(repeating: nil, count: n) }
    func set(_ i: Int, _ r: ServeHTTPTests.HTTPResult?) { lock.withLock { values[i] = r } }
    func get(_ i: Int) -> ServeHTTPTests.HTTPResult? { lock.withLock { values[i] } }
}
