import XCTest

@testable import LoRADist

/// Parity with transformers' GPT2LMHeadModel and a loralib-style q/v LoRA, from the reference
/// values reference/make_gpt2_reference.py computes at test set-up (float64, stored float32).
/// Tolerances: logits 2e-5 absolute (values below 1), loss 1e-5, gradients 1e-4 relative to the
/// largest entry of each tensor — at TP = 1 and TP = 2, 4 in-process. Without Python and its
/// reference packages these tests fail; they never skip.
final class ReferenceParityTests: XCTestCase {
    /// The directory the reference script wrote, once per test process.
    static let fixture: Swift.Result<String, Error> = Swift.Result {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gpt2-reference-\(UUID().uuidString)")
            .path
        _ = try PythonReference.check("make_gpt2_reference.py", [dir])
        return dir
    }

    static func reference() throws -> SafeTensorsFile {
        try SafeTensorsFile(path: try fixture.get() + "/gpt2-ref.safetensors")
    }

    static func config(_ f: SafeTensorsFile) throws -> GPTConfig {
        let meta = try JSONSerialization.jsonObject(with: Data(f.metadata["config"]!.utf8)) as! [String: Any]
        return GPTConfig(
            nLayer: meta["n_layer"] as! Int, nEmbd: meta["n_embd"] as! Int, nHead: meta["n_head"] as! Int,
            vocabSize: meta["vocab_size"] as! Int, nPositions: meta["n_positions"] as! Int,
            lnEps: Float(meta["layer_norm_epsilon"] as! Double))
    }

    struct Result {
        var loss: Double
        var logits: [Float]
        var vocab: Range<Int>
        var grads: [String: [Float]]
    }

    /// One forward (and backward) on `tp` ranks; LoRA from the reference when `lora`, full FT grads when `full`.
    static func run(tp: Int, lora: Bool, full: Bool) throws -> [Result] {
        let f = try reference()
        let cfg = try config(f)
        let ids = try f.int64s("input_ids").map { Int32($0) }
        let tg = try f.int64s("targets").map { Int32($0) }
        let B = 2
        let T = ids.count / 2
        let w = [Float](repeating: 1 / Float(ids.count), count: ids.count)
        return try InProcessCommunicator.run(ranks: tp) { comm in
            let lc = lora ? LoRAConfig(rank: 4, alpha: 32, targets: [.q, .v]) : nil
            let m = try GPTModel(config: cfg, tp: comm, trainable: Fixtures.trainable(full ? .full : .lora, lora: lc))
            let acts = try m.activations(batch: B, seq: T)
            try m.base.load(from: SafeTensorsWeightSource(file: f))
            if let l = m.lora {
                for s in l.slots {
                    let a = try f.floats("lora.h.\(s.layer).\(s.target.rawValue).A")
                    let b = try f.floats("lora.h.\(s.layer).\(s.target.rawValue).B")
                    l.ptr(s.a).update(from: a, count: a.count)
                    l.ptr(s.b).update(from: b, count: b.count)
                }
            }
            var pass = try ids.withUnsafeBufferPointer {
                try m.forward(tokens: $0.baseAddress!, batch: B, len: T, into: acts)
            }
            let loss = try m.lossForward(&pass, targets: tg, weights: w, backward: false)
            let logits = Array(UnsafeBufferPointer(start: acts.logits, count: ids.count * m.layout.localVocab))
            _ = try m.lossForward(&pass, targets: tg, weights: w, backward: true)
            try ids.withUnsafeBufferPointer { try m.backward(pass, tokens: $0.baseAddress!) }
            var grads: [String: [Float]] = [:]
            if let l = m.lora, let g = m.trainable?.loraGradients {
                try comm.allReduce(g.buffer, op: .sum)
                for s in l.slots {
                    let k = "lora.h.\(s.layer).\(s.target.rawValue)"
                    grads[k + ".A.grad"] = Array(UnsafeBufferPointer(start: g.base + s.a, count: 4 * s.inDim))
                    grads[k + ".B.grad"] = Array(UnsafeBufferPointer(start: g.base + s.b, count: 4 * s.outDim))
                }
            }
            if full, let g = m.trainable?.baseGradients, comm.size == 1 {
                for (k, v) in try g.fullTensors() { grads["full.grad." + k] = v.data }
            }
            return Result(loss: loss, logits: logits, vocab: m.layout.vocabRange, grads: grads)
        }
    }

    func checkLogits(_ r: Result, _ want: [Float], V: Int, _ label: String) {
        let vl = r.vocab.count
        let n = want.count / V
        var worst: Float = 0
        for i in 0..<n {
            for j in 0..<vl { worst = max(worst, abs(r.logits[i * vl + j] - want[i * V + r.vocab.lowerBound + j])) }
        }
        XCTAssertLessThan(worst, 2e-5, label)
    }

    func checkGrad(_ got: [Float]?, _ want: [Float], _ label: String) {
        guard let got else { return XCTFail("\(label) missing") }
        let scale = want.map(abs).max()!
        XCTAssertGreaterThan(scale, 0, label)
        let worst = zip(got, want).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worst / scale, 1e-4, "\(label): max error \(worst) vs scale \(scale)")
    }

    /// At TP 1, 2 and 4, every rank's loss and logits against the reference's `key`.loss and
    /// `key`.logits; `each` checks more of each rank's result (given with its TP degree).
    func checkLossAndLogits(
        _ key: String, lora: Bool, _ label: String, each: (Result, Int) throws -> Void = { _, _ in }
    ) throws {
        let f = try Self.reference()
        let want = try f.floats(key + ".logits")
        let loss = try f.floats(key + ".loss")[0]
        for tp in [1, 2, 4] {
            for r in try Self.run(tp: tp, lora: lora, full: false) {
                XCTAssertEqual(r.loss, Double(loss), accuracy: 1e-5, "tp \(tp)")
                checkLogits(r, want, V: 256, "\(label) logits tp \(tp)")
                try each(r, tp)
            }
        }
    }

    func testBaseLogitsAndLossMatchTransformers() throws {
        try checkLossAndLogits("base", lora: false, "base")
    }

    func testLoRALogitsLossAndGradientsMatchTheReference() throws {
        let f = try Self.reference()
        try checkLossAndLogits("lora", lora: true, "LoRA") { r, tp in
            for l in 0..<2 {
                for t in ["q", "v"] {
                    for m in ["A", "B"] {
                        let k = "lora.h.\(l).\(t).\(m).grad"
                        checkGrad(r.grads[k], try f.floats(k), "\(k) tp \(tp)")
                    }
                }
            }
        }
    }

    func testFullFineTuningGradientsMatchTheReference() throws {
        let f = try Self.reference()
        let r = try Self.run(tp: 1, lora: false, full: true)[0]
        let names = f.names.filter { $0.hasPrefix("full.grad.") }
        XCTAssertEqual(names.count, 2 + 12 * 2 + 2)
        for k in names { checkGrad(r.grads[k], try f.floats(k), k) }
    }
}
