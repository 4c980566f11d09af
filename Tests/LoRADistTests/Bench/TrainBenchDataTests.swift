import Foundation
import XCTest

@testable import LoRADist

/// `bench train --data`: training steps on a dataset's real lengths through `train`'s data path.
/// Its real tokens, tokens computed and padding fraction are checked against the data's own lengths
/// (two steps of four examples over eight examples are one whole epoch, whatever its order), packed
/// (no padding) and with --packing off (rows of the longest example): on one rank, on two in-process
/// ranks (TP 2, and DP 2) and under mpirun (DP 2, and TP 2). Bad --data is refused with a message
/// and a non-zero exit.
final class TrainBenchDataTests: XCTestCase {
    /// Eight examples of different lengths (one with a two-byte character: lengths are in bytes).
    static let examples: [Example] = (0..<8).map { i in
        Example(
            context: "name=Caf\u{E9} \(i)|area=" + String(repeating: "x", count: 7 * i % 23) + "\n",
            completion: "It is a place" + String(repeating: " y", count: 3 * i % 11) + ".")
    }

    /// Tokens of each example a row holds: context and completion bytes (its end-of-text is only a target).
    static var lengths: [Int] { examples.map { $0.context.utf8.count + $0.completion.utf8.count } }

    static func writeData(_ examples: [Example]) throws -> String {
        let dir = makeTempDir("bench-data")
        try Data(try JSONLines.encode(examples).utf8).write(to: URL(fileURLWithPath: dir + "/train.jsonl"))
        return dir
    }

    static let args = ["--models", "tiny", "--methods", "lora", "--warmup", "0", "--peak-gflops", "0"]

    func result(_ r: Launcher.Result, _ json: String, _ label: String) throws -> TrainBenchResult? {
        XCTAssertEqual(r.status, 0, "\(label): \(r.output)")
        guard r.status == 0 else { return nil }
        let results = try JSONDecoder().decode(
            [TrainBenchResult].self, from: Data(contentsOf: URL(fileURLWithPath: json)))
        XCTAssertEqual(results.count, 1, label)
        return results.first
    }

    /// seq from the data (its longest example), every example kept; the figures are the data's.
    func check(_ res: TrainBenchResult, packed: Bool, _ label: String) {
        let n = Self.lengths
        let seq = n.max()!
        let real = Double(n.reduce(0, +)) / 2  // per step: the epoch's tokens over two steps
        let computed = packed ? real : Double(4 * seq)
        XCTAssertEqual(res.packing, packed, label)
        XCTAssertEqual(res.seq, seq, label)
        XCTAssertEqual(res.examples, 8, label)
        XCTAssertEqual(res.droppedTooLong, 0, label)
        XCTAssertEqual(res.data?.hasSuffix("/train.jsonl"), true, label)
        XCTAssertEqual(res.tokensComputedPerStep, computed, label)
        XCTAssertEqual(res.tokensPerStep, Int(real.rounded()), label)
        XCTAssertEqual(res.paddingFraction ?? -1, packed ? 0 : 1 - real / computed, accuracy: 1e-12, label)
        if !packed {
            XCTAssertGreaterThan(res.paddingFraction ?? 0, 0.1, "\(label): the lengths differ, so rows hold padding")
        }
        XCTAssertEqual(res.tokensPerSecond, real / res.secondsPerStep, accuracy: 1e-9 * res.tokensPerSecond, label)
        XCTAssertEqual(res.examplesPerSecond ?? 0, 4 / res.secondsPerStep, accuracy: 1e-9 * 4 / res.secondsPerStep)
        // FLOPs are those of what is computed, padding included: unpacked every row attends over seq
        // positions; packed each example over its own (the epoch's Σ len² over two steps).
        let cfg = GPTConfig.named("tiny")!
        let rows = FlopCount.trainPerToken(cfg, seq: seq, method: .lora, loraParams: res.trainableParams) * computed
        let squares = n.reduce(0) { $0 + $1 * $1 }
        let flops =
            packed
            ? FlopCount.trainPerPass(
                cfg, rows: n.reduce(0, +), squares: squares, method: .lora, loraParams: res.trainableParams) / 2
            : rows
        XCTAssertEqual(res.flopsPerStep, flops, accuracy: 1e-6 * res.flopsPerStep, label)
        if packed { XCTAssertLessThan(res.flopsPerStep, rows, "\(label): attention over Σ len², not rows × seq") }
    }

