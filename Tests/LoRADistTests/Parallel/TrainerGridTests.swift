import XCTest
@testable import LoRADist

/// Training is the same whatever the process grid: TP=1, TP=2, TP=4, DP=2, and a 2×2 grid give the
/// same losses and the same LoRA weights after several steps (tolerance 1e-4·(1+|x|): the same sums
/// in another order), every rank ends with bit-identical A and B, and the ledger shows exactly one
/// gradient AllReduce of 4·|A∪B| bytes per step.
final class TrainerGridTests: XCTestCase {
    static let cfg = Fixtures.tiny
    static let steps = 4

    struct RankResult { var losses: [Double]; var lora: [Float]; var fingerprint: UInt64; var entries: [LedgerEntry]; var loraCount: Int; var world: Int; var tp: Int }

    static func options(_ method: Method = .lora) -> TrainOptions {
        var o = TrainOptions()
        o.method = method
        o.steps = steps
        o.globalBatch = 4
        o.microBatch = 1
        o.seq = 8
        o.lr = 1e-2
        o.warmup = 1
        o.lora = LoRAConfig(rank: 2, alpha: 4, targets: [.q, .v, .o, .mlpIn, .mlpOut], dropout: 0.1)
        return o
    }

    /// Deterministic fake examples: step s, example e.
    static func fill(_ mb: MicroBatch, step s: Int, examples: Range<Int>) {
        for (row, e) in examples.enumerated() {
            var rng = RNG(seed: UInt64(s * 1000 + e))
            for t in 0..<mb.seq {
                let i = row * mb.seq + t
                mb.tokens[i] = Int32(rng.below(cfg.vocabSize))
                mb.targets[i] = Int32(rng.below(cfg.vocabSize))
                mb.mask[i] = t < 2 ? 0 : 1   // a "context" of 2 tokens without loss
            }
        }
    }

    static func train(world: Int, tp: Int, options o: TrainOptions) throws -> [RankResult] {
        try InProcessCommunicator.run(ranks: world) { raw in
            let ledger = Ledger()
            let comm = RecordingCommunicator(raw, ledger: ledger)
            let grid = try ProcessGrid(world: comm, tp: tp)
            let model = try Fixtures.randomModel(cfg, grid.tp, trainable: o.trainable(adapters: nil), baseSeed: 1)
            model.lora?.initialize(seed: 2)
            let trainer = try Trainer(grid: grid, ledger: ledger, model: model, options: o)
            let accum = o.accumulation(dp: grid.dpDegree)
            let micro = (0..<accum).map { _ in MicroBatch(batch: o.microBatch, seq: o.seq) }
            ledger.reset()
            var losses: [Double] = []
            for s in 0..<o.steps {
                for (j, mb) in micro.enumerated() {
                    let r = o.exampleRange(micro: j, replica: grid.replica, dp: grid.dpDegree)
                    fill(mb, step: s, examples: r)
                    mb.globalRow = r.lowerBound
                }
                let globalTokens = o.globalBatch * (o.seq - 2)
                losses.append(try trainer.trainStep(micro, globalTokens: globalTokens).loss)
            }
            let lora = model.lora.map { Array($0.arena.buffer) } ?? Array(model.base.arena.buffer)
            return RankResult(losses: losses, lora: lora, fingerprint: model.lora?.fingerprint() ?? 0,
                              entries: ledger.entries, loraCount: model.lora?.count ?? 0, world: world, tp: tp)
        }
    }

    func compareToSingleRank(world: Int, tp: Int) throws {
        let o = Self.options()
        let ref = try Self.train(world: 1, tp: 1, options: o)[0]
        XCTAssertLessThan(ref.losses.last!, ref.losses.first!, "training must lower the loss for the comparison to mean anything")
        let results = try Self.train(world: world, tp: tp, options: o)
        for r in results {
            for (a, b) in zip(r.losses, ref.losses) { XCTAssertEqual(a, b, accuracy: 1e-4 * (1 + abs(b)), "loss world \(world) tp \(tp)") }
            var worst: Float = 0
            for (a, b) in zip(r.lora, ref.lora) { worst = max(worst, abs(a - b) / (1 + abs(b))) }
            XCTAssertLessThan(worst, 1e-4, "LoRA weights world \(world) tp \(tp)")
            XCTAssertEqual(r.fingerprint, results[0].fingerprint, "A/B replicas must be bit-identical across ranks")
            // Exactly one gradient AllReduce per step, of exactly 4·|A∪B| bytes, over the whole world.
            let sync = r.entries.filter { $0.phase == .gradSync }
            if world > 1 {
                XCTAssertEqual(sync.count, Self.steps)
                XCTAssertTrue(sync.allSatisfy { $0.op == .allReduce && $0.bytes == 4 * r.loraCount && $0.group == "world" })
            } else {
                XCTAssertEqual(sync.count, 0)
            }
        }
    }

    func testTP2MatchesTP1() throws { try compareToSingleRank(world: 2, tp: 2) }
    func testTP4MatchesTP1() throws { try compareToSingleRank(world: 4, tp: 4) }
    func testDP2MatchesDP1WithTheSameGlobalBatch() throws { try compareToSingleRank(world: 2, tp: 1) }
    func testTwoByTwoGridMatchesTP1() throws { try compareToSingleRank(world: 4, tp: 2) }

    func testActivationCollectivesPerStepAreWhatTheLayoutImplies() throws {
        var o = Self.options()
        o.lora = LoRAConfig(rank: 2, alpha: 4, targets: [.q, .v])
        let L = Self.cfg.nLayer
        let r = try Self.train(world: 4, tp: 4, options: o)[0]
        let passes = Self.steps * o.accumulation(dp: 1)  // world 4 = tp 4: one replica
        let perPass = { (p: Phase) in r.entries.filter { $0.phase == p && $0.op == .allReduce }.count / passes }
        // Forward: embedding g, 2 g's per block, cross-entropy max and fused sums.
        XCTAssertEqual(perPass(.forward), 1 + 2 * L + 2)
        // Backward: the head's f, then per block the MLP f and the attention f — except the
        // attention f of block 0, below which nothing trains (q, v are the lowest parameters).
        XCTAssertEqual(perPass(.backward), 1 + 2 * L - 1)
        XCTAssertEqual(r.entries.filter { $0.phase == .gradSync }.count, Self.steps)
        let n = o.microBatch * o.seq, d = Self.cfg.nEmbd
        let fwdBytes = r.entries.filter { $0.phase == .forward }.reduce(0) { $0 + $1.bytes } / passes
        XCTAssertEqual(fwdBytes, 4 * (n * d * (1 + 2 * L) + n + 3 * n))
    }

    func testFullFineTuningReducesTheWholeShardOverDataParallel() throws {
        let o = Self.options(.full)
        let results = try Self.train(world: 2, tp: 1, options: o)
        let ref = try Self.train(world: 1, tp: 1, options: o)[0]
        let params = Self.cfg.parameterCount + (Self.cfg.paddedVocab - Self.cfg.vocabSize) * Self.cfg.nEmbd
        for r in results {
            let sync = r.entries.filter { $0.phase == .gradSync }
            XCTAssertEqual(sync.count, Self.steps)
            // The arena rounds each tensor to 16 floats; every byte of it is reduced.
            XCTAssertTrue(sync.allSatisfy { $0.bytes >= 4 * params && $0.group == "dp" })
            for (a, b) in zip(r.losses, ref.losses) { XCTAssertEqual(a, b, accuracy: 1e-4 * (1 + abs(b))) }
        }
    }
}
