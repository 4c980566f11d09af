import Foundation
import XCTest

@testable import LoRADist
@testable import LoRADistServe

/// `lora-dist serve` under real mpirun (2 and 4 ranks) driven by curl on loopback: concurrent
/// greedy requests on two adapters and the base, in mixed batches, each equal `generate`'s decoding
/// (`Generator` on the model `generate` builds) with that adapter alone; an adapter loaded live is
/// used and deleted; /metrics shows one plan broadcast per step; SIGTERM to rank 0 drains and
/// every rank exits 0. The base is a small random GPT-2 (the suite's time: a few seconds a run).
final class MPIServeTests: XCTestCase {
    static let dir = makeTempDir("mpi-serve")
    static let cfg = ServeHTTPTests.cfg
    static let baseArgs = [
        "--layers", "2", "--dim", "32", "--heads", "4", "--context", "32", "--vocab", "257", "--init-seed", "8"
    ]

    static func path(_ name: String) -> String { dir + "/\(name).safetensors" }

    override class func setUp() {
        super.setUp()
        for (name, config, seed) in [("A", ServeHTTPTests.loraA, 3), ("B", ServeHTTPTests.loraB, 4)] {
            let w = LoRAWeights(config: config, model: cfg)
            Fixtures.initLoRA(w, seed: UInt64(seed), nonZeroB: 1.5, bSeed: UInt64(seed + 10))
            try? AdapterFile.save(w, base: ServeHTTPTests.identity, to: path(name))
        }
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

    /// Starts the server on `n` ranks with A loaded; its launch and port.
    func start(_ n: Int) throws -> (BackgroundLaunch, Int) {
        let launch = try BackgroundLaunch.mpirun(
            n,
            ["serve"] + Self.baseArgs + [
                "--adapter", "A=\(Self.path("A"))", "--port", "0", "--max-batch", "3", "--max-batch-tokens", "8",
                "--collective-timeout", "30"
            ])
        var port = 0
        let up = launch.wait(timeout: 120) {
            let out = launch.output
            guard let r = out.range(of: "listening on http://127.0.0.1:") else { return false }
            port = Int(out[r.upperBound...].prefix { $0.isNumber }) ?? 0
            return port > 0
        }
        if !up { Launcher.killTree(launch.pid) }
        XCTAssertTrue(up, "the server starts: \(launch.output)")
        return (launch, port)
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

    /// Concurrent requests (one curl each): their token ids.
    func concurrent(_ port: Int, _ requests: [(String, String, Int)]) throws -> [[Int32]] {
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
            return ServeHTTPTests.ids(r)
        }
    }

    static let mixed: [(String, String, Int)] = [
        ("A", "name=Blue", 6), ("base", "hello there", 5), ("A", "xy", 7), ("base", "q", 4), ("A", "spice|food", 5)
    ]

    func testServeUnderMpirun2MixedAdaptersLiveLoadAndSIGTERM() throws {
        let (launch, port) = try start(2)
        guard port > 0 else { return }
        defer { if launch.process.isRunning { Launcher.killTree(launch.pid) } }
        // Load B live; it is listed.
        let load = try ServeHTTPTests.http(
            "POST", "/v1/adapters", #"{"name": "B", "path": "\#(Self.path("B"))"}"#, port: port)
        XCTAssertEqual(load.status, 201, load.body)
        let models = try ServeHTTPTests.http("GET", "/v1/models", port: port)
        XCTAssertTrue(models.body.contains(#""B""#), models.body)
        // Mixed-adapter concurrent requests.
        let requests = Self.mixed + [("B", "name=Blue", 6), ("B", "zz top", 5)]
        let got = try concurrent(port, requests)
        for (i, r) in requests.enumerated() {
            XCTAssertEqual(got[i], try Self.reference(r.0 == "base" ? nil : r.0, r.1, r.2), "\(r)")
        }
        XCTAssertNotEqual(got[0], got[5], "A and B differ on one prompt")
        // Delete B: gone for new requests.
        XCTAssertEqual(try ServeHTTPTests.http("DELETE", "/v1/adapters/B", port: port).status, 200)
        let gone = try ServeHTTPTests.http(
            "POST", "/v1/completions", #"{"model": "B", "prompt": "x", "max_tokens": 2}"#, port: port)
        XCTAssertEqual(gone.status, 404, gone.body)
        // One plan broadcast per step, and the model's AllReduces, in the metrics.
        let metrics = try ServeHTTPTests.http("GET", "/metrics", port: port).body
        XCTAssertTrue(
            metrics.contains(#"lora_dist_collectives_total{site="serve-plan",op="broadcast"}"#), metrics)
        XCTAssertTrue(metrics.contains(#"lora_dist_collectives_total{site="attn-out",op="allReduce"}"#), metrics)
        stop(launch, ranks: 2)
    }

    /// A rank that dies ends the job: mpirun returns non-zero, well within the test's bound.
    func testARankThatDiesEndsTheJob() throws {
        let (launch, port) = try start(2)
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

    /// Bad limits: a clear message and a non-zero exit before any rank starts serving.
    func testBadLimitsAreRefused() throws {
        let r = try Launcher.lora(
            ["serve"] + Self.baseArgs + ["--max-batch", "8", "--max-batch-tokens", "4", "--port", "0"], timeout: 60)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.output.contains("--max-batch-tokens must be at least --max-batch"), r.output)
    }

    func testServeUnderMpirun4MixedAdaptersAndSIGTERM() throws {
        let (launch, port) = try start(4)
        guard port > 0 else { return }
        defer { if launch.process.isRunning { Launcher.killTree(launch.pid) } }
        let got = try concurrent(port, Self.mixed)
        for (i, r) in Self.mixed.enumerated() {
            XCTAssertEqual(got[i], try Self.reference(r.0 == "base" ? nil : r.0, r.1, r.2), "\(r)")
        }
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
