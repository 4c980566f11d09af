import Foundation
import XCTest

@testable import LoRADist

/// `launch/bench-peer`, the side-by-side comparison with transformers + PEFT, end to end on the tiny
/// shape (one case, one run a side, one step): both sides train the same parameters, and the driver
/// turns their outputs into its table and CSV.
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
}
