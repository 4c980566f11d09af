import XCTest

@testable import LoRADist

/// The held-out evaluation is sized by the data, not by the model's context: generations end at
/// end-of-text or at the longest reference plus a margin (or --eval-max-tokens), the validation
/// loss runs over --valid-limit examples, progress lines carry an ETA, and --eval-before off
/// skips the pass before training.
final class EvaluationBoundTests: XCTestCase {
    func testBoundIsTheLongestReferencePlusAQuarterAtLeastEight() {
        let t = ByteTokenizer()
        let short = Example(context: "a\n", completion: "abcd")  // 4 bytes
        let long = Example(context: "b\n", completion: "x", references: ["x", String(repeating: "y", count: 40), "zz"])
        XCTAssertEqual(Evaluate.maxNewTokens(for: [short], tokenizer: t), 4 + 8)
        // Every reference counts, not only the completion: 40 + ⌈40 / 4⌉.
        XCTAssertEqual(Evaluate.maxNewTokens(for: [short, long], tokenizer: t), 40 + 10)
        XCTAssertEqual(
            Evaluate.maxNewTokens(
                for: [Example(context: "c", completion: String(repeating: "é", count: 21))], tokenizer: t),
            42 + 11, "tokens, not characters")
        XCTAssertEqual(Evaluate.maxNewTokens(for: [], tokenizer: t), 8)
    }

    func testProgressLinesCarryAnETAOnlyWhenAPassTakesLong() {
        var clock = 0.0
        var lines: [String] = []
        let m = ProgressMeter("generations", total: 48, interval: 10, clock: { clock }, say: { lines.append($0) })
        for done in 1...48 {
            clock += 0.5  // 24 s in all: lines after 10 s and 20 s, none at the end
            m.update(done)
        }
        XCTAssertEqual(lines, ["eval: 20/48 generations, 10.0 s, ETA 14 s", "eval: 40/48 generations, 20.0 s, ETA 4 s"])
        lines = []
        let quick = ProgressMeter("validation examples", total: 64, clock: { clock }, say: { lines.append($0) })
        for done in 1...64 {
            clock += 0.1
            quick.update(done)
        }
        XCTAssertEqual(lines, [], "a pass shorter than the interval says nothing")
    }

    func summary(_ run: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: run + "/summary.json")))
            as! [String: Any]
    }

    /// A random model with a 4,096-token context never emits end-of-text: it generates exactly the
    /// bound the data sets for every example, instead of running to the end of its context.
    func testARandomLongContextModelGeneratesTheDataBoundAndSkipsTheEvaluationBefore() throws {
        let run = makeTempDir("eval-bound")
        let shape = ["--layers", "2", "--dim", "32", "--heads", "4", "--context", "4096", "--vocab", "257"]
        let r = try Launcher.lora(
            ["train"] + shape + [
                "--steps", "1", "--batch", "2", "--eval-examples", "3",
                "--eval-before", "off", "--out", run
            ], timeout: 300)
        XCTAssertEqual(r.status, 0, r.output)
        let test = BuiltinTask.splits(train: 4000, valid: 200, test: 200, seed: 42).test
        let bound = Evaluate.maxNewTokens(for: Array(test.prefix(3)), tokenizer: ByteTokenizer())
        XCTAssertLessThan(bound, 200)
        let s = try summary(run)
        XCTAssertEqual(s["eval_max_new_tokens"] as? Int, bound)
        XCTAssertEqual(s["eval_tokens_generated"] as? Int, 3 * bound, "every example ran to the bound")
        // Figures that were not measured are left out (null).
        for key in ["eval_loss_before", "exact_match_before", "bleu_before", "e2e_before"] { XCTAssertNil(s[key], key) }
        XCTAssertNotNil(s["eval_loss_after"] as? Double)
        XCTAssertEqual(s["eval_loss_examples"] as? Int, 64)
        XCTAssertEqual(s["held_out_examples"] as? Int, 200)
        XCTAssertTrue(r.output.contains("validation loss on 64 of 200 held-out examples (--valid-limit)"), r.output)
        XCTAssertTrue(
            r.output.contains(
                """
                generations for 3 of 200 test examples (--eval-examples), each until end-of-text or \(bound) new tokens
                """
            ), r.output)
        XCTAssertTrue(r.output.contains("before: not evaluated (--eval-before off)"), r.output)
        XCTAssertFalse(r.output.contains("before: eval loss"), r.output)
        XCTAssertTrue(r.output.contains("after:  eval loss "), r.output)

        // An explicit bound, and no validation loss.
        let two = makeTempDir("eval-bound")
        let r2 = try Launcher.lora(
            ["train"] + shape + [
                "--steps", "1", "--batch", "2", "--eval-examples", "2",
                "--eval-max-tokens", "5", "--valid-limit", "0", "--out", two
            ], timeout: 300)
        XCTAssertEqual(r2.status, 0, r2.output)
        let s2 = try summary(two)
        XCTAssertEqual(s2["eval_max_new_tokens"] as? Int, 5)
        XCTAssertEqual(s2["eval_tokens_generated"] as? Int, 10)
        XCTAssertNil(s2["eval_loss_after"])
        XCTAssertNil(s2["eval_loss_examples"])
        XCTAssertNotNil(s2["exact_match_before"] as? Double, "the evaluation before runs by default")
        XCTAssertTrue(r2.output.contains("validation loss on 0 of 200 held-out examples (--valid-limit)"), r2.output)

        // evaluate takes the same bound from the examples it scores.
        let ev = makeTempDir("eval-bound")
        let r3 = try Launcher.lora(["evaluate"] + shape + ["--limit", "3", "--out", ev], timeout: 300)
        XCTAssertEqual(r3.status, 0, r3.output)
        let scores =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: ev + "/scores.json")))
            as! [String: Any]
        XCTAssertEqual(scores["maxNewTokens"] as? Int, bound)
        XCTAssertEqual(scores["tokensGenerated"] as? Int, 3 * bound)

        for bad in [
            ["--valid-limit", "-1"], ["--valid-limit", "some"], ["--eval-max-tokens", "0"], ["--eval-before", "maybe"]
        ] {
            let b = try Launcher.lora(["train"] + bad + ["--out", makeTempDir("eval-bound")], timeout: 60)
            XCTAssertNotEqual(b.status, 0, bad.joined(separator: " "))
            XCTAssertTrue(b.output.contains(bad[0]), b.output)
        }
    }
}
