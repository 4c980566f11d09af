import XCTest

@testable import LoRADist

/// Activation checkpointing (`Recompute.blocks`): the backward recomputes each block's forward from
/// its kept input, so the loss and every gradient equal those of a run that kept everything, bit
/// for bit (GPT-2 and the Llama family, fp32 and bf16, TP 1 and 2, LoRA with dropout, full
/// fine-tuning and the bottleneck adapters); the recomputed forward's collectives are in the
/// ledger under `recompute`; and the activations shrink by (layers − 1) blocks' intermediates.
final class RecomputeTests: XCTestCase {
    /// Three blocks, so the one set of buffers is written by two recomputed blocks in turn.
    static let gpt2 = GPTConfig(nLayer: 3, nEmbd: 32, nHead: 4, vocabSize: 61, nPositions: 16)
    static let llama = GPTConfig.llama(
        nLayer: 3, nEmbd: 32, nHead: 4, nKVHead: 2, ffn: 48, vocabSize: 61, nPositions: 16,
        tiedHead: false, qkvBias: true)
    static let batch = 2, seq = 7

    struct Outcome {
        var loss: Double
        var grads: [Float]
    }

    /// One forward, loss and backward of a training pass (LoRA's dropout on) on `tp` in-process
    /// ranks: each rank's loss and gradients, before any gradient sum.
    static func run(
        _ cfg: GPTConfig, tp: Int, method: Method, precision: Precision, recompute: Recompute,
        adapters: AdapterConfig? = nil
    ) throws -> [Outcome] {
        var rng = RNG(seed: 31)
        let n = batch * seq
        let tokens = Fixtures.randomTokens(n, below: cfg.vocabSize, rng: &rng)
        let targets = Fixtures.randomTokens(n, below: cfg.vocabSize, rng: &rng)
        let weights = Fixtures.meanWeights(n)
        let lora = LoRAConfig(rank: 3, alpha: 6, targets: LoRATarget.available(in: cfg.family), dropout: 0.1)
        return try InProcessCommunicator.run(ranks: tp) { comm in
            let trainable = Fixtures.trainable(method, lora: lora, adapters: adapters)
            let m = try Fixtures.randomModel(cfg, comm, trainable: trainable, precision: precision, baseSeed: 5)
            if let l = m.lora { Fixtures.initLoRA(l, seed: 9, nonZeroB: 0.5, bSeed: 4) }
            m.trainable?.adapters?.initialize(seed: 9)
            m.trainable?.publish()
            let acts = try m.activations(batch: batch, seq: seq, recompute: recompute)
            XCTAssertEqual(acts.recompute, recompute)
            let context = PassContext(training: true, dropoutSeed: 77, dropoutStep: 3, rowOffset: 0)
            var pass = try tokens.withUnsafeBufferPointer {
                try m.forward(tokens: $0.baseAddress!, batch: batch, len: seq, into: acts, context: context)
            }
            let loss = try m.lossForward(&pass, targets: targets, weights: weights, backward: true)
            try tokens.withUnsafeBufferPointer { try m.backward(pass, tokens: $0.baseAddress!) }
            let t = m.trainable!
            return Outcome(loss: loss, grads: Array(UnsafeBufferPointer(start: t.gradients!, count: t.count)))
        }
    }

    /// `blocks` against `none`: the same loss and gradients on every rank, bit for bit.
    static func assertIdentical(
        _ cfg: GPTConfig, tp: Int, method: Method, precision: Precision, adapters: AdapterConfig? = nil,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let label = "\(cfg.family.rawValue) \(method.rawValue) \(precision.rawValue) tp \(tp)"
        let kept = try run(cfg, tp: tp, method: method, precision: precision, recompute: .none, adapters: adapters)
        let again = try run(cfg, tp: tp, method: method, precision: precision, recompute: .blocks, adapters: adapters)
        // (An owner-placed adapter's gradients are all on TP rank 0.)
        XCTAssertGreaterThan(
            kept.flatMap(\.grads).map(abs).max() ?? 0, 1e-4, "\(label): gradients must be non-trivial", file: file,
            line: line)
        for (rank, (a, b)) in zip(kept, again).enumerated() {
            XCTAssertEqual(a.loss.bitPattern, b.loss.bitPattern, "\(label) rank \(rank): loss", file: file, line: line)
            XCTAssertEqual(a.grads.count, b.grads.count, label, file: file, line: line)
            let first = a.grads.indices.first { a.grads[$0].bitPattern != b.grads[$0].bitPattern }
            let values = first.map { "\(a.grads[$0]) vs \(b.grads[$0])" } ?? ""
            XCTAssertNil(first, "\(label) rank \(rank): gradient \(first ?? 0): \(values)", file: file, line: line)
        }
    }

