import Foundation
import XCTest

@testable import LoRADist
@testable import LoRADistServe

/// `lora-dist serve` with a file of Houlsby bottleneck adapters, sharded over real `mpirun -n 2`,
/// driven by curl on loopback: greedy completions equal `Generator` on the model `generate` builds
/// with the file; /metrics shows the adapters' AllReduce at `adapter-out` beside the base's; a live
/// LoRA load is refused with a JSON error while the server keeps serving; a bounded concurrent load
/// (`bench serve`) loses no request and counts every token; SIGTERM to rank 0 ends
/// every rank with 0. And the command refuses a bottleneck file beside another adapter.
final class MPIBottleneckServeTests: XCTestCase {
    static let dir = makeTempDir("mpi-bottleneck-serve")
    static let file = dir + "/h.safetensors"

    override class func setUp() {
        super.setUp()
        MPIServeTests.setUp()  // its LoRA adapter files A and B
        try? BottleneckServeTests.write(
            .houlsby, width: 8, config: MPIServeTests.cfg, base: MPIServeTests.identity, to: file)
    }

    static func reference(_ prompt: String, _ maxNew: Int) throws -> [Int32] {
        try InProcessCommunicator.run(ranks: 1) { comm in
            let m = try GPTModel.forDecoding(
                .random(MPIServeTests.cfg, seed: 8), adapter: file, tp: comm, precision: .fp32)
            let tok = ByteTokenizer()
            return try Generator(m).greedy(prompt: tok.encodeStart(prompt), maxNew: maxNew, stop: tok.eot)
        }[0]
    }

