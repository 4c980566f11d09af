extension TokenDataset {
    /// Writes example `index` into row `row` of `mb` (padding with token 0 and mask 0); returns
    /// its number of target tokens. index < 0 writes an empty row.
    @discardableResult
    public func fill(_ mb: MicroBatch, row: Int, example index: Int) -> Int {
        let base = row * mb.seq
        clear(mb, base..<(base + mb.seq))
        guard index >= 0 else { return 0 }
        write(mb, at: base, example: index)
        return examples[index].targets
    }

    /// Writes example `index`'s tokens that have a target, their targets and its loss mask into `mb`
    /// from token `offset`; returns how many tokens it wrote.
    @discardableResult
    private func write(_ mb: MicroBatch, at offset: Int, example index: Int) -> Int {
        let e = examples[index]
        let n = e.tokens.count - 1
        for t in 0..<n {
            mb.tokens[offset + t] = e.tokens[t]
            mb.targets[offset + t] = e.tokens[t + 1]
            mb.mask[offset + t] = t + 1 >= e.lossFrom ? 1 : 0
        }
        return n
    }

    /// Zeroes tokens, targets and mask of `mb` over `range` (padding).
    private func clear(_ mb: MicroBatch, _ range: Range<Int>) {
        for i in range {
            mb.tokens[i] = 0
            mb.targets[i] = 0
            mb.mask[i] = 0
        }
    }

    /// Lays `examples` end to end from row 0 of `mb` (packing), each as `fill` writes it without
    /// its padding: its tokens with a target and its own loss mask; the rows after them are zero.
    /// Sets `mb.lengths` and `mb.realTokens`; returns the examples' target tokens.
    @discardableResult
    public func pack(_ mb: MicroBatch, examples: [Int]) -> Int {
        var r = 0
        var targets = 0
        mb.lengths.removeAll(keepingCapacity: true)
        for index in examples {
            let n = length(index)
            precondition(r + n <= mb.batch * mb.seq, "packed examples exceed the micro-batch's \(mb.batch)×\(mb.seq)")
            write(mb, at: r, example: index)
            mb.lengths.append(n)
            r += n
            targets += self.examples[index].targets
        }
        clear(mb, r..<(mb.batch * mb.seq))
        mb.realTokens = r
        return targets
    }

    /// Tokens with a target of example `index` (what it computes packed).
    func length(_ index: Int) -> Int { examples[index].tokens.count - 1 }
}

/// A step's tokens over its global batch: those that are not padding, and those computed; and Σ len²
/// of the sequences computed (what attention costs: each packed example's own square, or seq² per
/// row unpacked).
public struct StepTokens: Equatable, Sendable {
    public var real = 0, computed = 0, squares = 0

    public init(real: Int = 0, computed: Int = 0, squares: Int = 0) {
        self.real = real
        self.computed = computed
        self.squares = squares
    }

    /// The share of computed tokens that are padding.
    public var paddingFraction: Double { computed > 0 ? Double(computed - real) / Double(computed) : 0 }
}

/// Fills a training step's micro-batches: the next `globalBatch` examples of a deterministic
/// per-epoch shuffle, split over micro-batches and data-parallel replicas as
/// `TrainOptions.exampleRange` says, so the global batch does not depend on dp. With
/// `TrainOptions.packing` each micro-batch's examples are packed (`TokenDataset.pack`), else one
/// per row padded to seq.
public final class Batcher {
    public let data: TokenDataset
    public let seed: UInt64
    public private(set) var position = LoaderPosition()
    /// The last step's tokens over the whole global batch (all replicas).
    public private(set) var stepTokens = StepTokens()
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

    /// Takes the next step's examples of the epoch's order (`stepExamples`).
    private func advance() {
        for k in 0..<step.count {
            ensureOrder()
            step[k] = order[position.cursor]
            position.cursor += 1
            if position.cursor == data.count {
                position.epoch += 1
                position.cursor = 0
            }
        }
    }

    /// The largest packed pass of a training run's first `steps` steps over every replica's
    /// micro-batches, as `next` splits them (rows: the greatest Σ len, squares: the greatest Σ len²,
    /// each over any micro-batch), and of the validation loss's passes over the first
    /// `validExamples` of `valid` (`Evaluate.loss`: `o.microBatch` consecutive examples each). It
    /// depends on the data, the seed and the options alone, so it is the same on every rank and for
    /// a resumed run. At least one row and one square.
    public static func packedBound(
        train: TokenDataset, valid: TokenDataset? = nil, validExamples: Int = 0, options o: TrainOptions,
        steps: Int, dp: Int
    ) -> PackedCapacity {
        var bound = PackedCapacity(rows: 1, squares: 1)
        func take(_ examples: some Sequence<Int>, _ d: TokenDataset) {
            var rows = 0
            var squares = 0
            for i in examples {
                let n = d.length(i)
                rows += n
                squares += n * n
            }
            bound.rows = max(bound.rows, rows)
            bound.squares = max(bound.squares, squares)
        }
        let b = Batcher(data: train, seed: o.seed, globalBatch: o.globalBatch)
        for _ in 0..<steps {
            b.advance()
            for replica in 0..<dp {
                for j in 0..<o.accumulation(dp: dp) {
                    take(o.exampleRange(micro: j, replica: replica, dp: dp).lazy.map { b.step[$0] }, train)
                }
            }
        }
        if let valid {
            let total = min(validExamples, valid.count)
            for start in stride(from: 0, to: total, by: o.microBatch) {
                take(start..<min(start + o.microBatch, total), valid)
            }
        }
        return bound
    }

    /// Fills this replica's micro-batches for the next step; returns the target tokens of the
    /// whole global batch (all replicas), the loss normaliser.
    public func next(into micro: [MicroBatch], options o: TrainOptions, replica: Int, dp: Int) -> Int {
        advance()
        var total = 0
        var real = 0
        var squares = 0
        for i in step {
            total += data.examples[i].targets
            real += data.length(i)
            squares += data.length(i) * data.length(i)
        }
        stepTokens = StepTokens(
            real: real, computed: o.packing ? real : step.count * o.seq,
            squares: o.packing ? squares : step.count * o.seq * o.seq)
        for (j, mb) in micro.enumerated() {
            let r = o.exampleRange(micro: j, replica: replica, dp: dp)
            if o.packing {
                data.pack(mb, examples: r.map { step[$0] })
            } else {
                mb.lengths.removeAll(keepingCapacity: true)
                for (row, k) in r.enumerated() { data.fill(mb, row: row, example: step[k]) }
                mb.realTokens = r.reduce(0) { $0 + data.length(step[$1]) }
            }
            mb.globalRow = r.lowerBound
        }
        return total
    }
}
