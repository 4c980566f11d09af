import XCTest

@testable import LoRADist

/// `--precision bf16`: the frozen base in bf16, its GEMM inputs rounded to bf16 with fp32
/// accumulation, everything that trains in fp32. Checked against the fp32 path (bf16
/// tolerances), across TP degrees (bf16 at TP 2 and 4 against bf16 at TP 1), and for what it
/// stores (2 bytes per base GEMM weight, fp32 trainables).
///
/// Tolerances: a bf16 rounding changes a value by at most 2⁻⁹ relative, so each GEMM output moves
/// by about 2⁻⁹·√k of its terms' size; through 2 blocks that stays under a few percent of the
/// largest logit and gradient. Across TP degrees the bf16 inputs can differ where fp32 sums in
/// another order round to the other side of a bf16 tie, so those comparisons get bf16 tolerances too.
final class BF16ModelTests: XCTestCase {
    typealias TP = TensorParallelModelTests
    let bf16TP = TensorParallelModelTests.Tolerance(logits: 2e-3, logitsRel: 1e-2, grads: 2e-3, gradsRel: 2e-2)

    func maxAbs(_ v: [Float]) -> Float { v.map(abs).max() ?? 0 }

    func testBF16LogitsLossAndLoRAGradientsAreCloseToFP32() throws {
        let f = try TP.run(tp: 1, mode: .lora)[0]
        let h = try TP.run(tp: 1, mode: .lora, precision: .bf16)[0]
        let scale = maxAbs(f.logits)
        var worst: Float = 0
        var differs = false
        for (a, b) in zip(h.logits, f.logits) {
            worst = max(worst, abs(a - b))
            differs = differs || a != b
        }
        XCTAssertTrue(differs, "bf16 must actually change the arithmetic")
        XCTAssertLessThan(worst, 2e-2 * scale, "logits: max |bf16 − fp32| \(worst), max |logit| \(scale)")
        XCTAssertEqual(h.loss, f.loss, accuracy: 1e-2 * abs(f.loss), "loss")
        let g = maxAbs(f.loraGrad)
        var gw: Float = 0
        for (a, b) in zip(h.loraGrad, f.loraGrad) { gw = max(gw, abs(a - b)) }
        XCTAssertGreaterThan(g, 1e-3)
        XCTAssertLessThan(gw, 5e-2 * g, "LoRA gradients: max |bf16 − fp32| \(gw), max |grad| \(g)")
    }

    func testBF16TP2MatchesTP1ForLoRA() throws { try TP.compare(tp: 2, mode: .lora, precision: .bf16, tol: bf16TP) }
    func testBF16TP4MatchesTP1ForLoRA() throws { try TP.compare(tp: 4, mode: .lora, precision: .bf16, tol: bf16TP) }
    func testBF16TP2MatchesTP1ForFullFineTuning() throws {
        try TP.compare(tp: 2, mode: .full, precision: .bf16, tol: bf16TP)
    }

    func testBF16BaseHoldsTwoBytesPerGEMMWeightAndTrainablesStayFP32() throws {
        let cfg = TP.cfg
        _ = try InProcessCommunicator.run(ranks: 1) { comm in
            let lc = LoRAConfig(rank: 3, alpha: 6, targets: LoRATarget.available(in: .gpt2))
            let f = try GPTModel(config: cfg, tp: comm, trainable: .lora(lc))
            let h = try GPTModel(config: cfg, tp: comm, trainable: .lora(lc), precision: .bf16)
            // The GEMM weights: wte (padded vocabulary) and per block c_attn, c_proj, c_fc, mlp.c_proj.
            let d = cfg.nEmbd
            let gemm = f.layout.localVocab * d + cfg.nLayer * (3 * d * d + d * d + 2 * d * 4 * d)
            let slots = h.base.shape.slots
            let pad = 16 * slots.count
            XCTAssertEqual(
                slots.filter { $0.half >= 0 }.reduce(0) { $0 + $1.localCount }, gemm,
                "exactly the GEMM weights are bf16")
            XCTAssertTrue(
                slots.filter { $0.half >= 0 }.allSatisfy { $0.offset < 0 }, "no fp32 copy of a frozen GEMM weight")
            XCTAssertEqual(h.base.half.bytes, 2 * h.base.half.count)
            XCTAssertLessThan(h.base.half.count, gemm + pad, "the bf16 arena holds the weights (and alignment padding)")
            let fp32Only = slots.filter { $0.half < 0 }.reduce(0) { $0 + $1.localCount }
            XCTAssertLessThan(
                h.base.arena.count, fp32Only + pad, "the fp32 arena holds only LayerNorms, biases and wpe")
            XCTAssertLessThan(Double(h.base.bytes), 0.55 * Double(f.base.bytes), "the base's memory halves")
            XCTAssertEqual(MemoryLayout.size(ofValue: h.lora!.arena.base.pointee), 4)
            XCTAssertEqual(h.lora!.arena.bytes, 4 * h.lora!.count, "A and B are fp32")
            XCTAssertEqual(h.trainable!.loraGradients!.bytes, 4 * h.lora!.count, "their gradients are fp32")
        }
    }