    func testHoulsbyShardedUnderMpirun2() throws {
        let launch = try BackgroundLaunch.mpirun(
            2,
            ["serve"] + MPIServeTests.baseArgs + [
                "--adapter", "h=\(Self.file)", "--placement", "sharded", "--port", "0", "--max-batch", "3",
                "--max-batch-tokens", "8", "--collective-timeout", "30"
            ])
        defer { if launch.process.isRunning { Launcher.killTree(launch.pid) } }
        let port = Self.port(launch)
        guard port > 0 else { return }
        var outputs: [[Int32]] = []
        for (prompt, n) in [("name=Blue", 6), ("hello there", 5), ("q", 4)] {
            let body =
                #"{"model": "h", "prompt": "\#(prompt)", "max_tokens": \#(n), "temperature": 0, "#
                + #""return_token_ids": true}"#
            let r = try ServeHTTPTests.http("POST", "/v1/completions", body, port: port)
            XCTAssertEqual(r.status, 200, r.body)
            outputs.append(ServeHTTPTests.ids(r))
            XCTAssertEqual(outputs.last, try Self.reference(prompt, n), prompt)
        }
        XCTAssertFalse(outputs[0].isEmpty)
        let models = try ServeHTTPTests.http("GET", "/v1/models", port: port)
        XCTAssertTrue(models.body.contains(#""h""#), models.body)
        let load = try ServeHTTPTests.http(
            "POST", "/v1/adapters", #"{"name": "A", "path": "\#(MPIServeTests.path("A"))"}"#, port: port)
        XCTAssertEqual(load.status, 400, load.body)
        XCTAssertTrue(load.body.contains("loads no LoRA adapter"), load.body)
        let again = try ServeHTTPTests.http(
            "POST", "/v1/completions",
            #"{"model": "h", "prompt": "q", "max_tokens": 4, "temperature": 0, "#
                + #""return_token_ids": true}"#, port: port)
        XCTAssertEqual(ServeHTTPTests.ids(again), outputs[2], "still serving after the refused load")
        // A bounded concurrent load (bench serve: 24 streamed requests from 6 clients, at most 120 s):
        // every request answered, every token the server generated counted.
        let json = Self.dir + "/bench.json"
        let prompts = Self.dir + "/prompts.txt"
        try "name=Blue\nfood=Thai\nxy\n".write(toFile: prompts, atomically: true, encoding: .utf8)
        let before = try BenchServeTests.generated(port)
        let bench = try Launcher.lora(
            [
                "bench", "serve", "--url", "http://127.0.0.1:\(port)", "--clients", "6", "--requests", "24",
                "--adapters", "h", "--prompt-file", prompts, "--max-tokens", "5", "--stream", "--timeout", "120",
                "--json", json
            ], timeout: 180)
        XCTAssertEqual(bench.status, 0, bench.output)
        let result = try JSONDecoder().decode(ServeBenchResult.self, from: Data(contentsOf: URL(fileURLWithPath: json)))
        XCTAssertEqual([result.ok, result.failed, result.notSent], [24, 0, 0], "\(result.failures)")
        XCTAssertEqual(result.outputTokens, try BenchServeTests.generated(port) - before)
        XCTAssertGreaterThanOrEqual(result.outputTokens, 24)
        let metrics = try ServeHTTPTests.http("GET", "/metrics", port: port).body
        for site in [#"site="adapter-out",op="allReduce""#, #"site="attn-out",op="allReduce""#] {
            XCTAssertTrue(metrics.contains("lora_dist_collectives_total{\(site)}"), metrics)
        }
        Self.stop(launch)
    }

    /// `serve --merge A` under mpirun -n 2 (each rank merges A into its own shard): greedy
    /// completions equal `generate`'s with A unmerged.
    func testMergedUnderMpirun2() throws {
        let launch = try BackgroundLaunch.mpirun(
            2,
            ["serve"] + MPIServeTests.baseArgs + [
                "--adapter", "A=\(MPIServeTests.path("A"))", "--merge", "A", "--port", "0", "--collective-timeout", "30"
            ])
        defer { if launch.process.isRunning { Launcher.killTree(launch.pid) } }
        let port = Self.port(launch)
        guard port > 0 else { return }
        for (prompt, n) in [("name=Blue", 6), ("q", 5)] {
            let body =
                #"{"model": "A", "prompt": "\#(prompt)", "max_tokens": \#(n), "temperature": 0, "#
                + #""return_token_ids": true}"#
            let r = try ServeHTTPTests.http("POST", "/v1/completions", body, port: port)
            XCTAssertEqual(r.status, 200, r.body)
            XCTAssertEqual(ServeHTTPTests.ids(r), try MPIServeTests.reference("A", prompt, n), prompt)
        }
        Self.stop(launch)
    }

    /// The port the server under `launch` prints, 0 (and a failure) if it does not start.
    static func port(_ launch: BackgroundLaunch) -> Int {
        var port = 0
        let up = launch.wait(timeout: 120) {
            guard let r = launch.output.range(of: "listening on http://127.0.0.1:") else { return false }
            port = Int(launch.output[r.upperBound...].prefix { $0.isNumber }) ?? 0
            return port > 0
        }
        XCTAssertTrue(up, "the server starts: \(launch.output)")
        return up ? port : 0
    }

    /// SIGTERM to rank 0 of a 2-rank server: every rank exits 0.
    static func stop(_ launch: BackgroundLaunch) {
        let pids = Launcher.ranks(below: launch.pid)
        XCTAssertEqual(pids.count, 2, "rank processes: \(pids)")
        for pid in pids where MPIServeTests.worldRank(pid) == 0 { kill(pid, SIGTERM) }
        let r = launch.finish(timeout: 60, since: Date())
        XCTAssertFalse(r.timedOut, r.output)
        XCTAssertEqual(r.status, 0, "every rank exits 0 after SIGTERM: \(r.output)")
    }

    func testABottleneckFileBesideAnotherAdapterIsRefused() throws {
        let r = try Launcher.lora(
            ["serve"] + MPIServeTests.baseArgs + [
                "--adapter", "h=\(Self.file)", "--adapter", "A=\(MPIServeTests.path("A"))", "--port", "0"
            ], timeout: 60)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.output.contains("adapter-h bottleneck adapters (bottleneck 8): it is served alone"), r.output)
    }
}