    func testLoRAAndFullGradientsEqualWithoutRecomputeBitForBit() throws {
        for cfg in [Self.gpt2, Self.llama] {
            for tp in [1, 2] {
                for precision in [Precision.fp32, .bf16] {
                    for method in [Method.lora, .full] {
                        try Self.assertIdentical(cfg, tp: tp, method: method, precision: precision)
                    }
                }
            }
        }
    }

    /// The adapters' slots are one block's under `blocks`: Houlsby sharded (its g in forward) and
    /// Lin owner-placed (its LayerNorm statistics, the owner's Broadcast).
    func testAdapterGradientsEqualWithoutRecomputeBitForBit() throws {
        let cases = [
            (Method.adapterH, AdapterConfig(kind: .houlsby, bottleneck: 4, placement: .sharded)),
            (Method.adapterL, AdapterConfig(kind: .lin, bottleneck: 4, placement: .owner))
        ]
        for cfg in [Self.gpt2, Self.llama] {
            for tp in [1, 2] {
                for (method, adapters) in cases {
                    try Self.assertIdentical(cfg, tp: tp, method: method, precision: .fp32, adapters: adapters)
                }
            }
        }
    }

    /// A short training run (four steps of LoRA with dropout, on TP 2 and on a 2×2 grid) ends with
    /// the same adapter and losses; its ledger holds the recomputed blocks' forward collectives
    /// under `recompute` (block 0 of the two: the top one is not recomputed) and, besides them,
    /// exactly the lines of the run without recompute, which has none.
    func testATrainingRunIsIdenticalAndItsLedgerShowsTheRecomputedCollectives() throws {
        for (world, tp) in [(2, 2), (4, 2)] {
            var o = GridTraining.options()
            let none = try GridTraining.train(world: world, tp: tp, options: o)
            o.recompute = .blocks
            let blocks = try GridTraining.train(world: world, tp: tp, options: o)
            let passes = GridTraining.steps * o.accumulation(dp: world / tp)
            let L = GridTraining.cfg.nLayer
            for (a, b) in zip(none, blocks) {
                XCTAssertEqual(a.losses, b.losses, "world \(world) tp \(tp)")
                XCTAssertEqual(a.lora.map(\.bitPattern), b.lora.map(\.bitPattern), "world \(world) tp \(tp): adapter")
                XCTAssertEqual(a.entries.filter { $0.phase == .recompute }.count, 0, "none recomputes nothing")
                let recomputed = b.entries.filter { $0.phase == .recompute }
                for site in [Site.attnOut, .mlpOut] {
                    let calls = recomputed.filter { $0.site == site.rawValue }
                    XCTAssertEqual(calls.count, (L - 1) * passes, "\(site) under recompute")
                    XCTAssertTrue(calls.allSatisfy { $0.op == .allReduce && $0.group == "tp" })
                    XCTAssertTrue(calls.allSatisfy { $0.bytes == 4 * o.microBatch * o.seq * GridTraining.cfg.nEmbd })
                }
                XCTAssertEqual(recomputed.count, 2 * (L - 1) * passes, "nothing else is recomputed")
                let key = { (c: ScheduledCollective) in c.description }
                XCTAssertEqual(
                    StepSchedule.recorded(b.entries.filter { $0.phase != .recompute }).map(key).sorted(),
                    StepSchedule.recorded(a.entries).map(key).sorted(), "the other lines are unchanged")
                XCTAssertTrue(Ledger.table(of: b.entries).contains("recompute"))
            }
        }
    }

