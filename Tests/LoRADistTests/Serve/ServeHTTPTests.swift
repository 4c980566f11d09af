import Foundation
import XCTest

@testable import LoRADist
@testable import LoRADistServe

/// `lora-dist serve`'s HTTP layer driven by a real HTTP client (curl) on loopback, over the
/// continuous-batching engine in one process on a random GPT-2 base (byte tokenizer) with two
/// adapters of different ranks and targets: greedy completions equal `Generator` with that adapter
/// alone, token for token; streaming gives the same tokens; /v1/models lists the adapters; an
/// adapter is loaded, used and deleted live; every error case answers its status and OpenAI's JSON
/// body, and the server keeps answering; a full queue answers 429; the command drains and exits 0
/// on SIGTERM.
final class ServeHTTPTests: XCTestCase {
    static let cfg = GPTConfig(nLayer: 2, nEmbd: 32, nHead: 4, vocabSize: 257, nPositions: 32)
    static let identity = BaseIdentity(config: cfg, fingerprint: "random-8", source: "random init")
    static let dir = makeTempDir("serve-http")
    static let loraA = LoRAConfig(rank: 3, alpha: 12, targets: LoRATarget.available(in: .gpt2))
    static let loraB = LoRAConfig(rank: 6, alpha: 24, targets: [.q, .v, .mlpOut])

    /// Adapter files: A and B on this base, A on another base, and A with an Inf.
    static func adapterPath(_ name: String) -> String { dir + "/\(name).safetensors" }

