import XCTest

@testable import LoRADist

/// The sharded model (TP = 2, 4 on the in-process backend) against the single-rank model: same
/// loss, same logits, same LoRA and full gradients. Tolerances: 2e-5 on losses and logits,
/// 1e-4·(1 + |g|) on gradients (the same sums, taken in another order).
final class TensorParallelModelTests: XCTestCase {
    static let cfg = Fixtures.tiny
    static let batch = 2, seq = 7

    struct Outcome {
        var loss: Double
        var logits: [Float]  // this rank's vocabulary shard [n, Vl]
        var loraGrad: [Float]  // after the world AllReduce
        var baseGrad: BaseWeights?
        var layout: TPLayout
    }

    static let loraConfig = LoRAConfig(rank: 3, alpha: 6, targets: LoRATarget.available(in: .gpt2))

    static func run(
        tp: Int, mode: Method, precision: Precision = .fp32, lora: LoRAConfig = loraConfig,
        config cfg: GPTConfig = TensorParallelModelTests.cfg,
        context: PassContext = .inference
    ) throws -> [Outcome] {
        var rng = RNG(seed: 21)
        let n = batch * seq
        let tokens = Fixtures.randomTokens(n, below: cfg.vocabSize, rng: &rng)
        let targets = Fixtures.randomTokens(n, below: cfg.vocabSize, rng: &rng)
        let weights = Fixtures.meanWeights(n)
        return try InProcessCommunicator.run(ranks: tp) { comm in
            let trainable = Fixtures.trainable(mode, lora: lora)
            let m = try Fixtures.randomModel(cfg, comm, trainable: trainable, precision: precision, baseSeed: 5)
            let acts = try m.activations(batch: batch, seq: seq)
            if let lora = m.lora { Fixtures.initLoRA(lora, seed: 9, nonZeroB: 0.5, bSeed: 4) }
            var pass = try tokens.withUnsafeBufferPointer {
                try m.forward(tokens: $0.baseAddress!, batch: batch, len: seq, into: acts, context: context)
            }
            let loss = try m.lossForward(&pass, targets: targets, weights: weights, backward: false)
            let logits = Array(UnsafeBufferPointer(start: acts.logits, count: n * m.layout.localVocab))
            _ = try m.lossForward(&pass, targets: targets, weights: weights, backward: true)
            try tokens.withUnsafeBufferPointer { try m.backward(pass, tokens: $0.baseAddress!) }
            let loraGrad = m.trainable?.loraGradients
            if let g = loraGrad { try comm.allReduce(g.buffer, op: .sum) }
            return Outcome(
                loss: loss, logits: logits, loraGrad: loraGrad.map { Array($0.buffer) } ?? [],
                baseGrad: m.trainable?.baseGradients, layout: m.layout)
        }
    }

    static func assertClose(_ a: [Float], _ b: [Float], tol: Float, rel: Float = 0, _ label: String) {
        XCTAssertEqual(a.count, b.count, label)
        var worst: Float = 0
        var at = -1
        for i in 0..<min(a.count, b.count) {
            let e = abs(a[i] - b[i]) / (tol + rel * abs(b[i]))
            if e > worst {
                worst = e
                at = i
            }
        }
        XCTAssertLessThanOrEqual(worst, 1, "\(label): worst at \(at): \(at >= 0 ? a[at] : 0) vs \(at >= 0 ? b[at] : 0)")
    }

    /// Tolerances of a TP = p vs TP = 1 comparison: absolute and relative, on logits (and the loss)
    /// and on gradients.
    struct Tolerance { var logits: Float = 2e-5, logitsRel: Float = 0, grads: Float = 1e-4, gradsRel: Float = 1e-4 }

    static func compare(
        tp: Int, mode: Method, precision: Precision = .fp32, lora: LoRAConfig = loraConfig,
        config: GPTConfig = cfg,
        context: PassContext = .inference, tol: Tolerance = Tolerance()
    ) throws {
        let one = try Self.run(tp: 1, mode: mode, precision: precision, lora: lora, config: config, context: context)[0]
        let grads = mode == .lora ? one.loraGrad : Array(one.baseGrad!.arena.buffer)
        XCTAssertGreaterThan(
            grads.map(abs).max()!, 1e-3, "gradients must be non-trivial for the comparison to mean anything")
        let many = try Self.run(tp: tp, mode: mode, precision: precision, lora: lora, config: config, context: context)
        let n = Self.batch * Self.seq
        let V = config.vocabSize
        for o in many {
            XCTAssertEqual(
                o.loss, one.loss, accuracy: Double(tol.logits + tol.logitsRel * Float(abs(one.loss))),
                "loss, tp \(tp) rank \(o.layout.rank)")
            // This rank's logits are TP=1's columns of its vocabulary range.
            let vl = o.layout.localVocab
            let lo = o.layout.vocabRange.lowerBound
            let vp = one.layout.localVocab
            var mine: [Float] = []
            var ref: [Float] = []
            for i in 0..<n {
                for j in 0..<vl where lo + j < V {
                    mine.append(o.logits[i * vl + j])
                    ref.append(one.logits[i * vp + lo + j])
                }
            }
            Self.assertClose(mine, ref, tol: tol.logits, rel: tol.logitsRel, "logits tp \(tp) rank \(o.layout.rank)")
            if mode == .lora {
                Self.assertClose(
                    o.loraGrad, one.loraGrad, tol: tol.grads, rel: tol.gradsRel,
                    "LoRA grads tp \(tp) rank \(o.layout.rank)")
            }
            if mode == .full, let g = o.baseGrad, let g1 = one.baseGrad {
                let expected = BaseWeights(shape: g.shape)
                try expected.load(from: DictionaryWeightSource(try g1.fullTensors()))
                Self.assertClose(
                    Array(g.arena.buffer), Array(expected.arena.buffer), tol: tol.grads, rel: tol.gradsRel,
                    "full grads tp \(tp) rank \(o.layout.rank)")
            }
        }
    }

