import XCTest

@testable import LoRADist

/// BitFit (`--method bitfit`): only the biases train (the four linear layers' and LayerNorm β);
/// every other weight keeps its bits; TP 1, 2, 4 and a 2×2 grid learn the same biases; replicated
/// biases stay bit-identical across a TP group; gradients are summed over data-parallel replicas
/// only, 4 bytes per bias of the shard.
final class BitFitTests: XCTestCase {
    static let cfg = GridTraining.cfg

    struct RankResult {
        var losses: [Double]
        /// This rank's shard of the base after training, and before.
        var base: [Float], initial: [Float]
        var shape: BaseLayout
        var entries: [LedgerEntry]
        var biasCount: Int
    }

    static func train(world: Int, tp: Int) throws -> [RankResult] {
        let o = GridTraining.options(.bitfit)
        return try InProcessCommunicator.run(ranks: world) { raw in
            let ledger = Ledger()
            let comm = RecordingCommunicator(raw, ledger: ledger)
            let grid = try ProcessGrid(world: comm, tp: tp)
            let model = try Fixtures.randomModel(cfg, grid.tp, trainable: .bitfit, baseSeed: 1)
            // Non-zero biases and LayerNorm γ (by global index: the same model at every TP degree),
            // so that "unchanged" and "changed" both mean something.
            for s in model.base.shape.slots where s.name.hasSuffix(".bias") || s.name.contains("ln_") {
                for i in 0..<s.localCount { model.base.ptr(s.offset)[i] += 0.01 * Float(globalIndex(s.spec, i) % 7) }
            }
            let initial = Array(model.base.arena.buffer)
            let trainer = try Trainer(grid: grid, ledger: ledger, model: model, options: o)
            let micro = (0..<o.accumulation(dp: grid.dpDegree)).map { _ in MicroBatch(batch: o.microBatch, seq: o.seq) }
            ledger.reset()
            var losses: [Double] = []
            for s in 0..<o.steps {
                GridTraining.fillStep(micro, step: s, options: o, grid: grid)
                losses.append(try trainer.trainStep(micro, globalTokens: o.globalBatch * (o.seq - 2)).loss)
            }
            return RankResult(
                losses: losses, base: Array(model.base.arena.buffer), initial: initial, shape: model.base.shape,
                entries: ledger.entries, biasCount: model.trainable!.biases!.count)
        }
    }

    /// Global element index of a 1-D tensor's local element `i` under its shard spec.
    static func globalIndex(_ spec: ShardSpec, _ i: Int) -> Int {
        switch spec {
        case .replicated, .rows: return i
        case .cols(let r), .shared(let r, _): return r.lowerBound + i
        case .qkv(let r, let d): return (i / r.count) * d + r.lowerBound + i % r.count
        }
    }

