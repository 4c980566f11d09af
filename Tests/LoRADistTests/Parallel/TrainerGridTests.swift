import XCTest

@testable import LoRADist

/// Training is the same whatever the process grid: TP=1, TP=2, TP=4, DP=2, and a 2×2 grid give the
/// same losses and the same LoRA weights after several steps (tolerance 1e-4·(1+|x|): the same sums
/// in another order), every rank ends with bit-identical A and B, and the ledger shows exactly one
/// gradient AllReduce of 4·|A∪B| bytes per step.
final class TrainerGridTests: XCTestCase {
    func compareToSingleRank(world: Int, tp: Int) throws {
        let o = GridTraining.options()
        let ref = try GridTraining.train(world: 1, tp: 1, options: o)[0]
        XCTAssertLessThan(
            ref.losses.last!, ref.losses.first!, "training must lower the loss for the comparison to mean anything")
        let results = try GridTraining.train(world: world, tp: tp, options: o)
        for r in results {
            for (a, b) in zip(r.losses, ref.losses) {
                XCTAssertEqual(a, b, accuracy: 1e-4 * (1 + abs(b)), "loss world \(world) tp \(tp)")
            }
            var worst: Float = 0
            for (a, b) in zip(r.lora, ref.lora) { worst = max(worst, abs(a - b) / (1 + abs(b))) }
            XCTAssertLessThan(worst, 1e-4, "LoRA weights world \(world) tp \(tp)")
            XCTAssertEqual(r.fingerprint, results[0].fingerprint, "A/B replicas must be bit-identical across ranks")
            // Exactly one gradient AllReduce per step, of exactly 4·|A∪B| bytes, over the whole world.
            let sync = r.entries.filter { $0.phase == .gradSync }
            if world > 1 {
                XCTAssertEqual(sync.count, GridTraining.steps)
                XCTAssertTrue(
                    sync.allSatisfy { $0.op == .allReduce && $0.bytes == 4 * r.loraCount && $0.group == "world" })
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
        var o = GridTraining.options()
        o.lora = LoRAConfig(rank: 2, alpha: 4, targets: [.q, .v])
        let L = GridTraining.cfg.nLayer
        let r = try GridTraining.train(world: 4, tp: 4, options: o)[0]
        let passes = GridTraining.steps * o.accumulation(dp: 1)  // world 4 = tp 4: one replica
        let perPass = { (p: Phase) in r.entries.filter { $0.phase == p && $0.op == .allReduce }.count / passes }
        // Forward: embedding g, 2 g's per block, cross-entropy max and fused sums.
        XCTAssertEqual(perPass(.forward), 1 + 2 * L + 2)
        // Backward: the head's f, then per block the MLP f and the attention f — except the
        // attention f of block 0, below which nothing trains (q, v are the lowest parameters).
        XCTAssertEqual(perPass(.backward), 1 + 2 * L - 1)
        XCTAssertEqual(r.entries.filter { $0.phase == .gradSync }.count, GridTraining.steps)
        let n = o.microBatch * o.seq
        let d = GridTraining.cfg.nEmbd
        let fwdBytes = r.entries.filter { $0.phase == .forward }.reduce(0) { $0 + $1.bytes } / passes
        XCTAssertEqual(fwdBytes, 4 * (n * d * (1 + 2 * L) + n + 3 * n))
    }

    func testFullFineTuningReducesTheWholeShardOverDataParallel() throws {
        let o = GridTraining.options(.full)
        let results = try GridTraining.train(world: 2, tp: 1, options: o)
        let ref = try GridTraining.train(world: 1, tp: 1, options: o)[0]
        let cfg = GridTraining.cfg
        let params = cfg.parameterCount + (cfg.paddedVocab - cfg.vocabSize) * cfg.nEmbd
        for r in results {
            let sync = r.entries.filter { $0.phase == .gradSync }
            XCTAssertEqual(sync.count, GridTraining.steps)
            // The arena rounds each tensor to 16 floats; every byte of it is reduced.
            XCTAssertTrue(sync.allSatisfy { $0.bytes >= 4 * params && $0.group == "dp" })
            for (a, b) in zip(r.losses, ref.losses) { XCTAssertEqual(a, b, accuracy: 1e-4 * (1 + abs(b))) }
        }
    }
}
