import Foundation

// How the commands build their model: for a training run (`train`, `bench train`).

extension Trainer {
    /// The trainer of a training run (`train`, `bench train`) with the model it builds for the
    /// method: this rank's TP shard of the base loaded from `base` (every rank learns whether each
    /// could), LoRA's A or the adapters initialised from the seed.
    public convenience init(grid: ProcessGrid, ledger: Ledger, config: GPTConfig, base: WeightSource, options o: TrainOptions,
                            adapters: AdapterConfig?) throws {
        guard o.seq <= config.nPositions else {
            throw TrainError.invalidOption("--seq \(o.seq) exceeds the model's context \(config.nPositions)")
        }
        let m = try GPTModel(config: config, tp: grid.tp, lora: o.method == .lora ? o.lora : nil, mode: o.method,
                             batch: o.microBatch, seq: o.seq, adapters: o.method == .adapter ? adapters : nil,
                             precision: o.precision)
        try Collective.agree(over: grid.world, at: .load) { try m.base.load(from: base) }
        m.lora?.initialize(seed: o.seed)
        m.adapters?.initialize(seed: o.seed)
        try self.init(grid: grid, ledger: ledger, model: m, options: o)
    }
}