    func testTP2MatchesTP1ForLoRA() throws { try Self.compare(tp: 2, mode: .lora) }
    func testTP4MatchesTP1ForLoRA() throws { try Self.compare(tp: 4, mode: .lora) }
    /// Per-module ranks and alphas (c_attn's pattern gives q, k and v theirs): slots of ranks 2, 3 and 5.
    func testTP4MatchesTP1ForLoRAWithPerModuleRanks() throws {
        let lc = LoRAConfig(
            rank: 3, alpha: 6, targets: LoRATarget.available(in: .gpt2),
            rankPattern: ["c_attn": 2, "h.1.mlp.c_fc": 5], alphaPattern: ["c_proj": 4])
        let l = LoRAWeights(config: lc, model: Self.cfg)
        XCTAssertEqual(Set(l.slots.map(\.rank)), [2, 3, 5])
        XCTAssertEqual(l.slot(layer: 0, target: .k)?.rank, 2)
        XCTAssertEqual(l.slot(layer: 0, target: .o)?.scale, 4 / 3)
        XCTAssertEqual(l.slot(layer: 0, target: .mlpOut)?.scale, 4 / 3, "c_proj is attn.c_proj and mlp.c_proj")
        try Self.compare(tp: 4, mode: .lora, lora: lc)
    }
    /// LoRA dropout (masks of global rows and columns, so the same whatever the split) with
    /// per-slot ranks, on GPT-2 and on a Llama-family model with every projection adapted (its 2
    /// key/value heads shared by the 4 ranks).
    func testTP4MatchesTP1ForLoRAWithDropoutAndPerModuleRanks() throws {
        let training = PassContext(training: true, dropoutSeed: 11, dropoutStep: 3)
        let gpt2 = LoRAConfig(
            rank: 3, alpha: 6, targets: LoRATarget.available(in: .gpt2), dropout: 0.3,
            rankPattern: ["c_attn": 2, "h.1.mlp.c_fc": 5])
        try Self.compare(tp: 4, mode: .lora, lora: gpt2, context: training)
        let llama = LoRAConfig(
            rank: 3, alpha: 6, targets: LoRATarget.available(in: .llama), dropout: 0.3,
            rankPattern: ["gate_proj": 5, "layers.1.self_attn.k_proj": 2], alphaPattern: ["down_proj": 4])
        XCTAssertEqual(Set(LoRAWeights(config: llama, model: Fixtures.llamaTiny).slots.map(\.rank)), [2, 3, 5])
        try Self.compare(tp: 4, mode: .lora, lora: llama, config: Fixtures.llamaTiny, context: training)
        // The masks matter: without dropout the gradients differ.
        let plain = try Self.run(tp: 1, mode: .lora, lora: llama, config: Fixtures.llamaTiny)[0].loraGrad
        let dropped = try Self.run(tp: 1, mode: .lora, lora: llama, config: Fixtures.llamaTiny, context: training)[0]
            .loraGrad
        XCTAssertGreaterThan(zip(plain, dropped).map { abs($0 - $1) }.max()!, 1e-3)
    }
    func testTP2MatchesTP1ForFullFineTuning() throws { try Self.compare(tp: 2, mode: .full) }
    func testTP4MatchesTP1ForFullFineTuning() throws { try Self.compare(tp: 4, mode: .full) }

    /// The two GEMM backends give the same model: logits, loss, LoRA and full gradients within
    /// 1e-5 of each tensor's largest entry (oneDNN and OpenBLAS sum in different orders), at TP 2.
    func testOneDNNAndOpenBLASBackendsGiveTheSameLogitsAndGradients() throws {
        for mode in [Method.lora, .full] {
            let blas = try Gemm.with(backend: .openblas) { try Self.run(tp: 2, mode: mode) }
            let dnnl = try Gemm.with(backend: .onednn) { try Self.run(tp: 2, mode: mode) }
            for (a, b) in zip(dnnl, blas) {
                let scale = a.logits.map(abs).max()!
                XCTAssertEqual(a.loss, b.loss, accuracy: 1e-5 * abs(b.loss), "\(mode) loss")
                Self.assertClose(a.logits, b.logits, tol: 1e-5 * scale, "\(mode) logits")
                let ga = mode == .lora ? a.loraGrad : Array(a.baseGrad!.arena.buffer)
                let gb = mode == .lora ? b.loraGrad : Array(b.baseGrad!.arena.buffer)
                XCTAssertGreaterThan(gb.map(abs).max()!, 1e-3)
                Self.assertClose(ga, gb, tol: 1e-5 * gb.map(abs).max()!, "\(mode) gradients")
            }
        }
    }

    func testTPDegreeThatDoesNotDivideHeadsIsRefused() {
        XCTAssertThrowsError(try TPLayout(config: Self.cfg, degree: 3, rank: 0)) { e in
            XCTAssertTrue("\(e)".contains("does not divide the number of heads 4"), "\(e)")
        }
    }
}
