import Foundation
import XCTest

@testable import LoRADist

/// `launch/bench-peer`, the side-by-side comparison with transformers + PEFT, end to end on the tiny
/// shape (one case, one run a side, one step): both sides train the same parameters, and the driver
/// turns their outputs into its table and CSV. On real lengths (`--data`), the PEFT side's collated
/// batches hold lora-dist's examples, ids and loss mask, and the figures are the data's.
final class PeerBenchTests: XCTestCase {
    func testLoRAOnQVHasAsManyParametersAsPEFTOnFusedCAttn() throws {
        // lora-dist: r·(d + d) for each of q and v; PEFT on c_attn: r·(d + 3d). gpt2: 147,456.
        for name in ["tiny", "gpt2"] {
            let c = GPTConfig.named(name)!
            XCTAssertEqual(
                LoRAConfig(rank: 4, targets: [.q, .v]).parameterCount(for: c), c.nLayer * 4 * (c.nEmbd + 3 * c.nEmbd))
        }
        XCTAssertEqual(LoRAConfig(rank: 4, targets: [.q, .v]).parameterCount(for: GPTConfig.named("gpt2")!), 147_456)
    }

    /// On the tiny GPT-2 and on the tiny Llama-family shape (PEFT's LlamaForCausalLM, LoRA on q_proj and v_proj).
    func testPeerBenchAgreesOnTrainableParamsAndTabulates() throws {
        for model in ["tiny", "llama-tiny"] { try checkPeerBench(model) }
    }

