import XCTest

@testable import LoRADist

/// The LM head and loss run a block of rows at a time when the logits do not fit whole (GPT-2's
/// vocabulary): the loss, the per-row losses and every gradient must equal the whole-logits path's,
/// on one rank (the gradient formed block by block as the logits appear) and across TP ranks (the
/// blocks' Σexp rescaled to the global maxima, the logits computed again after the reductions),
/// for LoRA and full fine-tuning, with label smoothing and zero-weight rows. A second code path:
/// the whole-logits loss is the one the transformers and PEFT parity tests check.
final class ChunkedLossTests: XCTestCase {
    static let cfg = Fixtures.tiny
    static let batch = 2, seq = 7

    struct Outcome {
        var loss: Double, rowLoss: [Float], grads: [Float]
        var logitRows: Int
    }

    /// One forward, loss and backward on `tp` in-process ranks; `rows` logit rows at a time (nil: whole).
    static func run(tp: Int, mode: Method, precision: Precision, rows: Int?) throws -> [Outcome] {
        var rng = RNG(seed: 33)
        let n = batch * seq
        let tokens = Fixtures.randomTokens(n, below: cfg.vocabSize, rng: &rng)
        let targets = Fixtures.randomTokens(n, below: cfg.vocabSize, rng: &rng)
        // Uneven weights, two rows masked out (prompt tokens).
        var weights = (0..<n).map { _ in 0.5 + rng.uniform() }
        weights[0] = 0
        weights[5] = 0
        return try InProcessCommunicator.run(ranks: tp) { comm in
            let lc = mode == .lora ? LoRAConfig(rank: 3, alpha: 6, targets: LoRATarget.available(in: .gpt2)) : nil
            let vl = try TPLayout(config: cfg, degree: tp, rank: comm.rank).localVocab
            let trainable = Fixtures.trainable(mode, lora: lc)
            let m = try Fixtures.randomModel(cfg, comm, trainable: trainable, precision: precision, baseSeed: 5)
            let budget = rows.map { $0 * vl } ?? Activations.logitBudget
            let acts = try m.activations(batch: batch, seq: seq, logitBudget: budget)
            if let lora = m.lora { Fixtures.initLoRA(lora, seed: 9, nonZeroB: 0.5, bSeed: 4) }
            let context = PassContext(training: true, labelSmoothing: 0.1)
            var pass = try tokens.withUnsafeBufferPointer {
                try m.forward(tokens: $0.baseAddress!, batch: batch, len: seq, into: acts, context: context)
            }
            let loss = try m.lossForward(&pass, targets: targets, weights: weights, backward: true)
            let rowLoss = Array(UnsafeBufferPointer(start: acts.rowLoss, count: n))
            try tokens.withUnsafeBufferPointer { try m.backward(pass, tokens: $0.baseAddress!) }
            let t = m.trainable!
            let grads = mode == .lora ? Array(t.loraGradients!.buffer) : Array(t.baseGradients!.arena.buffer)
            // The head's input gradient is checked through every gradient below it.
            return Outcome(loss: loss, rowLoss: rowLoss, grads: grads, logitRows: acts.logitRows)
        }
    }

    func check(tp: Int, mode: Method, precision: Precision = .fp32, tol: Float = 1e-5) throws {
        let whole = try Self.run(tp: tp, mode: mode, precision: precision, rows: nil)
        let chunked = try Self.run(tp: tp, mode: mode, precision: precision, rows: 3)
        XCTAssertEqual(whole[0].logitRows, Self.batch * Self.seq)
        XCTAssertEqual(chunked[0].logitRows, 3, "5 blocks of 3 rows, the last one partial")
        XCTAssertGreaterThan(whole[0].grads.map(abs).max()!, 1e-3, "gradients must be non-trivial")
        for (w, c) in zip(whole, chunked) {
            XCTAssertEqual(c.loss, w.loss, accuracy: Double(tol) * max(1, abs(w.loss)), "loss tp \(tp) \(mode)")
            TensorParallelModelTests.assertClose(
                c.rowLoss, w.rowLoss, tol: tol, rel: tol, "row losses tp \(tp) \(mode)")
            TensorParallelModelTests.assertClose(
                c.grads, w.grads, tol: 10 * tol, rel: 10 * tol, "gradients tp \(tp) \(mode)")
        }
    }

    func testOneRankLoRA() throws { try check(tp: 1, mode: .lora) }
    func testOneRankFullFineTuning() throws { try check(tp: 1, mode: .full) }
    func testTwoRanksLoRA() throws { try check(tp: 2, mode: .lora) }
    func testFourRanksFullFineTuning() throws { try check(tp: 4, mode: .full) }
    /// bf16: the same GEMMs on the same rounded inputs, block by block.
    func testOneRankAndTwoRanksBF16() throws {
        try check(tp: 1, mode: .lora, precision: .bf16, tol: 1e-4)
        try check(tp: 2, mode: .full, precision: .bf16, tol: 1e-4)
    }
}
