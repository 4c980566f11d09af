import Foundation
import XCTest

@testable import LoRADist
@testable import LoRADistServe

/// `lora-dist serve --local-ranks 2`: the tensor-parallel server on ranks that are threads of one
/// process (the twin of mpirun's): greedy completions on an adapter and the base equal `Generator`
/// with that adapter alone, /metrics shows the plan broadcast each step and the base's AllReduces,
/// and SIGTERM drains and the process exits 0; a request in flight when SIGTERM comes is answered
/// whole before the process exits.
final class LocalRanksServeTests: XCTestCase {
    override class func setUp() {
        super.setUp()
        ServeHTTPTests.prepareAdapters()
        MPIServeTests.setUp()  // its long-context base's adapter files
    }

    func testLocalRanksServeEqualsGenerateAndExitsZeroOnSIGTERM() throws {
        let server = try BenchServeTests.ServeProcess([
            "--local-ranks", "2", "--adapter", "A=\(ServeHTTPTests.adapterPath("A"))", "--collective-timeout", "30"
        ])
        defer { if server.process.isRunning { Launcher.killTree(server.process.processIdentifier) } }
        for (model, prompt, n) in [("A", "name=Blue", 6), ("base", "hello", 5)] {
            let body =
                #"{"model": "\#(model)", "prompt": "\#(prompt)", "max_tokens": \#(n), "temperature": 0, "#
                + #""return_token_ids": true}"#
            let r = try ServeHTTPTests.http("POST", "/v1/completions", body, port: server.port)
            XCTAssertEqual(r.status, 200, r.body)
            XCTAssertEqual(
                ServeHTTPTests.ids(r),
                try ServeHTTPTests.reference(model == "base" ? nil : model, prompt: prompt, maxNew: n), model)
        }
        let metrics = try ServeHTTPTests.http("GET", "/metrics", port: server.port).body
        for site in [#"site="serve-plan",op="broadcast""#, #"site="mlp-out",op="allReduce""#] {
            XCTAssertTrue(metrics.contains("lora_dist_collectives_total{\(site)}"), metrics)
        }
        server.stop()
        XCTAssertEqual(server.process.terminationReason, .exit)
        XCTAssertEqual(server.process.terminationStatus, 0, "SIGTERM drains and exits 0")
    }

    /// SIGTERM while a long request is running (800 tokens: an adapter and prompt that run 2000 on
    /// MPIServeTests' base without an end of text): it is answered whole, its tokens `generate`'s,
    /// and then the process exits 0.
    func testSIGTERMDrainsARequestInFlight() throws {
        let (adapter, prompt, long) = ("A", "p30", 800)
        let reference = try MPIServeTests.reference(adapter, prompt, long)
        XCTAssertEqual(reference.count, long, "\(adapter) on \(prompt) runs \(long) tokens")
        let server = try BenchServeTests.ServeProcess(
            ["--local-ranks", "2", "--adapter", "A=\(MPIServeTests.path("A"))", "--collective-timeout", "30"],
            base: MPIServeTests.baseArgs)
        defer { if server.process.isRunning { Launcher.killTree(server.process.processIdentifier) } }
        let out = ServeHTTPTests.dir + "/drained.json"
        let body = #"{"model": "A", "prompt": "p30", "max_tokens": 800, "temperature": 0, "return_token_ids": true}"#
        let client = Process()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        client.arguments = [
            "-s", "-m", "120", "-o", out, "-H", "Content-Type: application/json", "-d", body,
            "http://127.0.0.1:\(server.port)/v1/completions"
        ]
        try client.run()
        defer { if client.isRunning { client.terminate() } }
        // The request is queued or running: then SIGTERM.
        let t0 = Date()
        var queued = 0
        while queued == 0 && Date().timeIntervalSince(t0) < 60 {
            let m = try ServeHTTPTests.http("GET", "/metrics", port: server.port).body
            queued = MPIServeTests.sample(m, "lora_dist_queue_length")
            if queued == 0 { usleep(5_000) }
        }
        XCTAssertEqual(queued, 1, "the request is in flight")
        server.stop()
        client.waitUntilExit()
        XCTAssertEqual(server.process.terminationStatus, 0, "SIGTERM drains and exits 0")
        let answer = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out)))
        let choice = ((answer as? [String: Any])?["choices"] as? [[String: Any]])?.first
        XCTAssertEqual((choice?["token_ids"] as? [Int])?.map { Int32($0) }, reference, "answered whole")
        XCTAssertEqual(choice?["finish_reason"] as? String, "length")
    }
}
