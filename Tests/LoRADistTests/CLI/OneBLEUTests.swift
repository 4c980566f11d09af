import XCTest

@testable import LoRADist

/// One BLEU: the figure `train` and `evaluate` print, summary.json and scores.json hold is
/// sacrebleu.corpus_bleu (0–100) on the predictions.txt and references.txt they write, with every
/// reference of each example.
final class OneBLEUTests: XCTestCase {
    func json(_ path: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    }

    func sacreBLEU(_ dir: String) throws -> Double {
        let out = try PythonReference.check(
            "sacrebleu_files.py", [dir + "/predictions.txt", dir + "/references.txt"], timeout: 120)
        return try XCTUnwrap(Double(out.trimmingCharacters(in: .whitespacesAndNewlines)), out)
    }

    /// The number after "BLEU " on the first line of `output` that starts with `prefix`.
    func printedBLEU(_ output: String, line prefix: String) throws -> String {
        let line = try XCTUnwrap(
            output.split(separator: "\n").first { $0.hasPrefix(prefix) }, "no line \(prefix) in \(output)")
        let after = try XCTUnwrap(line.range(of: "BLEU "), String(line))
        return String(line[after.upperBound...].prefix { $0 != "," && $0 != " " })
    }

    func testTrainAndEvaluateReportSacreBLEUOfTheirFiles() throws {
        let csv = makeTempDir("bleu")
        let data = makeTempDir("bleu")
        try E2EFixture.write(csv)
        XCTAssertEqual(try Launcher.lora(["data", "--from-e2e", csv, "--out", data], timeout: 60).status, 0)
        // The base's own generations, so that references derived from them score well inside (0, 100).
        let first = makeTempDir("bleu")
        let r0 = try Launcher.lora(["evaluate", "--data", data, "--max-tokens", "24", "--out", first], timeout: 120)
        XCTAssertEqual(r0.status, 0, r0.output)
        let preds = try String(contentsOfFile: first + "/predictions.txt", encoding: .utf8).split(
            separator: "\n", omittingEmptySubsequences: false
        ).dropLast()
        var test = try JSONLines.read(data + "/test.jsonl")
        XCTAssertEqual(preds.count, test.count)
        for (i, p) in preds.enumerated() {
            // Several references per example: the generation with a word more, and two of the fixture's own.
            test[i].references = [test[i].completion, p + " today", "Blue Spice is by the riverside."]
        }
        let lines = try test.map {
            String(
                decoding: try JSONSerialization.data(withJSONObject: [
                    "context": $0.context, "completion": $0.completion, "references": $0.references!
                ]), as: UTF8.self)
        }
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: data + "/test.jsonl"))

        let ev = makeTempDir("bleu")
        let r = try Launcher.lora(["evaluate", "--data", data, "--max-tokens", "24", "--out", ev], timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
        let scores = try json(ev + "/scores.json")
        let bleu = try XCTUnwrap(scores["bleu"] as? Double)
        XCTAssertEqual((scores["e2e"] as! [String: Any])["bleu"] as? Double, bleu)
        let reference = try sacreBLEU(ev)
        XCTAssertEqual(bleu, reference, accuracy: 1e-9 * max(1, reference))
        XCTAssertTrue(bleu > 10 && bleu < 100, "a figure on the 0-100 scale, not a trivial one: \(bleu)")
        XCTAssertEqual(try printedBLEU(r.output, line: "BLEU "), fixed(bleu, 1))

        // train: its "after:" line, its E2E metrics line and summary.json say the same figure,
        // sacreBLEU's on its files. A learning rate this small leaves the generations as they were.
        let run = makeTempDir("bleu")
        let t = try Launcher.lora(
            [
                "train", "--data", data, "--steps", "1", "--batch", "2", "--lr", "1e-9", "--eval-examples", "2",
                "--eval-max-tokens", "24", "--lora-rank", "2", "--out", run
            ], timeout: 300)
        XCTAssertEqual(t.status, 0, t.output)
        let s = try json(run + "/summary.json")
        let after = try XCTUnwrap(s["bleu_after"] as? Double)
        XCTAssertEqual((s["e2e_after"] as! [String: Any])["bleu"] as? Double, after)
        let trainReference = try sacreBLEU(run)
        XCTAssertEqual(after, trainReference, accuracy: 1e-9 * max(1, trainReference))
        XCTAssertTrue(after > 10 && after < 100, "\(after)")
        XCTAssertEqual(try printedBLEU(t.output, line: "after: "), fixed(after, 1))
        XCTAssertEqual(try printedBLEU(t.output, line: "E2E metrics"), fixed(after, 1))
        XCTAssertEqual(try printedBLEU(t.output, line: "before:"), fixed(try XCTUnwrap(s["bleu_before"] as? Double), 1))
    }
}