    /// Every bias of the model by name, assembled from the ranks' shards.
    static func biases(_ ranks: [RankResult]) -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for r in ranks {
            for s in r.shape.slots where BiasParameters.trains(s.name) {
                var full = out[s.name] ?? [Float](repeating: .nan, count: s.shape[0])
                for i in 0..<s.localCount { full[globalIndex(s.spec, i)] = r.base[s.offset + i] }
                out[s.name] = full
            }
        }
        return out
    }

    func testBitFitChangesEveryBiasAndNothingElse() throws {
        let r = try Self.train(world: 1, tp: 1)[0]
        XCTAssertLessThan(r.losses.last!, r.losses.first!, "BitFit must lower the loss")
        var trained = 0
        for s in r.shape.slots {
            let before = Array(r.initial[s.offset..<(s.offset + s.localCount)])
            let after = Array(r.base[s.offset..<(s.offset + s.localCount)])
            if BiasParameters.trains(s.name) {
                let changed = zip(before, after).filter { $0 != $1 }.count
                XCTAssertGreaterThan(
                    changed, s.localCount / 2, "\(s.name): most entries change (\(changed) of \(s.localCount))")
                trained += s.localCount
            } else {
                XCTAssertEqual(before.map(\.bitPattern), after.map(\.bitPattern), "\(s.name) must keep its bits")
            }
        }
        // Per block: ln_1 β, c_attn (3d), attn c_proj (d), ln_2 β, c_fc (4d), mlp c_proj (d); and ln_f β.
        let d = Self.cfg.nEmbd
        XCTAssertEqual(trained, Self.cfg.nLayer * 11 * d + d)
        XCTAssertEqual(BiasParameters.globalCount(of: Self.cfg), trained)
        XCTAssertEqual(r.biasCount, trained)
        XCTAssertEqual(r.entries.filter { $0.phase == .gradSync }.count, 0, "one rank reduces nothing")
    }

    func compareToSingleRank(world: Int, tp: Int) throws {
        let ref = try Self.train(world: 1, tp: 1)
        let results = try Self.train(world: world, tp: tp)
        let want = Self.biases(ref)
        let got = Self.biases(results)
        XCTAssertEqual(Set(got.keys), Set(want.keys))
        for (name, w) in want {
            let g = got[name]!
            XCTAssertFalse(g.contains { $0.isNaN }, "\(name): every element comes from some rank")
            var worst: Float = 0
            for (a, b) in zip(g, w) { worst = max(worst, abs(a - b) / (1 + abs(b))) }
            XCTAssertLessThan(worst, 1e-4, "\(name) world \(world) tp \(tp)")
        }
        for r in results {
            for (a, b) in zip(r.losses, ref[0].losses) {
                XCTAssertEqual(a, b, accuracy: 1e-4 * (1 + abs(b)), "loss world \(world) tp \(tp)")
            }
            // The frozen weights of this shard keep their bits.
            for s in r.shape.slots where !BiasParameters.trains(s.name) {
                XCTAssertTrue(
                    (s.offset..<(s.offset + s.localCount)).allSatisfy {
                        r.base[$0].bitPattern == r.initial[$0].bitPattern
                    }, s.name)
            }
            // Gradients cross the network only between data-parallel replicas: one AllReduce of the
            // shard's biases per step.
            let sync = r.entries.filter { $0.phase == .gradSync }
            if world / tp > 1 {
                XCTAssertEqual(sync.count, GridTraining.steps)
                XCTAssertTrue(
                    sync.allSatisfy { $0.op == .allReduce && $0.bytes == 4 * r.biasCount && $0.group == "dp" },
                    "\(sync)")
            } else {
                XCTAssertEqual(sync.count, 0)
            }
        }
        // Replicated biases (row-parallel c_proj, LayerNorm β) are bit-identical across the TP group.
        for r in results {
            for s in r.shape.slots where BiasParameters.trains(s.name) && s.spec == .replicated {
                let first = results[0]
                let o = first.shape.slots.first { $0.name == s.name }!
                XCTAssertEqual(
                    Array(r.base[s.offset..<(s.offset + s.localCount)]).map(\.bitPattern),
                    Array(first.base[o.offset..<(o.offset + o.localCount)]).map(\.bitPattern), "\(s.name) replicas")
            }
        }
    }

    func testTP2MatchesTP1() throws { try compareToSingleRank(world: 2, tp: 2) }
    func testTP4MatchesTP1() throws { try compareToSingleRank(world: 4, tp: 4) }
    func testTwoByTwoGridMatchesTP1() throws { try compareToSingleRank(world: 4, tp: 2) }

    func testColumnParallelBiasesAreShardedAndTheRestReplicated() throws {
        let layout = try TPLayout(config: Self.cfg, degree: 4, rank: 1)
        let b = BiasParameters(shape: BaseLayout(layout: layout))
        let d = Self.cfg.nEmbd
        for s in b.segments {
            let sharded = s.slot.name.hasSuffix("c_attn.bias") || s.slot.name.hasSuffix("c_fc.bias")
            XCTAssertEqual(s.sharded, sharded, s.slot.name)
            XCTAssertEqual(s.slot.localCount, sharded ? s.slot.shape[0] / 4 : d, s.slot.name)
        }
        XCTAssertEqual(b.count, Self.cfg.nLayer * (3 * d + 4 * d) / 4 + Self.cfg.nLayer * 4 * d + d)
    }
}
