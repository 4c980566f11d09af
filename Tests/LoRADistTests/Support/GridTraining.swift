import Foundation

@testable import LoRADist

/// The small training the grid, BitFit, collective-site and report tests share: `Fixtures.tiny`,
/// four steps of four 8-token sequences (one per micro-batch), deterministic fake examples, and a
/// run of those steps on a world of threads that returns what each rank saw.
enum GridTraining {
    static let cfg = Fixtures.tiny
    static let steps = 4

    struct RankResult {
        var losses: [Double]
        /// LoRA's A and B after training (the base's shard for a method without LoRA).
        var lora: [Float]
        var fingerprint: UInt64
        var entries: [LedgerEntry]
        var loraCount: Int
        var world: Int, tp: Int
    }

    /// `steps` steps of `method` at lr 1e-2 (LoRA r 2, α 4 on q, v, o and the MLP, dropout 0.1).
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
                mb.mask[i] = t < 2 ? 0 : 1  // a "context" of 2 tokens without loss
            }
        }
    }

    /// Fills this replica's micro-batches of step `s` (`fill`) with their rows in the global batch.
    static func fillStep(_ micro: [MicroBatch], step s: Int, options o: TrainOptions, grid: ProcessGrid) {
        for (j, mb) in micro.enumerated() {
            let r = o.exampleRange(micro: j, replica: grid.replica, dp: grid.dpDegree)
            fill(mb, step: s, examples: r)
            mb.globalRow = r.lowerBound
        }
    }

    /// Trains `o` on `cfg` (base seed 1, LoRA seed 2) on `world` ranks at TP `tp`.
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
                fillStep(micro, step: s, options: o, grid: grid)
                let globalTokens = o.globalBatch * (o.seq - 2)
                losses.append(try trainer.trainStep(micro, globalTokens: globalTokens).loss)
            }
            let lora = model.lora.map { Array($0.arena.buffer) } ?? Array(model.base.arena.buffer)
            return RankResult(
                losses: losses, lora: lora, fingerprint: model.lora?.fingerprint() ?? 0,
                entries: ledger.entries, loraCount: model.lora?.count ?? 0, world: world, tp: tp)
        }
    }
}
