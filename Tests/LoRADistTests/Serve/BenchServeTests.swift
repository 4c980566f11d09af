import Foundation
import XCTest

@testable import LoRADist
@testable import LoRADistServe

/// `lora-dist bench serve` against a real `lora-dist serve` on loopback (a random GPT-2 base, two
/// adapters): every request is counted (ok = M), the tokens it counts are what the server's
/// /metrics says it generated, the latencies are finite and ordered; a non-loopback URL is refused.
/// `serve --merge`: a model with one adapter merged (`GPTModel.merged`) gives the logits of LoRA's own
/// merge bit for bit and the unmerged adapter's to fp32 rounding (GPT-2 and the Llama family), and
/// a merged server's greedy completions equal the unmerged server's token for token. The PEFT
/// peer of launch/bench-serve runs (and fails, never skips, without Python).
final class BenchServeTests: XCTestCase {
    static let dir = makeTempDir("bench-serve")
    static let shape = ["--layers", "2", "--dim", "32", "--heads", "4", "--context", "32", "--vocab", "257"]

    override class func setUp() {
        super.setUp()
        ServeHTTPTests.prepareAdapters()
    }

    override class func tearDown() {
        try? FileManager.default.removeItem(atPath: dir)
        super.tearDown()
    }

    /// `lora-dist serve ARGS --port 0` in the background, up once it prints its port.
    final class ServeProcess {
        let process = Process()
        let port: Int

        /// `base`: the random GPT-2 the adapters are for, unless given.
        init(_ args: [String], base: [String] = BenchServeTests.shape + ["--init-seed", "8"]) throws {
            process.executableURL = URL(fileURLWithPath: Launcher.binary)
            process.arguments = ["serve"] + base + ["--port", "0"] + args
            let out = Pipe()
            process.standardOutput = out
            process.standardError = out
            try process.run()
            let (listening, text) = ServeHTTPTests.listeningPort(out)
            guard let p = listening, text.hasPrefix("lora-dist serve: listening on http://127.0.0.1:") else {
                Launcher.killTree(process.processIdentifier)
                throw APIError(500, "serve did not start: \(text)")
            }
            port = p
        }

        var url: String { "http://127.0.0.1:\(port)" }

        func stop() {
            kill(process.processIdentifier, SIGTERM)
            let t0 = Date()
            while process.isRunning && Date().timeIntervalSince(t0) < 60 { usleep(20_000) }
            if process.isRunning { Launcher.killTree(process.processIdentifier) }
            process.waitUntilExit()
        }
    }

    /// The server's count of generated tokens, read from /metrics with curl.
    static func generated(_ port: Int) throws -> Int {
        let m = try ServeHTTPTests.http("GET", "/metrics", port: port)
        XCTAssertEqual(m.status, 200)
        return try XCTUnwrap(ServeBench.parseMetrics(m.body).generated)
    }

    func testBenchServeCountsEveryRequestAndToken() throws {
        let server = try ServeProcess([
            "--adapter", "A=\(ServeHTTPTests.adapterPath("A"))", "--adapter", "B=\(ServeHTTPTests.adapterPath("B"))"
        ])
        defer { server.stop() }
        let prompts = Self.dir + "/prompts.txt"
        try "name=Blue\\n\nfood=Thai\nname=Aromi|area=riverside\n".write(
            toFile: prompts, atomically: true, encoding: .utf8)
        for (stream, requests, clients) in [(true, 7, 3), (false, 3, 2)] {
            let json = Self.dir + "/bench-\(stream).json"
            let before = try Self.generated(server.port)
            let r = try Launcher.lora(
                [
                    "bench", "serve", "--url", server.url, "--clients", String(clients), "--requests",
                    String(requests), "--adapters", "A:2,B,base", "--prompt-file", prompts, "--max-tokens", "6",
                    "--timeout", "120", "--json", json
                ] + (stream ? ["--stream"] : []), timeout: 180)
            XCTAssertEqual(r.status, 0, r.output)
            let after = try Self.generated(server.port)
            let result = try JSONDecoder().decode(
                ServeBenchResult.self, from: Data(contentsOf: URL(fileURLWithPath: json)))
            let label = "stream \(stream)"
            XCTAssertEqual(result.ok, requests, "every request answered: \(label) \(result.failures)")
            XCTAssertEqual(result.failed, 0, label)
            XCTAssertEqual(result.notSent, 0, label)
            XCTAssertEqual(result.outputTokens, after - before, "the tokens counted are the server's: \(label)")
            XCTAssertEqual(result.serverGeneratedTokens, after - before, label)
            XCTAssertGreaterThanOrEqual(result.outputTokens, requests, label)
            XCTAssertLessThanOrEqual(result.outputTokens, requests * 6, label)
            XCTAssertEqual(result.models, ["A", "B", "base", "A"], "A:2,B,base interleaves")
            for (p50, p99, what) in [
                (result.ttftP50Ms, result.ttftP99Ms, "TTFT"), (result.tpotP50Ms, result.tpotP99Ms, "TPOT")
            ] {
                let (a, b) = (try XCTUnwrap(p50, what), try XCTUnwrap(p99, what))
                XCTAssertTrue(a.isFinite && b.isFinite && a > 0, "\(what) finite: \(label)")
                XCTAssertLessThanOrEqual(a, b, "\(what) p50 ≤ p99: \(label)")
            }
            XCTAssertTrue(result.outputTokensPerSecond.isFinite && result.outputTokensPerSecond > 0, label)
            XCTAssertTrue(r.output.contains("output tok/s"), r.output)
        }
    }

