import XCTest

@testable import LoRADist

/// A trainer step on packed micro-batches against the same examples unpacked, on every grid: TP 1,
/// 2 and 4 and 2 × 2 (dp 2, the replicas' micro-batches of different sizes), the loss and the
/// synced LoRA gradient within 1e-5 relative; and the step's ledger is the schedule of its passes'
/// real sizes, line by line.
final class PackedGridTests: XCTestCase {
    static let cfg = Fixtures.tiny

    /// Four examples per step, two per micro-batch, rows of 10: LoRA with dropout, no clipping (the
    /// gradient is compared as it is synced).
    static func options() -> TrainOptions {
        var o = GridTraining.options()
        o.steps = 1
        o.microBatch = 2
        o.seq = 10
        o.clip = 0
        return o
    }

    /// Example e of the step: 3 to 10 tokens, the first two without loss.
    static func length(_ e: Int) -> Int { 3 + (e * 5 + 2) % 8 }

    /// Fills `mb` with examples `r` of the step, packed or one per row; returns its masked tokens.
    static func fill(_ mb: MicroBatch, examples r: Range<Int>, packed: Bool) {
        for i in 0..<(mb.batch * mb.seq) {
            mb.tokens[i] = 0
            mb.targets[i] = 0
            mb.mask[i] = 0
        }
        var at = 0
        mb.lengths = []
        for (row, e) in r.enumerated() {
            var rng = RNG(seed: UInt64(500 + e))
            let len = length(e)
            let start = packed ? at : row * mb.seq
            for t in 0..<len {
                mb.tokens[start + t] = Int32(rng.below(cfg.vocabSize))
                mb.targets[start + t] = Int32(rng.below(cfg.vocabSize))
                mb.mask[start + t] = t < 2 ? 0 : 1
            }
            if packed { mb.lengths.append(len) }
            at += len
        }
        mb.globalRow = r.lowerBound
    }

    struct Outcome {
        var loss: Double
        var grads: [Float]
        var recorded: [ScheduledCollective], expected: [ScheduledCollective]
    }

    static func step(world: Int, tp: Int, packed: Bool) throws -> [Outcome] {
        let o = options()
        let masked = (0..<o.globalBatch).reduce(0) { $0 + length($1) - 2 }
        return try InProcessCommunicator.run(ranks: world) { raw in
            let ledger = Ledger()
            let grid = try ProcessGrid(world: RecordingCommunicator(raw, ledger: ledger), tp: tp)
            let model = try Fixtures.randomModel(cfg, grid.tp, trainable: .lora(o.lora), baseSeed: 1)
            Fixtures.initLoRA(model.lora!, seed: 2, nonZeroB: 0.3, bSeed: 3)
            let trainer = try Trainer(grid: grid, ledger: ledger, model: model, options: o)
            let micro = (0..<o.accumulation(dp: grid.dpDegree)).map { _ in MicroBatch(batch: o.microBatch, seq: o.seq) }
            for (j, mb) in micro.enumerated() {
                fill(mb, examples: o.exampleRange(micro: j, replica: grid.replica, dp: grid.dpDegree), packed: packed)
            }
            ledger.reset()
            let st = try trainer.trainStep(micro, globalTokens: masked)
            let expected = StepSchedule.training(
                config: cfg, tp: grid.tpDegree, dp: grid.dpDegree, method: .lora, lora: o.lora, adapters: nil,
                passTokens: micro.map(\.rows), gradientElements: trainer.trainableCount)
            return Outcome(
                loss: st.loss, grads: Array(UnsafeBufferPointer(start: trainer.grads, count: trainer.trainableCount)),
                recorded: StepSchedule.recorded(ledger.entries), expected: expected)
        }
    }

    func compare(world: Int, tp: Int) throws {
        let packed = try Self.step(world: world, tp: tp, packed: true)
        let unpacked = try Self.step(world: world, tp: tp, packed: false)
        let label = "world \(world) tp \(tp)"
        for (rank, (p, u)) in zip(packed, unpacked).enumerated() {
            XCTAssertEqual(p.loss, u.loss, accuracy: 1e-5 * abs(u.loss), label)
            PackingTests.assertClose(p.grads, u.grads, rel: 1e-5, "\(label) rank \(rank) gradients")
            let key = { (c: ScheduledCollective) in c.description }
            XCTAssertEqual(p.recorded.map(key).sorted(), p.expected.map(key).sorted(), "\(label) rank \(rank)")
            XCTAssertEqual(u.recorded.map(key).sorted(), u.expected.map(key).sorted(), "\(label) rank \(rank)")
        }
        if tp > 1 {
            // Packed passes move only their real tokens: fewer bytes than the padded rows.
            let bytes = { (o: Outcome) in
                o.recorded.filter { $0.phase == .forward }.reduce(0) { $0 + $1.calls * $1.bytesPerCall }
            }
            XCTAssertLessThan(bytes(packed[0]), bytes(unpacked[0]), label)
        }
    }

    func testTP1() throws { try compare(world: 1, tp: 1) }
    func testTP2() throws { try compare(world: 2, tp: 2) }
    func testTP4() throws { try compare(world: 4, tp: 4) }
    func testTwoByTwoGrid() throws { try compare(world: 4, tp: 2) }
}