    func checkPeerBench(_ model: String) throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("bench-peer-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        let driver = Launcher.root.appendingPathComponent("launch/bench-peer").path
        let r = try Launcher.run(
            [
                PythonReference.python, driver, "--model", model, "--cases", "lora:fp32:1", "--reps", "1",
                "--warmup", "0", "--steps", "1", "--out", out, "--lora-dist", Launcher.binary,
                "--python", PythonReference.python
            ], timeout: 180)
        guard r.status == 0 && !r.timedOut else {
            return XCTFail(
                "\(model): launch/bench-peer failed (status \(r.status)\(r.timedOut ? ", timed out" : ""))"
                    + (r.output.contains("No module named")
                        ? """
                        ; torch, transformers or peft are missing: run launch/setup --no-build --python (or set \
                        LORA_DIST_PYTHON)
                        """
                        : "")
                    + ":\n\(r.output.suffix(3000))")
        }
        let csv = try String(contentsOfFile: out + "/peer.csv", encoding: .utf8).split(whereSeparator: \.isNewline).map
        { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        XCTAssertEqual(csv.count, 2, "\(model): a header and one case")
        guard csv.count == 2 else { return }
        let row = Dictionary(uniqueKeysWithValues: zip(csv[0], csv[1]))
        let expected = LoRAConfig(rank: 4, targets: [.q, .v]).parameterCount(for: GPTConfig.named(model)!)
        XCTAssertEqual(row["case"], "lora:fp32:1")
        XCTAssertEqual(row["ours_trainable"].flatMap { Int($0) }, expected, model)
        XCTAssertEqual(row["peft_trainable"].flatMap { Int($0) }, expected, model)
        let ours = try XCTUnwrap(row["ours_tok_s"].flatMap(Double.init))
        let peft = try XCTUnwrap(row["peft_tok_s"].flatMap(Double.init))
        XCTAssertGreaterThan(ours, 0)
        XCTAssertGreaterThan(peft, 0)
        XCTAssertEqual(try XCTUnwrap(row["ratio"].flatMap(Double.init)), ours / peft, accuracy: 1e-9 * ours / peft)
        XCTAssertGreaterThan(try XCTUnwrap(row["ours_rss_mib"].flatMap(Double.init)), 0)
        XCTAssertGreaterThan(try XCTUnwrap(row["peft_rss_mib"].flatMap(Double.init)), 0)
        let md = try String(contentsOfFile: out + "/peer.md", encoding: .utf8)
        XCTAssertTrue(md.contains("| lora fp32, 1 core | 1 rank × 1 thread |"), md)
        let grouped = String(
            String(expected).reversed().enumerated().flatMap {
                $0.offset > 0 && $0.offset % 3 == 0 ? [",", $0.element] : [$0.element]
            }.reversed())
        XCTAssertTrue(r.output.contains("\(grouped) trainable parameters each"), r.output)
    }

    /// Examples for the real-length mode: the built-in task's, one with two- and three-byte
    /// characters, one without a context and one longer than the tiny shape's context of 192 (both
    /// dropped by either side).
    static func dataDir() throws -> String {
        let dir = makeTempDir("peer-data")
        var ex = BuiltinTask.splits(train: 9, valid: 0, test: 0, seed: 3).train
        ex.insert(Example(context: "name=Caf\u{E9}|food=\u{20AC}\n", completion: "Caf\u{E9} costs \u{20AC}."), at: 2)
        ex.insert(Example(context: "", completion: "no context"), at: 4)
        ex.insert(Example(context: "name=Long\n", completion: String(repeating: "z", count: 200)), at: 6)
        try Data(try JSONLines.encode(ex).utf8).write(to: URL(fileURLWithPath: dir + "/train.jsonl"))
        return dir
    }

    /// reference/peer_peft.py's batches (DataCollatorForSeq2Seq over lora-dist's byte ids) hold, step
    /// by step, the examples lora-dist's Batcher puts in its micro-batch, with the same token ids and
    /// the same targets and loss mask (labels -100 where lora-dist's mask is 0), padded to the batch's
    /// longest example; three steps of four over ten examples cross an epoch.
    func testPEFTBatchesAreLoRADistsExamplesIdsAndMask() throws {
        let dir = try Self.dataDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try Launcher.run(
            [
                PythonReference.python, Launcher.root.appendingPathComponent("reference/peer_peft.py").path,
                "--model", "tiny", "--data", dir, "--batch", "4", "--seed", "7", "--dump-batches", "3"
            ], timeout: 180)
        guard r.status == 0, let line = r.output.split(separator: "\n").last(where: { $0.hasPrefix("{") }) else {
            return XCTFail("peer_peft.py --dump-batches failed (status \(r.status)):\n\(r.output.suffix(3000))")
        }
        let dump = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        let data = try TokenDataset(
            examples: try JSONLines.read(dir + "/train.jsonl"), tokenizer: ByteTokenizer(), seq: 192, source: dir)
        XCTAssertEqual(data.count, 10)
        XCTAssertEqual(dump["examples"] as? Int, data.count)
        XCTAssertEqual(dump["dropped"] as? Int, data.droppedTooLong)
        XCTAssertEqual(data.droppedTooLong, 2)
        var o = TrainOptions()
        o.globalBatch = 4
        o.microBatch = 4
        o.seq = 192
        o.packing = false  // one example a row, as transformers' batches hold them
        let mb = MicroBatch(batch: 4, seq: 192)
        let batcher = Batcher(data: data, seed: 7, globalBatch: 4)
        let batches = try XCTUnwrap(dump["batches"] as? [[String: Any]])
        XCTAssertEqual(batches.count, 3)
        for (k, b) in batches.enumerated() {
            _ = batcher.next(into: [mb], options: o, replica: 0, dp: 1)
            let examples = try XCTUnwrap(b["examples"] as? [Int])
            XCTAssertEqual(examples, batcher.stepExamples, "step \(k)")
            let ids = try XCTUnwrap(b["input_ids"] as? [[Int]])
            let attention = try XCTUnwrap(b["attention_mask"] as? [[Int]])
            let labels = try XCTUnwrap(b["labels"] as? [[Int]])
            let width = examples.map { data.examples[$0].tokens.count }.max()!
            for r in 0..<4 {
                let e = data.examples[examples[r]]
                let n = e.tokens.count
                XCTAssertEqual(ids[r].count, width, "step \(k): padded to the batch's longest example")
                XCTAssertEqual(ids[r].prefix(n).map(Int32.init), e.tokens, "step \(k) row \(r): the same ids")
                XCTAssertEqual(attention[r], [Int](repeating: 1, count: n) + [Int](repeating: 0, count: width - n))
                XCTAssertEqual(Array(ids[r][n...]), [Int](repeating: 256, count: width - n))
                XCTAssertEqual(Array(labels[r][n...]), [Int](repeating: -100, count: width - n))
                XCTAssertEqual(labels[r][0], -100)
                // lora-dist's position t predicts token t + 1: transformers' label t + 1.
                for t in 0..<mb.seq {
                    let i = r * mb.seq + t
                    if t < n - 1 {
                        XCTAssertEqual(Int(mb.tokens[i]), ids[r][t], "step \(k) row \(r) position \(t)")
                        XCTAssertEqual(Int(mb.targets[i]), ids[r][t + 1])
                        XCTAssertEqual(mb.mask[i], labels[r][t + 1] == -100 ? 0 : 1, "step \(k) row \(r) position \(t)")
                        if labels[r][t + 1] != -100 { XCTAssertEqual(labels[r][t + 1], ids[r][t + 1]) }
                    } else {
                        XCTAssertEqual(mb.mask[i], 0)
                    }
                }
            }
        }
        // The two-byte é (0xC3 0xA9) and the three-byte € (0xE2 0x82 0xAC) are bytes on both sides.
        let cafe = try XCTUnwrap(data.examples.first { $0.tokens.contains(0xE2) })
        XCTAssertEqual(Array(cafe.tokens.prefix(10)), [110, 97, 109, 101, 61, 67, 97, 102, 0xC3, 0xA9])
    }

    /// `launch/bench-peer --data` on the tiny shape: one row per side, all training the same
    /// parameters; the PEFT side's padding is that of the first batch of lora-dist's order padded to
    /// its longest example, lora-dist's unpacked padding that of rows of the data's longest example,
    /// and packed lora-dist computes the examples' own tokens and no padding.
    func testPeerBenchOnRealLengthsTabulatesTheDatasFigures() throws {
        let dir = try Self.dataDir()
        let out = makeTempDir("bench-peer-data")
        defer { for d in [dir, out] { try? FileManager.default.removeItem(atPath: d) } }
        let r = try Launcher.run(
            [
                PythonReference.python, Launcher.root.appendingPathComponent("launch/bench-peer").path, "--data", dir,
                "--model", "tiny", "--cases", "lora:fp32:1", "--reps", "1", "--warmup", "0", "--steps", "1",
                "--batch", "4", "--seed", "7", "--out", out, "--lora-dist", Launcher.binary, "--python",
                PythonReference.python
            ], timeout: 300)
        guard r.status == 0 && !r.timedOut else {
            return XCTFail("launch/bench-peer --data failed (status \(r.status)):\n\(r.output.suffix(3000))")
        }
        let csv = try String(contentsOfFile: out + "/peer-data.csv", encoding: .utf8).split(whereSeparator: \.isNewline)
            .map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        let rows = csv.dropFirst().map { Dictionary(uniqueKeysWithValues: zip(csv[0], $0)) }
        let bySide = Dictionary(uniqueKeysWithValues: rows.map { ($0["side"] ?? "", $0) })
        XCTAssertEqual(Set(bySide.keys), ["packed", "unpacked", "peft"], "\(rows)")
        let data = try TokenDataset(
            examples: try JSONLines.read(dir + "/train.jsonl"), tokenizer: ByteTokenizer(), seq: 192, source: dir)
        let batcher = Batcher(data: data, seed: 7, globalBatch: 4)
        var o = TrainOptions()
        o.globalBatch = 4
        o.microBatch = 4
        o.seq = 192
        _ = batcher.next(into: [MicroBatch(batch: 4, seq: 192)], options: o, replica: 0, dp: 1)
        let n = batcher.stepExamples.map { data.examples[$0].tokens.count }
        let seq = data.examples.map { $0.tokens.count - 1 }.max()!
        func value(_ side: String, _ key: String) throws -> Double {
            try XCTUnwrap(bySide[side]?[key].flatMap(Double.init), "\(side) \(key)")
        }
        XCTAssertEqual(try value("peft", "padding"), 1 - Double(n.reduce(0, +)) / Double(4 * n.max()!), accuracy: 1e-12)
        XCTAssertEqual(try value("peft", "computed_per_step"), Double(4 * n.max()!))
        XCTAssertEqual(
            try value("unpacked", "padding"), 1 - Double(n.reduce(0, +) - 4) / Double(4 * seq), accuracy: 1e-12)
        XCTAssertEqual(try value("unpacked", "computed_per_step"), Double(4 * seq))
        XCTAssertEqual(try value("packed", "padding"), 0)
        XCTAssertEqual(try value("packed", "computed_per_step"), Double(n.reduce(0, +) - 4))
        let expected = LoRAConfig(rank: 4, targets: [.q, .v]).parameterCount(for: GPTConfig.named("tiny")!)
        for side in ["packed", "unpacked", "peft"] {
            XCTAssertEqual(try value(side, "trainable"), Double(expected), side)
            XCTAssertGreaterThan(try value(side, "ex_s"), 0, side)
            XCTAssertGreaterThan(try value(side, "rss_mib"), 0, side)
        }
        XCTAssertEqual(
            try value("unpacked", "vs_peft"), try value("unpacked", "ex_s") / value("peft", "ex_s"), accuracy: 1e-9)
        XCTAssertEqual(
            try value("packed", "vs_unpacked"), try value("packed", "ex_s") / value("unpacked", "ex_s"), accuracy: 1e-9)
        let md = try String(contentsOfFile: out + "/peer-data.md", encoding: .utf8)
        XCTAssertTrue(md.contains("| lora fp32, 1 core | PEFT + HF collation |"), md)
        XCTAssertTrue(r.output.contains("DataCollatorForSeq2Seq"), r.output)
    }
}
