import XCTest

@testable import LoRADist

/// A LoRA adapter saved by PEFT itself (fused c_attn, attention and MLP c_proj, c_fc; non-zero B)
/// loads into lora-dist and reproduces the logits PEFT computed, unmerged and merged, at TP 1, 2, 4.
/// Tolerance 2e-5 absolute (logits below 1; PEFT's values are float64 stored as float32). The
/// adapter and logits come from reference/make_gpt2_reference.py, run at test set-up.
final class PEFTParityTests: XCTestCase {
    func testPEFTAdapterReproducesPEFTLogits() throws {
        let dir = try ReferenceParityTests.fixture.get()
        let base = try SafeTensorsFile(path: dir + "/gpt2-ref.safetensors")
        let ref = try SafeTensorsFile(path: dir + "/peft-ref.safetensors")
        let cfg = try ReferenceParityTests.config(base)
        let ids = try ref.int64s("input_ids").map { Int32($0) }
        let want = try ref.floats("peft.logits")
        let peft = try PEFTAdapter.load(dir: dir + "/peft-adapter", model: cfg)
        XCTAssertEqual(peft.config.rank, 4)
        XCTAssertEqual(Set(peft.config.targets), Set(LoRATarget.available(in: .gpt2)))
        for tp in [1, 2, 4] {
            let res = try InProcessCommunicator.run(ranks: tp) { comm -> [(Float, Float)] in
                let m = try GPTModel(config: cfg, tp: comm, trainable: .lora(peft.config), training: false)
                let acts = try m.activations(batch: 2, seq: ids.count / 2, training: false)
                try m.base.load(from: SafeTensorsWeightSource(file: base))
                try PEFTAdapter.apply(peft, to: m.lora!)
                var out: [(Float, Float)] = []
                for merged in [false, true] {
                    if merged { m.loraRuntime?.merge() }
                    var pass = try ids.withUnsafeBufferPointer {
                        try m.forward(tokens: $0.baseAddress!, batch: 2, len: ids.count / 2, into: acts)
                    }
                    let zeros = [Float](repeating: 0, count: ids.count)
                    _ = try m.lossForward(&pass, targets: ids, weights: zeros, backward: false)
                    let vl = m.layout.localVocab
                    let lo = m.layout.vocabRange.lowerBound
                    var worst: Float = 0
                    var effect: Float = 0
                    let baseLogits = try base.floats("base.logits")
                    for i in 0..<ids.count {
                        for j in 0..<vl {
                            worst = max(worst, abs(acts.logits[i * vl + j] - want[i * 256 + lo + j]))
                            effect = max(effect, abs(want[i * 256 + lo + j] - baseLogits[i * 256 + lo + j]))
                        }
                    }
                    out.append((worst, effect))
                }
                return out
            }
            for rank in res {
                for (i, (worst, effect)) in rank.enumerated() {
                    XCTAssertLessThan(worst, 2e-5, "tp \(tp) \(i == 0 ? "unmerged" : "merged")")
                    XCTAssertGreaterThan(effect, 1e-3, "the adapter changes the logits")
                }
            }
        }
    }
}