    /// The adapter files written again, for a class that runs after this one removed them.
    static func prepareAdapters() {
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try writeAdapters()
        } catch { XCTFail("could not write the adapters: \(error)") }
    }

    static func writeAdapters() throws {
        for (name, config, seed) in [("A", loraA, 3), ("B", loraB, 4)] {
            let w = LoRAWeights(config: config, model: cfg)
            Fixtures.initLoRA(w, seed: UInt64(seed), nonZeroB: 1.5, bSeed: UInt64(seed + 10))
            try AdapterFile.save(w, base: identity, to: adapterPath(name))
            if name == "A" {
                var other = identity
                other.fingerprint = "random-9"
                try AdapterFile.save(w, base: other, to: adapterPath("other-base"))
                w.ptr(w.slots[2].b)[1] = .infinity
                try AdapterFile.save(w, base: identity, to: adapterPath("inf"))
            }
        }
    }

    /// A server on its own engine: the engine's loop on a rank thread, the server in a task. With
    /// `startLoop: false` the loop starts at `releaseLoop()`: requests submitted before wait in
    /// the queue.
    final class Running: @unchecked Sendable {
        var engine: BatchingEngine!
        var port = 0
        var server: Task<Void, Never>?
        let ready = DispatchSemaphore(value: 0)
        let engineDone = DispatchSemaphore(value: 0)

        init(maxAdapters: Int = 3, maxQueue: Int = 8, startLoop: Bool = true) throws {
            let held = DispatchSemaphore(value: 0)
            let release = DispatchSemaphore(value: 0)
            let failure = Events()
            Thread {
                do {
                    try InProcessCommunicator.run(ranks: 1) { comm in
                        let runner = try StepRunner(
                            comm: comm, base: .random(ServeHTTPTests.cfg, seed: 8),
                            adapters: [("A", adapterPath("A")), ("B", adapterPath("B"))], maxAdapters: maxAdapters,
                            maxBatch: 4, tokenBudget: 16)
                        self.engine = try BatchingEngine(runner: runner, maxQueue: maxQueue, tokenizer: ByteTokenizer())
                        held.signal()
                        if !startLoop { release.wait() }
                        try self.engine.run()
                    }
                } catch {
                    failure.append(.text("\(error)"))
                    held.signal()
                }
                self.engineDone.signal()
            }.start()
            held.wait()
            if let f = failure.all.first { throw APIError(500, "the engine did not start: \(f)") }
            self.releaseLoop = { release.signal() }
            let engine = self.engine!
            server = Task.detached {
                try? await ServeServer.run(engine: engine, host: "127.0.0.1", port: 0) { p in
                    self.port = p
                    self.ready.signal()
                }
            }
            guard ready.wait(timeout: .now() + 60) == .success else { throw APIError(500, "server did not start") }
        }

        var releaseLoop: () -> Void = {}

        func stop() {
            server?.cancel()
            releaseLoop()
            engine.stop()
            _ = engineDone.wait(timeout: .now() + 60)
        }
    }

    nonisolated(unsafe) static var shared: Running?

    override class func setUp() {
        super.setUp()
        do {
            try writeAdapters()
            shared = try Running()
        } catch { XCTFail("could not start the server: \(error)") }
    }

    override class func tearDown() {
        shared?.stop()
        try? FileManager.default.removeItem(atPath: dir)
        super.tearDown()
    }

    struct HTTPResult {
        var status: Int
        var body: String
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:] }
    }

    /// One request by curl, at most 60 seconds.
    static func http(_ method: String, _ path: String, _ body: String? = nil, port: Int? = nil) throws -> HTTPResult {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        var args = ["-s", "-S", "-m", "60", "-X", method, "-w", "\n%{http_code}"]
        if body != nil { args += ["-H", "Content-Type: application/json", "--data-binary", "@-"] }
        p.arguments = args + ["http://127.0.0.1:\(port ?? shared!.port)\(path)"]
        let input = Pipe()
        let output = Pipe()
        p.standardInput = input
        p.standardOutput = output
        try p.run()
        if let body { input.fileHandleForWriting.write(Data(body.utf8)) }
        try input.fileHandleForWriting.close()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        var text = String(decoding: data, as: UTF8.self)
        guard let nl = text.lastIndex(of: "\n"), let status = Int(text[text.index(after: nl)...]) else {
            throw APIError(500, "curl gave no status: \(text)")
        }
        text = String(text[..<nl])
        return HTTPResult(status: status, body: text)
    }

    /// The port `lora-dist serve` printed in `output` ("listening on http://127.0.0.1:PORT"), once
    /// its line is whole.
    static func listeningPort(_ output: String) -> Int? {
        guard let r = output.range(of: "lora-dist serve: listening on http://127.0.0.1:") else { return nil }
        let rest = output[r.upperBound...]
        guard rest.contains("\n"), let port = Int(rest.prefix { $0.isNumber }), port > 0 else { return nil }
        return port
    }

    /// Reads `pipe` until `lora-dist serve` prints its port (at most `timeout` seconds or the
    /// pipe's end): the port, and what was read.
    static func listeningPort(_ pipe: Pipe, timeout: Double = 60) -> (port: Int?, output: String) {
        var data = Data()
        let t0 = Date()
        while Date().timeIntervalSince(t0) < timeout {
            let text = String(decoding: data, as: UTF8.self)
            if let p = listeningPort(text) { return (p, text) }
            let d = pipe.fileHandleForReading.availableData
            if d.isEmpty { break }
            data += d
        }
        let text = String(decoding: data, as: UTF8.self)
        return (listeningPort(text), text)
    }

    static func completion(_ fields: [String: Any]) throws -> HTTPResult {
        try http(
            "POST", "/v1/completions",
            String(decoding: try JSONSerialization.data(withJSONObject: fields), as: UTF8.self))
    }

    /// `Generator`'s greedy tokens with adapter `name` alone (nil: the base), as `generate` decodes.
    static func reference(_ name: String?, prompt: String, maxNew: Int) throws -> [Int32] {
        try InProcessCommunicator.run(ranks: 1) { comm -> [Int32] in
            let config = name == "B" ? loraB : loraA
            let m = try Fixtures.randomModel(
                cfg, comm, trainable: name == nil ? nil : .lora(config), training: false, baseSeed: 8)
            if let name { try AdapterFile.load(adapterPath(name), into: m.lora!, expecting: identity) }
            let tok = ByteTokenizer()
            return try Generator(m).greedy(prompt: tok.encodeStart(prompt), maxNew: maxNew, stop: tok.eot)
        }[0]
    }

    static func ids(_ r: HTTPResult) -> [Int32] {
        let choice = (r.json["choices"] as? [[String: Any]])?.first
        return (choice?["token_ids"] as? [Int] ?? []).map { Int32($0) }
    }

    func testGreedyCompletionsEqualGeneratorWithThatAdapterAlone() throws {
        var seen: [[Int32]] = []
        for model in ["A", "B", "base"] {
            let r = try Self.completion([
                "model": model, "prompt": "name=Blue", "max_tokens": 10, "temperature": 0, "return_token_ids": true
            ])
            XCTAssertEqual(r.status, 200, r.body)
            let want = try Self.reference(model == "base" ? nil : model, prompt: "name=Blue", maxNew: 10)
            let got = Self.ids(r)
            XCTAssertEqual(got, want, "\(model): the server's greedy tokens are the generator's")
            XCTAssertFalse(got.isEmpty)
            let choice = (r.json["choices"] as! [[String: Any]])[0]
            XCTAssertEqual(choice["text"] as? String, ByteTokenizer().decode(want))
            XCTAssertEqual(r.json["model"] as? String, model)
            XCTAssertEqual(r.json["object"] as? String, "text_completion")
            let usage = r.json["usage"] as? [String: Int]
            XCTAssertEqual(usage?["prompt_tokens"], 9)
            XCTAssertEqual(usage?["completion_tokens"], want.count)
            seen.append(got)
        }
        XCTAssertNotEqual(seen[0], seen[2], "adapter A must change the tokens for the test to mean anything")
        XCTAssertNotEqual(seen[1], seen[2], "adapter B must change the tokens")
    }

    func testStreamingYieldsTheSameTokensAsNonStreaming() throws {
        let fields: [String: Any] = [
            "model": "B", "prompt": ["name=Blue"], "max_tokens": 9, "temperature": 0, "return_token_ids": true
        ]
        let whole = try Self.completion(fields)
        var s = fields
        s["stream"] = true
        let r = try Self.completion(s)
        XCTAssertEqual(r.status, 200)
        let events = r.body.components(separatedBy: "\n\n").filter { !$0.isEmpty }
        XCTAssertEqual(events.last, "data: [DONE]")
        var ids: [Int32] = []
        var text = ""
        var reasons: [String] = []
        for e in events.dropLast() {
            XCTAssertTrue(e.hasPrefix("data: "), e)
            let chunk = try JSONSerialization.jsonObject(with: Data(e.dropFirst(6).utf8)) as! [String: Any]
            let c = (chunk["choices"] as! [[String: Any]])[0]
            ids += (c["token_ids"] as? [Int] ?? []).map { Int32($0) }
            text += c["text"] as? String ?? ""
            if let f = c["finish_reason"] as? String { reasons.append(f) }
        }
        XCTAssertEqual(ids, Self.ids(whole))
        XCTAssertEqual(text, (whole.json["choices"] as! [[String: Any]])[0]["text"] as? String)
        XCTAssertEqual(reasons, ["length"], "one finish reason, on the last chunk")
        XCTAssertEqual(ids.count, 9)
    }

    func testModelsListsTheBaseAndTheAdapters() throws {
        let r = try Self.http("GET", "/v1/models")
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.json["object"] as? String, "list")
        let data = r.json["data"] as! [[String: Any]]
        XCTAssertEqual(data.map { $0["id"] as? String }, ["base", "A", "B"])
        XCTAssertEqual(data.map { $0["parent"] as? String }, [nil, "base", "base"])
        let health = try Self.http("GET", "/health")
        XCTAssertEqual(health.status, 200)
        XCTAssertEqual(health.json["status"] as? String, "ok")
    }

    func testLoadUseAndDeleteAnAdapterLive() throws {
        let load = try Self.http("POST", "/v1/adapters", #"{"name": "C", "path": "\#(Self.adapterPath("A"))"}"#)
        XCTAssertEqual(load.status, 201, load.body)
        let models = try Self.http("GET", "/v1/models").json["data"] as! [[String: Any]]
        XCTAssertEqual(models.map { $0["id"] as? String }, ["base", "A", "B", "C"])
        let r = try Self.completion([
            "model": "C", "prompt": "name=Blue", "max_tokens": 6, "temperature": 0, "return_token_ids": true
        ])
        XCTAssertEqual(Self.ids(r), try Self.reference("A", prompt: "name=Blue", maxNew: 6), "C is A's file")
        XCTAssertEqual(try Self.http("DELETE", "/v1/adapters/C").status, 200)
        let gone = try Self.completion(["model": "C", "prompt": "x", "temperature": 0])
        XCTAssertEqual(gone.status, 404)
        XCTAssertEqual((gone.json["error"] as? [String: Any])?["code"] as? String, "model_not_found")
        XCTAssertEqual(try Self.http("DELETE", "/v1/adapters/C").status, 404)
    }

    /// Every error: its status, OpenAI's error body, and the server still answering.
    func testEveryErrorAnswersItsStatusAndJSONBody() throws {
        let long = String(repeating: "x", count: 40)
        let cases: [(String, String, String, Int, String?)] = [
            ("POST", "/v1/completions", "{\"model\": ", 400, nil),
            ("POST", "/v1/completions", #"{"model": "Z", "prompt": "x"}"#, 404, "model"),
            ("POST", "/v1/completions", #"{"prompt": "x"}"#, 400, "model"),
            ("POST", "/v1/completions", #"{"model": "A"}"#, 400, "prompt"),
            ("POST", "/v1/completions", #"{"model": "A", "prompt": "\#(long)"}"#, 400, "prompt"),
            ("POST", "/v1/completions", #"{"model": "A", "prompt": ["a", "b"]}"#, 400, "prompt"),
            ("POST", "/v1/completions", #"{"model": "A", "prompt": "x", "max_tokens": 0}"#, 400, "max_tokens"),
            ("POST", "/v1/completions", #"{"model": "A", "prompt": "x", "temperature": 3}"#, 400, "temperature"),
            ("POST", "/v1/completions", #"{"model": "A", "prompt": "x", "top_p": 0}"#, 400, "top_p"),
            ("POST", "/v1/completions", #"{"model": "A", "prompt": "x", "stop": 5}"#, 400, nil),
            ("POST", "/v1/completions", #"{"model": "A", "prompt": "x", "max_tokens": "many"}"#, 400, nil),
            (
                "POST", "/v1/completions",
                "{\"model\": \"A\", \"prompt\": \"" + String(repeating: "y", count: 1 << 21) + "\"}", 413, nil
            ),
            ("GET", "/v1/nothing", "", 404, nil),
            ("POST", "/v1/adapters", #"{"name": "A", "path": "\#(Self.adapterPath("B"))"}"#, 409, "name"),
            ("POST", "/v1/adapters", #"{"name": "O", "path": "\#(Self.adapterPath("other-base"))"}"#, 422, "path"),
            ("POST", "/v1/adapters", #"{"name": "I", "path": "\#(Self.adapterPath("inf"))"}"#, 422, "path"),
            ("POST", "/v1/adapters", #"{"name": "M", "path": "\#(Self.dir)/missing"}"#, 404, "path"),
            ("POST", "/v1/adapters", #"{"name": "bad name", "path": "\#(Self.adapterPath("A"))"}"#, 400, "name"),
            ("POST", "/v1/adapters", #"{"name": "base", "path": "\#(Self.adapterPath("A"))"}"#, 409, "name"),
            ("POST", "/v1/adapters", #"{"path": "x"}"#, 400, nil),
            ("DELETE", "/v1/adapters/Z", "", 404, "name")
        ]
        for (method, path, body, status, param) in cases {
            let r = try Self.http(method, path, body.isEmpty ? nil : body)
            let label = "\(method) \(path) \(body.prefix(80))"
            XCTAssertEqual(r.status, status, "\(label): \(r.body.prefix(300))")
            let error = r.json["error"] as? [String: Any]
            XCTAssertNotNil(error, "\(label): an OpenAI error body, got \(r.body.prefix(300))")
            XCTAssertFalse((error?["message"] as? String ?? "").isEmpty, label)
            XCTAssertEqual(
                error?["type"] as? String, status >= 500 ? "server_error" : "invalid_request_error", label)
            XCTAssertTrue(error?.keys.contains("code") == true && error?.keys.contains("param") == true, label)
            if let param { XCTAssertEqual(error?["param"] as? String, param, label) }
            XCTAssertEqual(try Self.http("GET", "/health").status, 200, "the server keeps answering after \(label)")
        }
        // A full set: one more adapter fits (3 at most), the next is refused.
        XCTAssertEqual(
            try Self.http("POST", "/v1/adapters", #"{"name": "D", "path": "\#(Self.adapterPath("A"))"}"#).status, 201)
        let full = try Self.http("POST", "/v1/adapters", #"{"name": "E", "path": "\#(Self.adapterPath("A"))"}"#)
        XCTAssertEqual(full.status, 422)
        XCTAssertEqual((full.json["error"] as? [String: Any])?["code"] as? String, "too_many_adapters")
        XCTAssertEqual(try Self.http("DELETE", "/v1/adapters/D").status, 200)
        let ok = try Self.completion(["model": "A", "prompt": "x", "max_tokens": 2, "temperature": 0])
        XCTAssertEqual(ok.status, 200, "completions still work after every error")
        let metrics = try Self.http("GET", "/metrics")
        XCTAssertEqual(metrics.status, 200)
        for line in [
            "lora_dist_requests_total{path=\"/v1/completions\",status=\"404\"}",
            "lora_dist_requests_total{path=\"/v1/adapters\",status=\"422\"}",
            "lora_dist_completions_total{model=\"A\"}",
            "lora_dist_generated_tokens_total ", "lora_dist_queue_length 0",
            "lora_dist_forward_passes_total{rows=\"1\"}"
        ] {
            XCTAssertTrue(metrics.body.contains(line), "/metrics has \(line)")
        }
    }

    /// A queue of one: while the engine's loop is held, a streamed request waits in it and the next
    /// is answered 429; once the loop runs, the first completes.
    func testAFullQueueAnswers429() throws {
        let server = try Running(maxQueue: 1, startLoop: false)
        defer { server.stop() }
        let first = Process()
        first.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        first.arguments = [
            "-s", "-m", "60", "-N", "-H", "Content-Type: application/json", "-d",
            #"{"model": "A", "prompt": "x", "max_tokens": 3, "temperature": 0, "stream": true}"#,
            "http://127.0.0.1:\(server.port)/v1/completions"
        ]
        let out = Pipe()
        first.standardOutput = out
        try first.run()
        // The first request is queued once the engine counts it.
        let t0 = Date()
        while server.engine.metrics().queueLength == 0 && Date().timeIntervalSince(t0) < 30 { usleep(10_000) }
        XCTAssertEqual(server.engine.metrics().queueLength, 1)
        let r = try Self.http("POST", "/v1/completions", #"{"model": "A", "prompt": "x"}"#, port: server.port)
        XCTAssertEqual(r.status, 429)
        XCTAssertEqual((r.json["error"] as? [String: Any])?["code"] as? String, "rate_limit_exceeded")
        server.releaseLoop()
        let body = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        first.waitUntilExit()
        XCTAssertTrue(body.hasSuffix("data: [DONE]\n\n"), body)
    }

    /// The command: `lora-dist serve` on port 0 answers, and SIGTERM drains and exits 0.
    func testServeCommandAnswersAndExitsZeroOnSIGTERM() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Launcher.binary)
        p.arguments = [
            "serve", "--layers", "2", "--dim", "32", "--heads", "4", "--context", "32", "--vocab", "257",
            "--init-seed", "8", "--adapter", "A=\(Self.adapterPath("A"))", "--port", "0", "--max-adapters", "2"
        ]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        defer { if p.isRunning { Launcher.killTree(p.processIdentifier) } }
        let (listening, text) = Self.listeningPort(out)
        guard let port = listening else { return XCTFail("no port in \(text)") }
        XCTAssertTrue(text.hasPrefix("lora-dist serve: listening on http://127.0.0.1:"), text)
        let r = try Self.http(
            "POST", "/v1/completions",
            #"{"model": "A", "prompt": "name=Blue", "max_tokens": 5, "temperature": 0, "return_token_ids": true}"#,
            port: port)
        XCTAssertEqual(Self.ids(r), try Self.reference("A", prompt: "name=Blue", maxNew: 5))
        kill(p.processIdentifier, SIGTERM)
        let t1 = Date()
        while p.isRunning && Date().timeIntervalSince(t1) < 60 { usleep(20_000) }
        XCTAssertFalse(p.isRunning, "serve exits on SIGTERM")
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
    }

    /// Ending a request's stream before the engine reaches it (what a client that disconnects
    /// does) cancels it: the engine generates nothing for it, and serves the next request.
    func testEndingTheStreamCancelsTheRequest() throws {
        let server = try Running(maxQueue: 4, startLoop: false)
        defer { server.stop() }
        let engine = server.engine!
        let before = engine.metrics()
        let dropped = try engine.submit(
            CompletionRequest(adapter: "A", model: "A", prompt: "name=Blue", maxTokens: 20, temperature: 0))
        XCTAssertTrue(BatchingEngineTests.abandon(dropped), "the reader ended")
        let kept = try engine.submit(
            CompletionRequest(adapter: "B", model: "B", prompt: "x", maxTokens: 3, temperature: 0))
        server.releaseLoop()
        let events = Events()
        let done = DispatchSemaphore(value: 0)
        Task {
            do { for try await e in kept { events.append(e) } } catch { events.append(.text("error: \(error)")) }
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 60), .success)
        guard case .finished(_, let prompt, let generated)? = events.all.last else {
            return XCTFail("the second request finishes: \(events.all)")
        }
        XCTAssertEqual(prompt, 1)
        XCTAssertGreaterThan(generated, 0)
        let after = engine.metrics()
        XCTAssertEqual(
            after.generatedTokens - before.generatedTokens, generated, "the cancelled request generated nothing")
        XCTAssertNil(after.completionsByAdapter["A"], "the cancelled request never finished")
        XCTAssertEqual(after.completionsByAdapter["B"], 1)
        XCTAssertEqual(after.queueLength, 0)
    }

    final class Events: @unchecked Sendable {
        private let lock = NSLock()
        private var events: [GenerationEvent] = []
        func append(_ e: GenerationEvent) { lock.withLock { events.append(e) } }
        var all: [GenerationEvent] { lock.withLock { events } }
    }
}