    func testBenchServeRefusesANonLoopbackURL() throws {
        for url in ["http://10.0.0.1:8000", "http://example.com:8000", "https://127.0.0.1:8000", "ftp://localhost"] {
            let r = try Launcher.lora(["bench", "serve", "--url", url, "--adapters", "A"], timeout: 60)
            XCTAssertNotEqual(r.status, 0, url)
            XCTAssertTrue(r.output.contains("--url \(url)"), "\(url): \(r.output)")
        }
        for ok in ["http://127.0.0.1:1", "http://[::1]:1", "http://localhost:1"] {
            XCTAssertNoThrow(try ServeBenchOptions.checkLoopback(ok), ok)
        }
        XCTAssertEqual(try ServeBenchOptions.mix("a:3,b"), ["a", "b", "a", "a"])
        XCTAssertThrowsError(try ServeBenchOptions.mix("a:0"))
        XCTAssertEqual(ServeBench.percentile([5, 1, 3, 2, 4], 50), 3)
        XCTAssertEqual(ServeBench.percentile([5, 1, 3, 2, 4], 99), 5)
    }

    /// `serve --merge`'s model (`GPTModel.merged`: each rank merges the adapter into its own shard)
    /// at TP 1 and 2: its logits are LoRA's own merge (`merge()` on a model holding the adapter) bit
    /// for bit, and the unmerged adapter's to 2e-5 (W0 + s·B·A rounded to fp32 once, against
    /// x·W0 + s·(x·Aᵀ)·Bᵀ computed apart), GPT-2 and the Llama family; NaN in B, a bottleneck file
    /// and a missing path are refused.
    func testMergedModelLogitsEqualLoRAMerged() throws {
        for family in [ModelFamily.gpt2, .llama] {
            let cfg = MultiLoRATests.configs(family).model
            let identity = BaseIdentity(config: cfg, fingerprint: "random-8", source: "random init")
            let path = Self.dir + "/merge-\(family).safetensors"
            try AdapterFile.save(MultiLoRATests.weights("A", family), base: identity, to: path)
            for tp in [1, 2] {
                let ranks = try InProcessCommunicator.run(ranks: tp) { comm in
                    let m = try GPTModel.merged(try BaseFiles.open(.random(cfg, seed: 8)), adapter: path, tp: comm)
                    let lora = try MultiLoRATests.single("A", family, comm)
                    let unmerged = try MultiLoRATests.logits(lora)
                    lora.loraRuntime!.merge()
                    return (
                        try MultiLoRATests.logits(m), unmerged, try MultiLoRATests.logits(lora),
                        try MultiLoRATests.logits(try MultiLoRATests.single(nil, family, comm))
                    )
                }
                for (r, (served, unmerged, merged, base)) in ranks.enumerated() {
                    let label = "\(family) tp \(tp) rank \(r)"
                    XCTAssertEqual(served, merged, "\(label): LoRA's merge, bit for bit")
                    TensorParallelModelTests.assertClose(served, unmerged, tol: 2e-5, "\(label): the adapter unmerged")
                    XCTAssertGreaterThan(zip(served, base).map { abs($0 - $1) }.max()!, 1e-2, "\(label): it counts")
                }
            }
            let w = MultiLoRATests.weights("A", family)
            w.ptr(w.slots[1].b)[2] = .nan
            let bad = Self.dir + "/merge-nan-\(family).safetensors"
            try AdapterFile.save(w, base: identity, to: bad)
            XCTAssertThrowsError(try Self.merged(cfg, bad)) { XCTAssertTrue("\($0)".contains("holds NaN"), "\($0)") }
        }
        XCTAssertThrowsError(try Self.merged(Fixtures.tiny, Self.dir + "/missing")) {
            XCTAssertTrue("\($0)".contains("missing"), "\($0)")
        }
        let houlsby = Self.dir + "/merge-houlsby.safetensors"
        try BottleneckServeTests.write(
            .houlsby, width: 4, config: Fixtures.tiny,
            base: BaseIdentity(config: Fixtures.tiny, fingerprint: "random-8", source: "random init"), to: houlsby)
        XCTAssertThrowsError(try Self.merged(Fixtures.tiny, houlsby)) {
            XCTAssertTrue("\($0)".contains("cannot fold"), "\($0)")
        }
    }

