import XCTest

@testable import LoRADist

/// Central finite differences of the whole model's loss against the analytic backward, on a small
/// random model with every LoRA target and non-zero B. Float32 forward, step h = 1e-2 on
/// parameters of size ~0.1–1: tolerance |fd − g| ≤ 2e-3 + 3e-2·|g|.
final class ModelGradientCheckTests: XCTestCase {
    let cfg = GPTConfig(nLayer: 2, nEmbd: 16, nHead: 2, vocabSize: 21, nPositions: 8)
    let batch = 2, seq = 5

    func makeModel(
        mode: Method, targets: [LoRATarget], dropout: Float = 0,
        comm: Communicator? = nil
    ) throws -> GPTModel {
        let c = try comm ?? InProcessCommunicator.run(ranks: 1) { $0 }[0]
        let lc = mode == .lora ? LoRAConfig(rank: 2, alpha: 4, targets: targets, dropout: dropout) : nil
        let m = try Fixtures.randomModel(cfg, c, trainable: Fixtures.trainable(mode, lora: lc), baseSeed: 7)
        // Make LayerNorm and biases non-trivial, and scale weights up so gradients are not tiny.
        var rng = RNG(seed: 3)
        for s in m.base.shape.slots {
            let p = m.base.ptr(s.offset)
            for i in 0..<s.localCount {
                if s.name.contains("ln_") && s.name.hasSuffix("weight") {
                    p[i] = 1 + 0.2 * rng.normal()
                } else if s.name.hasSuffix("bias") {
                    p[i] = 0.1 * rng.normal()
                } else {
                    p[i] *= 10
                }
            }
        }
        if let lora = m.lora { Fixtures.initLoRA(lora, seed: 11, nonZeroB: 0.3, rng: &rng) }
        return m
    }

    func batchData() -> (tokens: [Int32], targets: [Int32], weights: [Float]) {
        var rng = RNG(seed: 5)
        let n = batch * seq
        let tokens = Fixtures.randomTokens(n, below: cfg.vocabSize, rng: &rng)
        let targets = Fixtures.randomTokens(n, below: cfg.vocabSize, rng: &rng)
        // A mask with a hole, like the completion-only objective.
        var w = [Float](repeating: 1, count: n)
        w[1] = 0
        w[7] = 0
        let total = w.reduce(0, +)
        return (tokens, targets, w.map { $0 / total })
    }

    /// Training passes (LoRA dropout on); the dropout test picks its own seed.
    var context = PassContext(training: true)

    func loss(
        _ m: GPTModel, _ acts: Activations, _ data: (tokens: [Int32], targets: [Int32], weights: [Float]),
        backward: Bool
    ) throws -> Double {
        try data.tokens.withUnsafeBufferPointer { tk in
            var pass = try m.forward(tokens: tk.baseAddress!, batch: batch, len: seq, into: acts, context: context)
            let l = try data.targets.withUnsafeBufferPointer { tg in
                try data.weights.withUnsafeBufferPointer { w in
                    try m.lossForward(&pass, targets: tg.baseAddress!, weights: w.baseAddress!, backward: backward)
                }
            }
            if backward { try m.backward(pass, tokens: tk.baseAddress!) }
            return l
        }
    }

    func check(
        _ m: GPTModel, params: UnsafeMutablePointer<Float>, grads: UnsafeMutablePointer<Float>, count: Int,
        label: String, samples: Int = 40
    ) throws {
        let data = batchData()
        let acts = try m.activations(batch: batch, seq: seq)
        m.trainable?.loraGradients?.zero()
        m.trainable?.baseGradients?.arena.zero()
        m.trainable?.biases?.grads.zero()
        _ = try loss(m, acts, data, backward: true)
        var rng = RNG(seed: 99)
        let h: Float = 1e-2
        var checked = 0
        for _ in 0..<samples {
            let i = rng.below(count)
            let saved = params[i]
            params[i] = saved + h
            let lp = try loss(m, acts, data, backward: false)
            params[i] = saved - h
            let lm = try loss(m, acts, data, backward: false)
            params[i] = saved
            let fd = Float((lp - lm) / Double(2 * h))
            let g = grads[i]
            XCTAssertLessThanOrEqual(abs(fd - g), 2e-3 + 3e-2 * abs(g), "\(label)[\(i)]: fd \(fd) vs analytic \(g)")
            checked += 1
        }
        XCTAssertEqual(checked, samples)
    }

