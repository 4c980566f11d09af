import XCTest

@testable import LoRADist

/// `lora-dist analyze` as a user runs it (AnalyzeTests holds the analysis itself).
extension AnalyzeTests {
    /// End to end: two adapters `train` wrote on the built-in base (r 2 and r 4 on q, v), analysed
    /// by the command, whose JSON numpy then reproduces from the same files.
    func testAnalyzeCommandOnAdaptersTrainWrote() throws {
        let d = tmp()
        for r in [2, 4] {
            let t = try Launcher.lora(
                [
                    "train", "--lora-targets", "q,v", "--lora-rank", "\(r)", "--steps", "3", "--batch", "4",
                    "--eval-examples", "0", "--valid-limit", "2", "--seed", "\(r)", "--out", d + "/r\(r)"
                ], timeout: 120)
            XCTAssertEqual(t.status, 0, t.output)
        }
        let adapters = [d + "/r2/adapter.safetensors", d + "/r4/adapter.safetensors"]
        let r = try Launcher.lora(
            ["analyze", "--adapter", adapters[0], "--adapter", adapters[1], "--out", d + "/an"], timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("subspace similarity φ(i, j)"), r.output)
        let report = try JSONDecoder().decode(
            AnalysisReport.self, from: Data(contentsOf: URL(fileURLWithPath: d + "/an/analysis.json")))
        XCTAssertEqual(report.deltaW.count, 2 * 4 * 2)
        XCTAssertEqual(report.similarity.count, 4 * 2 * 2)
        for e in report.deltaW {
            XCTAssertGreaterThan(e.figures.deltaNorm, 0)
            XCTAssertGreaterThan(
                e.figures.projectionOnOwnTop, e.figures.projectionOnRandom,
                "W's own top directions hold more of W than random ones")
        }
        for name in ["phi-A-q", "phi-B-q", "phi-A-v", "phi-B-v"] {
            let png = try Data(contentsOf: URL(fileURLWithPath: d + "/an/\(name).png"))
            XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], name)
        }
        try assertMatchesNumpy(
            report, base: Launcher.root.appendingPathComponent("models/tiny-base.safetensors").path, adapters: adapters)
        // An adapter of another base is refused by name.
        let other = try writeFixture(tmp())
        let bad = try Launcher.lora(["analyze", "--adapter", other.adapters[0], "--out", d + "/bad"], timeout: 60)
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.output.contains("the adapter was trained on base base.safetensors"), bad.output)
    }
}