    /// `GPTModel.merged` on one rank of the random base of `cfg`.
    static func merged(_ cfg: GPTConfig, _ adapter: String) throws -> GPTModel {
        try InProcessCommunicator.run(ranks: 1) { comm in
            try GPTModel.merged(try BaseFiles.open(.random(cfg, seed: 8)), adapter: adapter, tp: comm)
        }[0]
    }

    /// `serve --merge A` answers model A with the unmerged server's greedy tokens, and serves no
    /// other adapter.
    func testMergedServerGreedyEqualsUnmerged() throws {
        let path = ServeHTTPTests.adapterPath("A")
        let unmerged = try ServeProcess(["--adapter", "A=\(path)"])
        defer { unmerged.stop() }
        let merged = try ServeProcess(["--merge", "A", "--adapter", "A=\(path)"])
        defer { merged.stop() }
        let models = try ServeHTTPTests.http("GET", "/v1/models", port: merged.port).json["data"] as? [[String: Any]]
        XCTAssertEqual(models?.map { $0["id"] as? String }, ["A"], "the merged adapter is the one model")
        for prompt in ["name=Blue", "food=Thai|area=city", "x"] {
            let body =
                #"{"model": "A", "prompt": "\#(prompt)", "max_tokens": 12, "temperature": 0, "return_token_ids": true}"#
            let a = try ServeHTTPTests.http("POST", "/v1/completions", body, port: unmerged.port)
            let b = try ServeHTTPTests.http("POST", "/v1/completions", body, port: merged.port)
            XCTAssertEqual(a.status, 200, a.body)
            XCTAssertEqual(b.status, 200, b.body)
            XCTAssertFalse(ServeHTTPTests.ids(a).isEmpty)
            XCTAssertEqual(
                ServeHTTPTests.ids(b), ServeHTTPTests.ids(a), "\(prompt): merged = unmerged, token for token")
        }
        let bad = try Launcher.lora(
            ["serve"] + Self.shape + ["--merge", "A", "--adapter", "B=\(path)", "--port", "0"], timeout: 60)
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.output.contains("--merge A"), bad.output)
    }

    /// reference/peer_serve_peft.py: random PEFT adapters on the built-in base, then a mixed batch
    /// of two adapters; its figures are counted and ordered. Without Python it fails.
    func testPEFTPeerRuns() throws {
        let base = Launcher.root.appendingPathComponent("models/tiny-base.safetensors").path
        let adapters = Self.dir + "/peft"
        _ = try PythonReference.check(
            "peer_serve_peft.py", ["--base", base, "--make-adapters", adapters, "--count", "2"])
        let prompts = Self.dir + "/peer-prompts.txt"
        try "name=Blue\\n\nfood=Thai\\n\n".write(toFile: prompts, atomically: true, encoding: .utf8)
        let out = try PythonReference.check(
            "peer_serve_peft.py",
            [
                "--base", base, "--adapters", "a=\(adapters)/a0,b=\(adapters)/a1", "--prompt-file", prompts,
                "--requests", "4", "--batch", "2", "--max-tokens", "5"
            ])
        let line = try XCTUnwrap(out.split(separator: "\n").last { $0.hasPrefix("{") })
        let r = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        let tokens = try XCTUnwrap(r["output_tokens"] as? Int)
        XCTAssertGreaterThan(tokens, 0)
        XCTAssertLessThanOrEqual(tokens, 4 * 5)
        for (a, b) in [("ttft_p50_ms", "ttft_p99_ms"), ("tpot_p50_ms", "tpot_p99_ms")] {
            let p50 = try XCTUnwrap(r[a] as? Double)
            let p99 = try XCTUnwrap(r[b] as? Double)
            XCTAssertTrue(p50.isFinite && p50 > 0 && p50 <= p99, "\(a) \(p50) ≤ \(b) \(p99)")
        }
        // The same directories load into lora-dist's server as they are.
        let server = try ServeProcess(["--adapter", "a=\(adapters)/a0"], base: ["--base", base])
        let models = try ServeHTTPTests.http("GET", "/v1/models", port: server.port).json["data"] as? [[String: Any]]
        XCTAssertEqual(models?.map { $0["id"] as? String }, ["base", "a"])
        server.stop()
    }
}
