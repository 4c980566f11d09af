import Foundation
import XCTest

@testable import LoRADist

/// A packed pass against transformers running each example on its own: the Llama-family fixtures
/// of reference/make_llama_fixture.py hold transformers' logits of two rows, each a sequence of its
/// own; causal attention makes a prefix's logits those of the row's first positions. Packing a
/// prefix of row 1 and then all of row 0 into one pass (so row 0 starts mid-pass, its positions and
/// rotary angles from 0 again) must give each token transformers' logits, at TP 1 and 2.
/// Tolerance: 1e-5 relative to the largest logit, as LlamaParityTests. Without Python and its
/// reference packages this test fails, never skips.
final class PackedParityTests: XCTestCase {
    /// Fixtures of this class's own (LlamaParityTests and HFParityTests remove theirs when they end).
    static let llamaFixture: Result<String, Error> = Result {
        let dir = makeTempDir("packed-parity-llama")
        _ = try PythonReference.check("make_llama_fixture.py", [dir])
        return dir
    }
    static let gpt2Fixture: Result<String, Error> = Result {
        let dir = makeTempDir("packed-parity-gpt2")
        try HFParityTests.reference(["fixture", dir])
        return dir
    }

    override class func tearDown() {
        for f in [llamaFixture, gpt2Fixture] {
            if case .success(let dir) = f { try? FileManager.default.removeItem(atPath: dir) }
        }
        super.tearDown()
    }

    /// The base `cfg` read from `source`, on TP 1 and 2, packing a prefix of row 1 then row 0 of
    /// `ids` (two rows): each token's logits against `want` (transformers' [2·T, V]).
    static func check(
        _ cfg: GPTConfig, _ source: WeightSource, ids: [Int32], want: [Float], tolerance: Float, _ label: String
    ) throws {
        let T = ids.count / 2
        let V = want.count / ids.count
        // (row, tokens): a prefix of row 1, then row 0 whole.
        let parts = [(1, T - 3), (0, T)]
        let tokens = parts.flatMap { row, len in ids[(row * T)..<(row * T + len)] }
        let seqs = Sequences(lengths: parts.map(\.1))
        for tp in [1, 2] {
            let logits = try InProcessCommunicator.run(ranks: tp) { comm -> (Range<Int>, [Float]) in
                let m = try GPTModel(config: cfg, tp: comm, trainable: nil)
                try m.base.load(from: source)
                let acts = try m.activations(batch: 2, seq: T, training: false)
                var pass = try tokens.withUnsafeBufferPointer {
                    try m.forward(tokens: $0.baseAddress!, sequences: seqs, into: acts)
                }
                let w = [Float](repeating: 1, count: pass.rows)
                _ = try m.lossForward(&pass, targets: tokens, weights: w, backward: false)
                let vl = m.layout.localVocab
                return (m.layout.vocabRange, Array(UnsafeBufferPointer(start: acts.logits, count: pass.rows * vl)))
            }
            for (vocab, got) in logits {
                let valid = vocab.clamped(to: 0..<V)
                var mine: [Float] = []
                var truth: [Float] = []
                var r = 0
                for (row, len) in parts {
                    for t in 0..<len {
                        for j in valid {
                            mine.append(got[(r + t) * vocab.count + j - vocab.lowerBound])
                            truth.append(want[(row * T + t) * V + j])
                        }
                    }
                    r += len
                }
                LlamaParityTests.checkClose(mine, truth, tolerance: tolerance, "\(label) packed, TP \(tp), \(valid)")
            }
        }
    }

    /// The Llama family (rotary angles from 0 again for the second example): Llama and Qwen2.
    func testPackedLlamaFamilyExamplesGiveTransformersLogitsOfEachAlone() throws {
        for v in ["llama", "qwen2"] {
            let dir = try Self.llamaFixture.get() + "/" + v
            let (cfg, source) = try LlamaFiles.open(dir + "/base")
            let f = try SafeTensorsFile(path: dir + "/expected.safetensors")
            let ids = try f.int64s("input_ids").map { Int32($0) }
            try Self.check(cfg, source, ids: ids, want: try f.floats("logits"), tolerance: 1e-5, v)
        }
    }

    /// GPT-2 (its position table's rows from 0 again), at HFParityTests' logit tolerance.
    func testPackedGPT2ExamplesGiveTransformersLogitsOfEachAlone() throws {
        let dir = try Self.gpt2Fixture.get()
        let f = try SafeTensorsFile(path: dir + "/expected.safetensors")
        let opened = try BaseFiles.open(.file(dir + "/base"))
        let ids = try f.int64s("input_ids").map { Int32($0) }
        try Self.check(
            opened.config, opened.weights, ids: ids, want: try f.floats("base.logits"), tolerance: 1e-4, "gpt2")
    }
}
