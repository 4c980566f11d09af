import Foundation
import XCTest

@testable import LoRADist

/// Parity of the Llama family's forward and backward with transformers and PEFT, on the random
/// checkpoints reference/make_llama_fixture.py writes (float64 truth, stored float32): Llama with
/// 2 key/value heads and an untied head, the same with Llama 3 rope scaling (sharded files), Qwen2
/// with 1 key/value head, q/k/v biases and a tied head, and that one in bf16. At TP 1, 2 and 4 in
/// process, so with key/value heads split (Llama at TP 2) and shared by ranks (Llama at TP 4, Qwen2
/// at TP 2 and 4): logits, loss, the gradients of PEFT's LoRAs (q/v, and all seven modules with
/// per-module ranks and alphas; read by PEFTAdapter.load), and full fine-tuning's gradients of
/// every parameter where it is allowed.
/// Tolerances: logits and loss 1e-5 relative to the largest logit; gradients 1e-4 relative to the
/// largest entry of each tensor. Without Python and its reference packages these tests fail, never skip.
final class LlamaParityTests: XCTestCase {
    static let variants = ["llama", "llama-rope3", "qwen2", "qwen2-bf16"]

    static let fixture: Result<String, Error> = Result {
        let dir = makeTempDir("llama-parity")
        _ = try PythonReference.check("make_llama_fixture.py", [dir])
        return dir
    }

    override class func tearDown() {
        if case .success(let dir) = fixture { try? FileManager.default.removeItem(atPath: dir) }
        super.tearDown()
    }

    static func expected(_ variant: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(path: try fixture.get() + "/\(variant)/expected.safetensors")
    }

    /// One rank's results of a forward, loss and backward.
    struct Run {
        var loss: Double
        var logits: [Float]  // [n, Vl]
        var vocab: Range<Int>
        var lora: [String: [Float]]  // PEFT key → gradient (after the gradient AllReduce)
        var full: [String: [Float]]  // HF name → this rank's shard of the gradient
        var slots: [TensorSlot]
    }

    /// PEFT's key of a LoRA matrix ("A"/"B") of `target` in `layer`.
    static func peftKey(_ layer: Int, _ t: LoRATarget, _ m: String) -> String {
        "base_model.model.model.layers.\(layer).\(t.baseModule(.llama)).lora_\(m).weight"
    }

    /// Runs `variant` on `tp` in-process ranks: with `lora` the PEFT adapter of that name as
    /// PEFTAdapter reads it (a directory of the variant's, or an absolute path), with `full` full
    /// fine-tuning; `merged` merges the LoRA into the base and runs the forward alone.
    static func run(
        _ variant: String, tp: Int, lora: String? = nil, full: Bool = false, precision: Precision = .fp32,
        merged: Bool = false
    ) throws -> [Run] {
        let dir = try fixture.get() + "/" + variant
        let (cfg, source) = try LlamaFiles.open(dir + "/base")
        let f = try expected(variant)
        let ids = try f.int64s("input_ids").map { Int32($0) }
        let tg = try f.int64s("targets").map { Int32($0) }
        let B = 2
        let T = ids.count / 2
        let n = ids.count
        let w = [Float](repeating: 1 / Float(n), count: n)
        let peft = try lora.map { try PEFTAdapter.load(dir: $0.hasPrefix("/") ? $0 : dir + "/" + $0, model: cfg) }
        return try InProcessCommunicator.run(ranks: tp) { comm in
            let trainable = Fixtures.trainable(full ? .full : .lora, lora: peft?.config)
            let m = try GPTModel(config: cfg, tp: comm, trainable: trainable, precision: precision)
            let acts = try m.activations(batch: B, seq: T)
            try m.base.load(from: source)
            if let l = m.lora, let peft { try PEFTAdapter.apply(peft, to: l) }
            if merged { m.loraRuntime?.merge() }
            var pass = try ids.withUnsafeBufferPointer {
                try m.forward(tokens: $0.baseAddress!, batch: B, len: T, into: acts)
            }
            let loss = try m.lossForward(&pass, targets: tg, weights: w, backward: false)
            let logits = Array(UnsafeBufferPointer(start: acts.logits, count: n * m.layout.localVocab))
            var run = Run(
                loss: loss, logits: logits, vocab: m.layout.vocabRange, lora: [:], full: [:], slots: m.base.shape.slots)
            if merged { return run }
            _ = try m.lossForward(&pass, targets: tg, weights: w, backward: true)
            try ids.withUnsafeBufferPointer { try m.backward(pass, tokens: $0.baseAddress!) }
            if let l = m.lora, let g = m.trainable?.loraGradients {
                try comm.allReduce(g.buffer, op: .sum)
                for s in l.slots {
                    run.lora[peftKey(s.layer, s.target, "A")] = Array(
                        UnsafeBufferPointer(start: g.base + s.a, count: s.rank * s.inDim))
                    run.lora[peftKey(s.layer, s.target, "B")] = Array(
                        UnsafeBufferPointer(start: g.base + s.b, count: s.rank * s.outDim))
                }
            }
            if let g = m.trainable?.baseGradients {
                for s in g.shape.slots {
                    run.full[s.name] = Array(UnsafeBufferPointer(start: g.ptr(s.offset), count: s.localCount))
                }
            }
            return run
        }
    }

