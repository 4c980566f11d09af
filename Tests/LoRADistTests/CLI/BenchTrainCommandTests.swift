import XCTest

@testable import LoRADist

/// `bench train` end to end on a GPT-2 and a Llama-family shape in one run: with no
/// --lora-targets each model trains LoRA on every projection of its own family, and its result
/// counts exactly those parameters; FLOPs per step are FlopCount's for the model and its tokens per step.
final class BenchTrainCommandTests: XCTestCase {
    func testEachModelTrainsItsFamilysDefaultTargets() throws {
        let out = makeTempDir("bench-train")
        defer { try? FileManager.default.removeItem(atPath: out) }
        let r = try Launcher.lora(
            [
                "bench", "train", "--models", "tiny,llama-tiny", "--methods", "lora", "--steps", "1", "--warmup", "0",
                "--batch", "2", "--seq", "16", "--peak-gflops", "0", "--json", out + "/bench.json"
            ], timeout: 180)
        XCTAssertEqual(r.status, 0, r.output)
        let results = try JSONDecoder().decode(
            [TrainBenchResult].self, from: Data(contentsOf: URL(fileURLWithPath: out + "/bench.json")))
        XCTAssertEqual(results.map(\.model), ["tiny", "llama-tiny"])
        for res in results {
            let cfg = GPTConfig.named(res.model)!
            let lora = LoRAConfig(rank: 8, alpha: 32, targets: LoRATarget.available(in: cfg.family))
            XCTAssertEqual(res.trainableParams, lora.parameterCount(for: cfg), res.model)
            XCTAssertEqual(
                res.flopsPerStep,
                FlopCount.trainPerToken(cfg, seq: 16, method: .lora, loraParams: res.trainableParams)
                    * Double(res.tokensPerStep),
                accuracy: 1e-6 * res.flopsPerStep, res.model)
        }
        XCTAssertTrue(
            r.output.contains("q,k,v,o,gate,up,down") && r.output.contains("q,k,v,o,mlp_in,mlp_out"), r.output)
    }
}