    func testPaddingFractionIsTheDatas() throws {
        let dir = try Self.writeData(Self.examples)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (label, extra) in [
            ("1 rank", []), ("TP 2 in-process", ["--local-ranks", "2"]),
            ("DP 2 in-process", ["--local-ranks", "2", "--tp", "1"])
        ] {
            for packing in [nil, "on", "off"] {
                let json = dir + "/bench-\(extra.count)-\(packing ?? "default").json"
                let r = try Launcher.lora(
                    ["bench", "train"] + Self.args + ["--data", dir, "--batch", "4", "--steps", "2", "--json", json]
                        + extra + (packing.map { ["--packing", $0] } ?? []),
                    timeout: 180)
                guard let res = try result(r, json, "\(label), --packing \(packing ?? "default")") else { continue }
                check(res, packed: packing != "off", "\(label), --packing \(packing ?? "default (on)")")
                XCTAssertTrue(r.output.contains("padding"), r.output)
            }
        }
    }

    func testUnderMPIEqualsTheData() throws {
        let dir = try Self.writeData(Self.examples)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (label, tp) in [("mpirun DP 2", "1"), ("mpirun TP 2", "2")] {
            for packing in ["on", "off"] {
                let json = dir + "/bench-tp\(tp)-\(packing).json"
                let r = try Launcher.mpirun(
                    2,
                    ["bench", "train"] + Self.args + [
                        "--data", dir, "--batch", "4", "--steps", "2", "--json", json, "--tp", tp, "--threads", "1",
                        "--packing", packing
                    ], timeout: 240)
                guard let res = try result(r, json, "\(label), --packing \(packing)") else { continue }
                check(res, packed: packing == "on", "\(label), --packing \(packing)")
                XCTAssertEqual(res.world, 2, label)
            }
        }
    }

    /// --seq below the longest example drops the longer ones, as train does, and pads to --seq.
    func testExplicitSeqDropsLongerExamples() throws {
        let dir = try Self.writeData(Self.examples)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let n = Self.lengths
        let seq = n.sorted()[5]  // keeps the six shortest (the lengths are distinct)
        XCTAssertEqual(Set(n).count, 8)
        let kept = n.filter { $0 <= seq }
        let json = dir + "/bench.json"
        let r = try Launcher.lora(
            ["bench", "train"] + Self.args + [
                "--data", dir, "--seq", String(seq), "--batch", "6", "--steps", "1", "--json", json, "--packing", "off"
            ], timeout: 180)
        guard let res = try result(r, json, "--seq \(seq)") else { return }
        XCTAssertEqual(res.seq, seq)
        XCTAssertEqual(res.examples, 6)
        XCTAssertEqual(res.droppedTooLong, 2)
        XCTAssertEqual(res.tokensPerStep, kept.reduce(0, +))
        XCTAssertEqual(res.paddingFraction ?? -1, 1 - Double(kept.reduce(0, +)) / Double(6 * seq), accuracy: 1e-12)
    }

    func testBadDataIsRefusedWithAMessage() throws {
        let empty = try Self.writeData([])
        let unusable = try Self.writeData([Example(context: "", completion: "no context")])
        let missing = FileManager.default.temporaryDirectory.appendingPathComponent("no-data-\(UUID().uuidString)").path
        defer { for d in [empty, unusable] { try? FileManager.default.removeItem(atPath: d) } }
        try Data().write(to: URL(fileURLWithPath: empty + "/train.jsonl"))
        let noFile = makeTempDir("bench-no-train")
        defer { try? FileManager.default.removeItem(atPath: noFile) }
        for (dir, message) in [
            (missing, "--data \(missing): no such directory"), (noFile, "\(noFile)/train.jsonl does not exist"),
            (empty, "\(empty)/train.jsonl is empty"), (unusable, "\(unusable)/train.jsonl has no usable examples")
        ] {
            let r = try Launcher.lora(["bench", "train"] + Self.args + ["--data", dir, "--steps", "1"], timeout: 60)
            XCTAssertNotEqual(r.status, 0, r.output)
            XCTAssertFalse(r.timedOut)
            XCTAssertTrue(r.output.contains(message), "expected \(message):\n\(r.output)")
        }
        // Under mpirun every rank stops with the message.
        let r = try Launcher.mpirun(
            2, ["bench", "train"] + Self.args + ["--data", missing, "--steps", "1"], timeout: 120)
        XCTAssertNotEqual(r.status, 0, r.output)
        XCTAssertFalse(r.timedOut)
        XCTAssertTrue(r.output.contains("--data \(missing): no such directory"), r.output)
    }
}