    /// This rank's part of a whole tensor as `slot` lays it out (padded vocabulary rows are zero).
    static func shard(_ whole: [Float], _ slot: TensorSlot) -> [Float] {
        let width = slot.shape.count == 2 ? slot.shape[1] : slot.shape[0]
        let rows = whole.count / width
        func rowRun(_ r: Range<Int>, valid: Int) -> [Float] {
            r.flatMap { i in
                i < valid ? Array(whole[(i * width)..<((i + 1) * width)]) : [Float](repeating: 0, count: width)
            }
        }
        func colRun(_ c: Range<Int>) -> [Float] {
            (0..<rows).flatMap { i in whole[(i * width + c.lowerBound)..<(i * width + c.upperBound)] }
        }
        switch slot.spec {
        case .replicated: return whole
        case .rows(let r, let valid): return rowRun(r, valid: valid)
        case .cols(let c): return colRun(c)
        case .shared(let r, _): return slot.shape.count == 2 ? rowRun(r, valid: rows) : colRun(r)
        case .qkv: preconditionFailure("GPT-2's interleaved q/k/v in a Llama-family layout")
        }
    }

    static func checkClose(_ got: [Float]?, _ want: [Float], tolerance: Float, _ label: String) {
        guard let got else { return XCTFail("\(label): missing") }
        guard got.count == want.count else { return XCTFail("\(label): \(got.count) values, want \(want.count)") }
        let scale = want.map(abs).max()!
        XCTAssertGreaterThan(scale, 0, "\(label): an all-zero truth checks nothing")
        let worst = zip(got, want).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worst / scale, tolerance, "\(label): max error \(worst) vs scale \(scale)")
    }

    /// Every rank's loss and logits (its vocabulary columns) against `key`.loss and `key`.logits.
    static func checkLossAndLogits(
        _ runs: [Run], _ f: SafeTensorsFile, _ key: String, _ label: String, logits tl: Float = 1e-5,
        loss tloss: Double = 1e-5
    ) throws {
        let want = try f.floats(key + "logits")
        let loss = try f.floats(key + "loss")[0]
        let n = try f.int64s("input_ids").count
        let V = want.count / n
        for r in runs {
            let valid = r.vocab.clamped(to: 0..<V)
            var got: [Float] = []
            var truth: [Float] = []
            for i in 0..<n {
                for j in valid {
                    got.append(r.logits[i * r.vocab.count + j - r.vocab.lowerBound])
                    truth.append(want[i * V + j])
                }
            }
            Self.checkClose(got, truth, tolerance: tl, "\(label) logits \(valid)")
            XCTAssertEqual(r.loss, Double(loss), accuracy: tloss * Double(abs(loss)), "\(label) loss")
        }
    }

    func testBaseLogitsAndLossMatchTransformers() throws {
        for v in Self.variants {
            let f = try Self.expected(v)
            for tp in [1, 2, 4] { try Self.checkLossAndLogits(try Self.run(v, tp: tp), f, "", "\(v) TP \(tp)") }
        }
    }

    /// lora-qv (r 4 on q and v) and lora-all (all seven modules, with rank_pattern and
    /// alpha_pattern), each read by PEFTAdapter.load: logits, loss and every A/B gradient.
    func testLoRALogitsLossAndGradientsMatchPEFT() throws {
        for v in Self.variants {
            let f = try Self.expected(v)
            for (adapter, modules) in [("lora-qv", 2), ("lora-all", 7)] {
                for tp in [1, 2, 4] {
                    let runs = try Self.run(v, tp: tp, lora: adapter)
                    try Self.checkLossAndLogits(runs, f, adapter + ".", "\(v) \(adapter) TP \(tp)")
                    let keys = f.names.filter { $0.hasPrefix(adapter + ".grad.") }
                    XCTAssertEqual(
                        keys.count, modules * 2 * 2, "\(v) \(adapter): \(modules) modules, A and B, 2 layers")
                    for r in runs {
                        XCTAssertEqual(
                            r.lora.count, keys.count, "\(v) \(adapter) TP \(tp): a gradient for every PEFT tensor")
                        for k in keys {
                            Self.checkClose(
                                r.lora[String(k.dropFirst(adapter.count + ".grad.".count))], try f.floats(k),
                                tolerance: 1e-4, "\(v) TP \(tp) \(k)")
                        }
                    }
                }
            }
        }
    }

    /// lora-all's patterns resolve per slot as PEFT resolved them (make_llama_fixture.py checks
    /// PEFT's side: gate_proj r 8 scale 2, layer 1 o_proj r 2 scale 8, down_proj r 4 scale 1, layer
    /// 0 k_proj r 4 scale 8, layer 1 k_proj r 4 scale 4), and the parameter count follows the ranks.
    func testLoRAAllPatternsGiveEachSlotItsRankAndScale() throws {
        let dir = try Self.fixture.get() + "/llama"
        let (cfg, _) = try LlamaFiles.open(dir + "/base")
        let peft = try PEFTAdapter.load(dir: dir + "/lora-all", model: cfg)
        XCTAssertEqual(peft.config.rankPattern, ["gate_proj": 8, "layers.1.self_attn.o_proj": 2])
        XCTAssertEqual(peft.config.alphaPattern, ["down_proj": 4, "layers.0.self_attn.k_proj": 32])
        let l = LoRAWeights(config: peft.config, model: cfg)
        func slot(_ layer: Int, _ t: LoRATarget) -> (Int, Float) {
            let s = l.slot(layer: layer, target: t)!
            return (s.rank, s.scale)
        }
        for (layer, t, r, scale) in [
            (0, LoRATarget.gate, 8, Float(2)), (1, .gate, 8, 2), (1, .o, 2, 8), (0, .o, 4, 4), (0, .down, 4, 1),
            (1, .down, 4, 1),
            (0, .k, 4, 8), (1, .k, 4, 4), (0, .q, 4, 4), (1, .up, 4, 4)
        ] {
            XCTAssertEqual(slot(layer, t).0, r, "layer \(layer) \(t) rank")
            XCTAssertEqual(slot(layer, t).1, scale, "layer \(layer) \(t) scale")
        }
        XCTAssertEqual(l.maxRank, 8)
        let sizes = try SafeTensorsFile(path: dir + "/lora-all/adapter_model.safetensors")
        let inFile = try sizes.names.reduce(0) { $0 + (try sizes.info($1).shape.reduce(1, *)) }
        XCTAssertEqual(
            peft.config.parameterCount(for: cfg), inFile, "PEFT's tensors hold exactly the parameters counted")
        XCTAssertEqual(l.count, inFile)
    }

    /// Full fine-tuning where the layout allows it: every TP degree that splits the key/value
    /// heads (shared ones are refused, `TPLayout.requireKVTrainable`).
    func testFullFineTuningGradientsMatchTransformers() throws {
        for v in Self.variants {
            let f = try Self.expected(v)
            let (cfg, _) = try LlamaFiles.open(try Self.fixture.get() + "/\(v)/base")
            for tp in [2, 4] where cfg.nKVHead % tp != 0 {
                XCTAssertThrowsError(try Self.run(v, tp: tp, full: true), "\(v) TP \(tp): shared key/value heads") {
                    XCTAssertTrue("\($0)".contains("shared by"), "\($0)")
                }
            }
            for tp in [1, 2, 4] where cfg.nKVHead % tp == 0 {
                for r in try Self.run(v, tp: tp, full: true) {
                    XCTAssertEqual(
                        r.full.count, f.names.filter { $0.hasPrefix("grad.") }.count, "\(v) TP \(tp): every parameter")
                    for s in r.slots {
                        Self.checkClose(
                            r.full[s.name], Self.shard(try f.floats("grad." + s.name), s), tolerance: 1e-4,
                            "\(v) TP \(tp) \(s.name)")
                    }
                }
            }
        }
    }

    /// LoRA merged into the sharded base (W += s·B·A into [out, in] rows of the fused q|k|v and
    /// gate|up, columns of o_proj and down_proj, each rank its own part; each slot at its own rank
    /// and scale) gives PEFT's logits and loss with the adapter unmerged.
    func testMergedLoRAGivesPEFTsLogits() throws {
        for v in Self.variants {
            let f = try Self.expected(v)
            for tp in [1, 2, 4] {
                for adapter in ["lora-qv", "lora-all"] {
                    try Self.checkLossAndLogits(
                        try Self.run(v, tp: tp, lora: adapter, merged: true), f, adapter + ".",
                        "\(v) merged \(adapter) TP \(tp)")
                }
            }
        }
    }

    /// `--precision bf16` (bf16 GEMM weights and inputs, fp32 accumulation) on the bf16 checkpoint
    /// and on the fp32 one, against the float64 truth, with BF16ModelTests' tolerances: logits 2e-2
    /// of the largest, loss 1e-2, LoRA gradients 5e-2 of the largest; merged into the bf16 weights
    /// (rounded back to bf16) 3e-2.
    func testBF16IsCloseToTransformers() throws {
        for v in ["llama", "qwen2-bf16"] {
            let f = try Self.expected(v)
            for tp in [1, 2, 4] {
                let runs = try Self.run(v, tp: tp, lora: "lora-qv", precision: .bf16)
                try Self.checkLossAndLogits(runs, f, "lora-qv.", "\(v) bf16 lora-qv TP \(tp)", logits: 2e-2, loss: 1e-2)
                for r in runs {
                    for k in f.names where k.hasPrefix("lora-qv.grad.") {
                        Self.checkClose(
                            r.lora[String(k.dropFirst("lora-qv.grad.".count))], try f.floats(k), tolerance: 5e-2,
                            "\(v) bf16 TP \(tp) \(k)")
                    }
                }
                try Self.checkLossAndLogits(
                    try Self.run(v, tp: tp, lora: "lora-qv", precision: .bf16, merged: true), f, "lora-qv.",
                    "\(v) bf16 merged TP \(tp)", logits: 3e-2, loss: 1e-2)
            }
        }
    }
}