    /// The activations shrink by the per-block buffers of all blocks but one: for each buffer
    /// kept per block, (L − 1) copies (each taken in 16-float units, as `ArenaPlanner` rounds).
    /// LoRA on q, v keeps q|k|v's input only; full fine-tuning every linear's input; Houlsby's
    /// adapters add their two slots per block.
    func testTheActivationArenaShrinksByTheOtherBlocksIntermediates() throws {
        func r16(_ x: Int) -> Int { (x + 15) / 16 * 16 }
        let cases: [(String, GPTConfig, Trainable.Spec?, [Bool])] = [
            (
                "lora q,v", Self.gpt2, .lora(LoRAConfig(rank: 2, alpha: 4, targets: [.q, .v])),
                [true, false, false, false]
            ),
            ("full", Self.gpt2, .full, [true, true, true, true]),
            ("llama full", Self.llama, .full, [true, true, true, true]),
            (
                "houlsby", Self.gpt2, .adapters(AdapterConfig(kind: .houlsby, bottleneck: 4, placement: .replicated)),
                [false, false, false, false]
            )
        ]
        for (name, cfg, spec, kept) in cases {
            for tp in [1, 2] {
                let shrink = try InProcessCommunicator.run(ranks: tp) { comm -> (Int, Int) in
                    let m = try GPTModel(config: cfg, tp: comm, trainable: spec)
                    let (b, s) = (Self.batch, Self.seq)
                    let none = try m.activations(batch: b, seq: s)
                    let blocks = try m.activations(batch: b, seq: s, recompute: .blocks)
                    let lay = m.layout
                    let (L, n, d) = (cfg.nLayer, b * s, cfg.nEmbd)
                    // xMid, the two norms' statistics, q|k|v, the attention probabilities, the MLP's
                    // input projection; then xn1, xn2, the attention output and the MLP activation
                    // when their linear trains.
                    var perBlock = [
                        n * d, 2 * n, 2 * n, n * lay.localQKV, b * lay.localHeads * s * s, n * lay.localMLPIn
                    ]
                    for (k, x) in [n * d, n * d, n * lay.localDim, n * lay.localFFN].enumerated() where kept[k] {
                        perBlock.append(x)
                    }
                    var expected = perBlock.reduce(0) { $0 + r16(L * $1) - r16($1) }
                    if let ad = m.trainable?.adapters {
                        let p = ad.config.positions.count
                        let w = ad.localWidth
                        for x in [n * d, n * d, 2 * n, n * w, n * w] { expected += r16(L * p * x) - r16(p * x) }
                    }
                    XCTAssertEqual(blocks.bytes, none.bytes - 4 * (none.arena.count - blocks.arena.count))
                    return (none.arena.count - blocks.arena.count, expected)
                }
                for (got, expected) in shrink { XCTAssertEqual(got, expected, "\(name) tp \(tp)") }
            }
        }
        // Inference activations are one set already: recompute changes nothing there.
        let inference = try InProcessCommunicator.run(ranks: 1) { comm -> (Int, Int, Recompute) in
            let m = try GPTModel(config: Self.gpt2, tp: comm, trainable: nil, training: false)
            let a = try m.activations(batch: 2, seq: 7, training: false)
            let b = try m.activations(batch: 2, seq: 7, training: false, recompute: .blocks)
            return (a.arena.count, b.arena.count, b.recompute)
        }[0]
        XCTAssertEqual(inference.0, inference.1)
        XCTAssertEqual(inference.2, .none)
    }

    /// The cost model prices the recomputed blocks: their collectives (the schedule's `recompute`
    /// lines) with the activation collectives, their forward FLOPs with the compute.
    func testTheCostModelCountsTheRecomputedForward() {
        let cfg = GPTConfig.named("gpt2")!
        var m = StepCostModel(
            config: cfg, seq: 1024, batchPerReplica: 8, tp: 4, dp: 1, method: .lora, flopsPerRank: 1e11,
            intra: LinkModel(alpha: 1e-5, beta: 1e-10), inter: LinkModel(alpha: 1e-5, beta: 1e-9))
        let none = m.predict()
        m.recompute = .blocks
        XCTAssertEqual(m.recomputedBlocks, cfg.nLayer - 1)
        let lines = m.schedule.filter { $0.phase == .recompute }
        XCTAssertEqual(lines.map(\.site), [.attnOut, .mlpOut])
        XCTAssertEqual(lines.map(\.calls), [cfg.nLayer - 1, cfg.nLayer - 1])
        let blocks = m.predict()
        let act = 4.0 * 8 * 1024 * Double(cfg.nEmbd)
        XCTAssertEqual(
            blocks.activation - none.activation, 2 * Double(cfg.nLayer - 1) * m.intra.allReduce(bytes: act, ranks: 4),
            accuracy: 1e-12)
        let L = Double(cfg.nLayer)
        let flops = FlopCount.blocksForwardPerToken(cfg, seq: 1024) * (L - 1) / L * 8 * 1024 / 4
        XCTAssertEqual(blocks.compute - none.compute, flops / 1e11, accuracy: 1e-9 * blocks.compute)
    }
}
