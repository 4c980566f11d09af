import Foundation
import XCTest

@testable import LoRADist
@testable import LoRADistServe

/// `lora-dist serve --local-ranks 2`: the tensor-parallel server on ranks that are threads of one
/// process (the twin of mpirun's): greedy completions on an adapter and the base equal `Generator`
/// with that adapter alone, /metrics shows the plan broadcast each step and the base's AllReduces,
/// and SIGTERM drains and the process exits 0.
final class LocalRanksServeTests: XCTestCase {
    override class func setUp() {
        super.setUp()
        ServeHTTPTests.prepareAdapters()
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
}
