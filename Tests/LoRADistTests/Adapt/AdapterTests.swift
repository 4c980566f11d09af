import XCTest

@testable import LoRADist

/// Adapter baselines: gradients against finite differences, the three placements against each
/// other and TP=1, and the collectives each placement adds per forward pass, read from the ledger.
final class AdapterTests: XCTestCase {
    static let cfg = Fixtures.tiny
    static let batch = 2, seq = 6
    static let tokens = Fixtures.randomTokens(batch * seq, below: cfg.vocabSize, seed: 12)
    static let targets = Fixtures.randomTokens(batch * seq, below: cfg.vocabSize, seed: 13)
    static let weights = Fixtures.meanWeights(batch * seq)

    /// A model with adapters whose W_up is non-zero (set from a hash of the global index, so every
    /// placement holds the same values).
    static func model(_ comm: Communicator, _ ac: AdapterConfig, training: Bool = true) throws -> GPTModel {
        let m = try Fixtures.randomModel(cfg, comm, trainable: .adapters(ac), training: training, baseSeed: 4)
        let ad = m.trainable!.adapters!
        ad.initialize(seed: 5)
        let d = cfg.nEmbd
        let ml = ad.localWidth
        let row0 = ac.placement == .sharded ? m.layout.rank * ml : 0
        for s in ad.slots {
            let id = UInt64(s.layer * 2 + s.position.rawValue)
            for r in 0..<ml {
                for c in 0..<d {
                    ad.ptr(s.wu)[r * d + c] = 0.5 * (hashUniform(77, id, UInt64((row0 + r) * d + c)) - 0.5)
                }
            }
            for c in 0..<d { ad.ptr(s.bu)[c] = 0.1 * (hashUniform(78, id, UInt64(c)) - 0.5) }
            if s.lnw >= 0 { for c in 0..<d { ad.ptr(s.lnw)[c] = 1 + 0.2 * (hashUniform(79, id, UInt64(c)) - 0.5) } }
        }
        return m
    }

    static func loss(_ m: GPTModel, _ acts: Activations, backward: Bool) throws -> Double {
        var pass = try tokens.withUnsafeBufferPointer {
            try m.forward(tokens: $0.baseAddress!, batch: batch, len: seq, into: acts)
        }
        let l = try m.lossForward(&pass, targets: targets, weights: weights, backward: backward)
        if backward { try tokens.withUnsafeBufferPointer { try m.backward(pass, tokens: $0.baseAddress!) } }
        return l
    }

    func testAdapterGradientsMatchFiniteDifferences() throws {
        for kind in AdapterKind.allCases {
            let m = try InProcessCommunicator.run(ranks: 1) {
                try Self.model($0, AdapterConfig(kind: kind, bottleneck: 8))
            }[0]
            let acts = try m.activations(batch: Self.batch, seq: Self.seq)
            m.trainable!.adapterGradients!.zero()
            _ = try Self.loss(m, acts, backward: true)
            let p = m.trainable!.adapters!.arena.base
            let g = m.trainable!.adapterGradients!.base
            var rng = RNG(seed: 1)
            let h: Float = 1e-2
            for _ in 0..<60 {
                let i = rng.below(m.trainable!.adapters!.arena.count)
                let saved = p[i]
                p[i] = saved + h
                let lp = try Self.loss(m, acts, backward: false)
                p[i] = saved - h
                let lm = try Self.loss(m, acts, backward: false)
                p[i] = saved
                let fd = Float((lp - lm) / Double(2 * h))
                XCTAssertLessThanOrEqual(abs(fd - g[i]), 2e-3 + 3e-2 * abs(g[i]), "\(kind) [\(i)] fd \(fd) vs \(g[i])")
            }
        }
    }

    /// Loss, logits shard and entries of one forward (+ backward) for a placement.
    static func run(tp: Int, _ ac: AdapterConfig) throws -> [(
        loss: Double, logits: [Float], entries: [LedgerEntry], vocab: Range<Int>
    )] {
        try InProcessCommunicator.run(ranks: tp) { raw in
            let ledger = Ledger()
            let comm = RecordingCommunicator(raw, ledger: ledger)
            let m = try Self.model(comm, ac)
            let acts = try m.activations(batch: batch, seq: seq)
            m.trainable!.adapterGradients?.zero()
            ledger.reset()
            ledger.phase = .forward
            var pass = try tokens.withUnsafeBufferPointer {
                try m.forward(tokens: $0.baseAddress!, batch: batch, len: seq, into: acts)
            }
            let l = try m.lossForward(&pass, targets: targets, weights: weights, backward: false)
            let logits = Array(UnsafeBufferPointer(start: acts.logits, count: batch * seq * m.layout.localVocab))
            return (l, logits, ledger.entries, m.layout.vocabRange)
        }
    }