    func testLoRAGradientsMatchFiniteDifferencesOnEveryTarget() throws {
        let m = try makeModel(mode: .lora, targets: LoRATarget.available(in: .gpt2))
        m.trainable!.loraGradients!.zero()
        try check(
            m, params: m.lora!.arena.base, grads: m.trainable!.loraGradients!.base, count: m.lora!.count,
            label: "lora", samples: 80)
    }

    func testLoRAGradientsWithDropoutMatchFiniteDifferences() throws {
        let m = try makeModel(mode: .lora, targets: [.q, .v, .o, .mlpOut], dropout: 0.3)
        context.dropoutSeed = 17
        m.trainable!.loraGradients!.zero()
        try check(
            m, params: m.lora!.arena.base, grads: m.trainable!.loraGradients!.base, count: m.lora!.count,
            label: "lora+dropout", samples: 60)
    }

    func testFullFineTuningGradientsMatchFiniteDifferences() throws {
        let m = try makeModel(mode: .full, targets: [])
        m.trainable!.baseGradients!.arena.zero()
        for slot in m.base.shape.slots {
            try check(
                m, params: m.base.ptr(slot.offset), grads: m.trainable!.baseGradients!.ptr(slot.offset),
                count: min(
                    slot.localCount, slot.name == "transformer.wte.weight" ? cfg.vocabSize * cfg.nEmbd : slot.localCount
                ),
                label: slot.name, samples: 6)
        }
    }

    /// BitFit's bias gradients by finite differences of the biases the forward reads, and against
    /// a second code path: full fine-tuning's gradients of the same biases on the same batch.
    func testBitFitGradientsMatchFiniteDifferencesAndFullFineTuning() throws {
        let m = try makeModel(mode: .bitfit, targets: [])
        let biases = m.trainable!.biases!
        XCTAssertEqual(biases.segments.count, 6 * cfg.nLayer + 1)
        for seg in biases.segments {
            try check(
                m, params: m.base.ptr(seg.slot.offset), grads: biases.grad(at: seg.slot.offset),
                count: seg.slot.localCount,
                label: seg.slot.name, samples: 6)
        }
        let full = try makeModel(mode: .full, targets: [])
        full.trainable!.baseGradients!.arena.zero()
        biases.grads.zero()
        _ = try loss(full, try full.activations(batch: batch, seq: seq), batchData(), backward: true)
        _ = try loss(m, try m.activations(batch: batch, seq: seq), batchData(), backward: true)
        for seg in biases.segments {
            let want = full.trainable!.baseGradients!.ptr(seg.slot.offset)
            let got = biases.grad(at: seg.slot.offset)
            var largest: Float = 0
            for i in 0..<seg.slot.localCount {
                XCTAssertEqual(got[i], want[i], accuracy: 1e-6 * (1 + abs(want[i])), "\(seg.slot.name)[\(i)]")
                largest = max(largest, abs(want[i]))
            }
            XCTAssertGreaterThan(largest, 1e-4, "\(seg.slot.name): a gradient worth comparing")
        }
    }

    func testOnlyMLPOutTargetStopsBackwardEarlyAndStillMatches() throws {
        let m = try makeModel(mode: .lora, targets: [.mlpOut])
        m.trainable!.loraGradients!.zero()
        try check(
            m, params: m.lora!.arena.base, grads: m.trainable!.loraGradients!.base, count: m.lora!.count,
            label: "mlp_out", samples: 30)
    }
}
