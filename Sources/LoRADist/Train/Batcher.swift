extension TokenDataset {
    /// Writes example `index` into row `row` of `mb` (padding with token 0 and mask 0); returns
    /// its number of target tokens. index < 0 writes an empty row.
    @discardableResult
    public func fill(_ mb: MicroBatch, row: Int, example index: Int) -> Int {
        let base = row * mb.seq
        for t in 0..<mb.seq {
            mb.tokens[base + t] = 0
            mb.targets[base + t] = 0
            mb.mask[base + t] = 0
        }
        guard index >= 0 else { return 0 }
        let e = examples[index]
        let n = e.tokens.count - 1
        for t in 0..<n {
            mb.tokens[base + t] = e.tokens[t]
            mb.targets[base + t] = e.tokens[t + 1]
            mb.mask[base + t] = t + 1 >= e.lossFrom ? 1 : 0
        }
        return e.targets
    }
}

/// Fills a training step's micro-batches: the next `globalBatch` examples of a deterministic
/// per-epoch shuffle, split over micro-batches and data-parallel replicas as
/// `TrainOptions.exampleRange` says, so the global batch does not depend on dp.
public final class Batcher {
    public let data: TokenDataset
    public let seed: UInt64
    public private(set) var position = LoaderPosition()
    private var order: [Int] = []
    private var orderEpoch = -1
    private var step: [Int]

    public init(data: TokenDataset, seed: UInt64, globalBatch: Int) {
        self.data = data
        self.seed = seed
        step = [Int](repeating: 0, count: globalBatch)
    }

    public func restore(_ p: LoaderPosition) { position = p }

    /// The examples (indices into `data`) of the global batch `next` filled last, in its order.
    public var stepExamples: [Int] { step }

    private func ensureOrder() {
        if orderEpoch == position.epoch { return }
        order = Array(0..<data.count)
        var rng = RNG(seed: seed &+ UInt64(position.epoch) &* 0x9E37_79B9)
        rng.shuffle(&order)
        orderEpoch = position.epoch
    }

    /// Fills this replica's micro-batches for the next step; returns the target tokens of the
    /// whole global batch (all replicas), the loss normaliser.
    public func next(into micro: [MicroBatch], options o: TrainOptions, replica: Int, dp: Int) -> Int {
        for k in 0..<step.count {
            ensureOrder()
            step[k] = order[position.cursor]
            position.cursor += 1
            if position.cursor == data.count {
                position.epoch += 1
                position.cursor = 0
            }
        }
        var total = 0
        for i in step { total += data.examples[i].targets }
        for (j, mb) in micro.enumerated() {
            let r = o.exampleRange(micro: j, replica: replica, dp: dp)
            for (row, k) in r.enumerated() { data.fill(mb, row: row, example: step[k]) }
            mb.globalRow = r.lowerBound
        }
        return total
    }
}