    func testThreePlacementsGiveTheSameNumbersAsOneRank() throws {
        for kind in AdapterKind.allCases {
            let ref = try Self.run(tp: 1, AdapterConfig(kind: kind, bottleneck: 8))[0]
            for tp in [2, 4] {
                for placement in AdapterPlacement.allCases {
                    for r in try Self.run(tp: tp, AdapterConfig(kind: kind, bottleneck: 8, placement: placement)) {
                        XCTAssertEqual(r.loss, ref.loss, accuracy: 2e-5, "\(kind) \(placement) tp \(tp)")
                        let vl = r.vocab.count
                        let vp = Self.cfg.paddedVocab
                        var worst: Float = 0
                        for i in 0..<(Self.batch * Self.seq) {
                            for j in 0..<vl where r.vocab.lowerBound + j < Self.cfg.vocabSize {
                                worst = max(
                                    worst, abs(r.logits[i * vl + j] - ref.logits[i * vp + r.vocab.lowerBound + j]))
                            }
                        }
                        XCTAssertLessThan(worst, 2e-5, "\(kind) \(placement) tp \(tp) logits")
                    }
                }
            }
        }
    }

    func testPlacementsAddExactlyTheirCollectivesPerForward() throws {
        let L = Self.cfg.nLayer
        let n = Self.batch * Self.seq
        let d = Self.cfg.nEmbd
        for tp in [2, 4] {
            let base = try InProcessCommunicator.run(ranks: tp) { raw -> [LedgerEntry] in
                let ledger = Ledger()
                let comm = RecordingCommunicator(raw, ledger: ledger)
                let m = try GPTModel(config: Self.cfg, tp: comm, trainable: nil, training: false)
                let acts = try m.activations(batch: Self.batch, seq: Self.seq, training: false)
                _ = try Self.tokens.withUnsafeBufferPointer {
                    try m.forward(tokens: $0.baseAddress!, batch: Self.batch, len: Self.seq, into: acts)
                }
                return ledger.entries
            }[0]
            let baseAR = base.filter { $0.op == .allReduce }.count
            XCTAssertEqual(baseAR, 1 + 2 * L)
            for kind in AdapterKind.allCases {
                let perBlock = kind == .houlsby ? 2 : 1
                for placement in AdapterPlacement.allCases {
                    let e = try Self.run(tp: tp, AdapterConfig(kind: kind, bottleneck: 8, placement: placement))[0]
                        .entries
                    // Forward up to the final LayerNorm (the loss adds its own 2 AllReduces).
                    let ar = e.filter { $0.op == .allReduce }.count - 2
                    let bc = e.filter { $0.op == .broadcast }
                    switch placement {
                    case .replicated:
                        XCTAssertEqual(ar, baseAR)
                        XCTAssertEqual(bc.count, 0)
                    case .sharded:
                        XCTAssertEqual(ar, baseAR + perBlock * L, "\(kind) sharded tp \(tp)")
                        XCTAssertEqual(bc.count, 0)
                    case .owner:
                        XCTAssertEqual(ar, baseAR)
                        XCTAssertEqual(bc.count, perBlock * L, "\(kind) owner tp \(tp)")
                        XCTAssertTrue(bc.allSatisfy { $0.bytes == 4 * n * d })
                    }
                }
            }
        }
    }

    func testAdapterTrainingIsGridInvariant() throws {
        var o = TrainOptions()
        o.method = .adapterH
        o.steps = 3
        o.globalBatch = 2
        o.microBatch = 1
        o.seq = Self.seq
        o.lr = 1e-2
        o.warmup = 1
        let seq = Self.seq
        func train(world: Int, tp: Int, placement: AdapterPlacement) throws -> [Double] {
            try InProcessCommunicator.run(ranks: world) { raw in
                let ledger = Ledger()
                let grid = try ProcessGrid(world: RecordingCommunicator(raw, ledger: ledger), tp: tp)
                let m = try Self.model(grid.tp, AdapterConfig(kind: .houlsby, bottleneck: 8, placement: placement))
                let t = try Trainer(grid: grid, ledger: ledger, model: m, options: o)
                let micro = (0..<o.accumulation(dp: grid.dpDegree)).map { _ in MicroBatch(batch: 1, seq: seq) }
                var losses: [Double] = []
                for s in 0..<o.steps {
                    for (j, mb) in micro.enumerated() {
                        let r = o.exampleRange(micro: j, replica: grid.replica, dp: grid.dpDegree)
                        for i in 0..<seq {
                            mb.tokens[i] = Self.tokens[(r.lowerBound * seq + i + s) % Self.tokens.count]
                            mb.targets[i] = Self.targets[(r.lowerBound * seq + i) % Self.tokens.count]
                            mb.mask[i] = 1
                        }
                        mb.globalRow = r.lowerBound
                    }
                    losses.append(try t.trainStep(micro, globalTokens: o.globalBatch * seq).loss)
                }
                return losses
            }[0]
        }
        let ref = try train(world: 1, tp: 1, placement: .replicated)
        XCTAssertLessThan(ref.last!, ref.first!, "adapter training must lower the loss")
        for (world, tp, placement) in [
            (2, 2, AdapterPlacement.sharded), (2, 2, .owner), (2, 2, .replicated), (2, 1, .replicated), (4, 2, .sharded)
        ] {
            let got = try train(world: world, tp: tp, placement: placement)
            for (a, b) in zip(got, ref) {
                XCTAssertEqual(a, b, accuracy: 1e-4 * (1 + abs(b)), "world \(world) tp \(tp) \(placement)")
            }
        }
    }
}
