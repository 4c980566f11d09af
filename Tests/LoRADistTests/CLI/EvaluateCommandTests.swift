import XCTest

@testable import LoRADist

/// `evaluate` and train's end-of-training evaluation on E2E-format data: the prediction and
/// grouped-reference files the official E2E scripts read, the scores they hold, and the same
/// generations whether one replica or two data-parallel replicas produce them.
final class EvaluateCommandTests: XCTestCase {
    func tmp() -> String { makeTempDir("evaluate") }

    func testEvaluateAndTrainWriteTheFilesTheE2EScriptsRead() throws {
        let csv = tmp()
        let data = tmp()
        try E2EFixture.write(csv)
        XCTAssertEqual(try Launcher.lora(["data", "--from-e2e", csv, "--out", data], timeout: 60).status, 0)
        let one = tmp()
        let two = tmp()
        let r1 = try Launcher.lora(["evaluate", "--data", data, "--max-tokens", "24", "--out", one], timeout: 120)
        XCTAssertEqual(r1.status, 0, r1.output)
        XCTAssertTrue(r1.output.contains("2 examples, 4 references, greedy"), r1.output)
        // Two data-parallel replicas split the examples and gather the generations in order.
        let r2 = try Launcher.lora(
            ["evaluate", "--data", data, "--max-tokens", "24", "--local-ranks", "2", "--tp", "1", "--out", two],
            timeout: 120)
        XCTAssertEqual(r2.status, 0, r2.output)
        let pred = try String(contentsOfFile: one + "/predictions.txt", encoding: .utf8)
        XCTAssertEqual(pred, try String(contentsOfFile: two + "/predictions.txt", encoding: .utf8))
        let lines = pred.split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(lines.count, 3, "two predictions, one a line: \(pred.debugDescription)")
        XCTAssertEqual(
            try String(contentsOfFile: one + "/references.txt", encoding: .utf8),
            """
            Zizzi is a coffee shop, rated 5 out of 5.
            Rated 5 out of 5, Zizzi is a coffee shop. It is popular.
            The coffee shop Zizzi has a rating of 5 out of 5.

            Blue Spice is by the riverside.

            """)
        // scores.json holds the E2E metrics of exactly those predictions.
        let scores =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: one + "/scores.json")))
            as! [String: Any]
        let e2e = scores["e2e"] as! [String: Any]
        let test = try JSONLines.read(data + "/test.jsonl")
        let want = E2EMetrics.score(hypotheses: lines.prefix(2).map(String.init), references: test.map(\.allReferences))
        XCTAssertEqual(e2e["bleu"] as! Double, want.bleu, accuracy: 1e-12)
        XCTAssertEqual(e2e["cider"] as! Double, want.cider, accuracy: 1e-12)
        XCTAssertEqual(e2e["references"] as? Int, 4)

        // train writes the same files for its held-out generations, with the paper's decoding here.
        let run = tmp()
        let t = try Launcher.lora(
            [
                "train", "--data", data, "--steps", "2", "--batch", "2", "--eval-examples", "2", "--paper-decoding",
                "--lora-targets", "q,v", "--lora-rank", "2", "--out", run
            ], timeout: 300)
        XCTAssertEqual(t.status, 0, t.output)
        XCTAssertTrue(
            t.output.contains(
                "E2E metrics (beam 10, length penalty 0.8, no repeated 4-grams, 2 examples, 4 references): BLEU "),
            t.output)
        XCTAssertEqual(
            try String(contentsOfFile: run + "/references.txt", encoding: .utf8),
            try String(contentsOfFile: one + "/references.txt", encoding: .utf8))
        XCTAssertEqual(
            try String(contentsOfFile: run + "/predictions.txt", encoding: .utf8).split(
                separator: "\n", omittingEmptySubsequences: false
            ).count, 3)
        let summary =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: run + "/summary.json")))
            as! [String: Any]
        XCTAssertNotNil(summary["e2e_after"] as? [String: Any])
        XCTAssertEqual(summary["decoding"] as? String, "beam 10, length penalty 0.8, no repeated 4-grams")
    }

    /// --paper-e2e-recipe: q, v at r 4 (4 layers × 2 targets × 4 × (128 + 128) = 8,192 parameters on the
    /// built-in base), batch 8 for 5 epochs (5 examples: ⌈25 / 8⌉ = 4 steps), lr 2e-4 after 500
    /// warm-up steps, and the paper's decoding for the evaluation.
    func testPaperE2ERecipeIsOneFlag() throws {
        let csv = tmp()
        let data = tmp()
        let run = tmp()
        try E2EFixture.write(csv)
        XCTAssertEqual(try Launcher.lora(["data", "--from-e2e", csv, "--out", data], timeout: 60).status, 0)
        let t = try Launcher.lora(
            ["train", "--paper-e2e-recipe", "--data", data, "--eval-examples", "1", "--out", run], timeout: 300)
        XCTAssertEqual(t.status, 0, t.output)
        let summary =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: run + "/summary.json")))
            as! [String: Any]
        XCTAssertEqual(summary["steps"] as? Int, 4)
        XCTAssertEqual(summary["trainable_params"] as? Int, 8192)
        // No --seq: the longest training example sets the sequence length (at most the context, 192).
        let seq = summary["seq"] as! Int
        XCTAssertLessThanOrEqual(seq, 192)
        XCTAssertEqual(summary["tokens_per_step"] as? Int, 8 * seq)
        XCTAssertEqual(summary["decoding"] as? String, "beam 10, length penalty 0.8, no repeated 4-grams")
        let header = try AdapterFile.header(run + "/adapter.safetensors").lora
        XCTAssertEqual(header, LoRAConfig(rank: 4, alpha: 32, targets: [.q, .v], dropout: 0.1))
        let lines = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 4)
        let lrs = try lines.map {
            (try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any])["lr"] as! Double
        }
        for (k, lr) in lrs.enumerated() {
            XCTAssertEqual(lr, 2e-4 * Double(k + 1) / 500, accuracy: 1e-9, "warm-up step \(k + 1)")
        }
    }
}