    func testBF16MergedLoRAMatchesUnmergedWithinBF16Rounding() throws {
        let cfg = TP.cfg
        let n = 2 * 7
        let tokens = Fixtures.randomTokens(n, below: cfg.vocabSize, seed: 3)
        let res = try InProcessCommunicator.run(ranks: 2) { comm -> [[Float]] in
            let lc = LoRAConfig(rank: 3, alpha: 6, targets: LoRATarget.available(in: .gpt2))
            let m = try Fixtures.randomModel(
                cfg, comm, trainable: .lora(lc), training: false, precision: .bf16,
                baseSeed: 5)
            let acts = try m.activations(batch: 2, seq: 7, training: false)
            Fixtures.initLoRA(m.lora!, seed: 9, nonZeroB: 0.5, bSeed: 4)
            var out: [[Float]] = []
            for merge in [false, true] {
                if merge { m.loraRuntime?.merge() }
                let pass = try tokens.withUnsafeBufferPointer {
                    try m.forward(tokens: $0.baseAddress!, batch: 2, len: 7, into: acts)
                }
                _ = try m.lastLogitsShard(pass)
                out.append(Array(UnsafeBufferPointer(start: acts.logits, count: 2 * m.layout.localVocab)))
            }
            return out
        }
        for r in res {
            let scale = maxAbs(r[0])
            var worst: Float = 0
            for (a, b) in zip(r[0], r[1]) { worst = max(worst, abs(a - b)) }
            XCTAssertLessThan(worst, 3e-2 * scale, "merged vs unmerged in bf16: \(worst) of \(scale)")
        }
    }
}

/// The built-in task trained in bf16 learns as it does in fp32: 60 steps of LoRA on the built-in
/// base, 2 in-process ranks (TP 2), each precision from the same seed; the held-out loss must fall
/// by nearly the same factor (within 10 %). Exact match needs the full main job (at 60 steps it is
/// 0 in both); its figures in both precisions are in the README.
final class BF16TrainingTests: XCTestCase {
    /// The built-in task as the main job trains it (240 steps, 16 sequences a step, r 8 on every
    /// target) on one rank, in fp32 and in bf16 side by side: bf16's exact match on 200 held-out
    /// examples is at most 5 points below fp32's, and its held-out loss falls by the same factor
    /// within 10 %. (Measured here, seed 1: fp32 51.5 %, bf16 53.5 %; with seed 2 41.5 % and 50.0 %;
    /// one seed's exact match moves by ±5 points, so the bound holds bf16 to fp32's own spread.)
    func testBF16TrainsTheBuiltinTaskAsFP32Does() throws {
        let base = Launcher.root.appendingPathComponent("models/tiny-base.safetensors").path
        func run(_ p: Precision) throws -> RunSummary {
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("bf16-train-\(UUID().uuidString)")
                .path
            var o = RunOptions(base: .file(base), out: out)
            // `lora-dist train`'s defaults (the main job's options), seed 1.
            o.train.steps = 240
            o.train.globalBatch = 16
            o.train.microBatch = 16
            o.train.seq = 168
            o.train.lr = 3e-3
            o.train.lora = LoRAConfig(rank: 8, alpha: 32, targets: LoRATarget.available(in: .gpt2))
            o.train.seed = 1
            o.train.precision = p
            o.evalExamples = 200
            o.validLimit = nil
            o.quiet = true  // the loss over all 200 held-out examples
            return try InProcessCommunicator.run(ranks: 1) { comm in
                try TrainRun(world: RecordingCommunicator(comm), options: o).run()
            }[0]
        }
        // The two runs share nothing: one per core.
        var results = [Swift.Result<RunSummary, Error>?](repeating: nil, count: 2)
        let lock = NSLock()
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            let r = Swift.Result { try run(i == 0 ? .fp32 : .bf16) }
            lock.withLock { results[i] = r }
        }
        let f = try results[0]!.get()
        let h = try results[1]!.get()
        XCTAssertEqual(f.steps, 240)
        XCTAssertEqual(h.precision, "bf16")
        XCTAssertLessThan(
            h.baseBytesPerRank, f.baseBytesPerRank * 6 / 10, "the base's bytes per rank shrink under bf16")
        let rf = f.evalLossAfter! / f.evalLossBefore!
        let rh = h.evalLossAfter! / h.evalLossBefore!
        XCTAssertLessThan(
            rf, 0.05, "fp32 must learn for the comparison to mean anything: \(f.evalLossBefore!) → \(f.evalLossAfter!)")
        XCTAssertEqual(rh, rf, accuracy: 0.1 * rf, "held-out loss factor: bf16 \(rh), fp32 \(rf)")
        let ef = f.exactMatchAfter!
        let eh = h.exactMatchAfter!
        XCTAssertGreaterThan(ef, 0.3, "fp32 must reach a real exact match")
        XCTAssertGreaterThanOrEqual(eh, ef - 0.05, "exact match: bf16 \(eh), fp32 \(ef)")
        print(
            """
            bf16 training (240 steps, 1 rank): eval loss \(f.evalLossBefore!) → \(f.evalLossAfter!), exact match \
            \(ef), BLEU \(f.bleuAfter!) (fp32); \(h.evalLossBefore!) → \(h.evalLossAfter!), exact match \(eh), BLEU \
            \(h.bleuAfter!) (bf16)
            """
        )
    }
}
