import Foundation

/// A token sequence and where its loss starts: position i (predicting token i+1) counts iff
/// i + 1 ≥ `lossFrom`. Completion data: lossFrom = context length (loss on the completion and
/// its end-of-text only, the paper's conditional objective); plain text: lossFrom = 1.
public struct TokenizedExample: Sendable {
    public var tokens: [Int32]
    public var lossFrom: Int
    public var targets: Int { tokens.count - lossFrom }
}

/// Tokenized examples that fit the sequence length; longer ones are dropped and counted.
public final class TokenDataset {
    public let seq: Int
    public let examples: [TokenizedExample]
    /// Examples dropped because context + completion + end-of-text exceeds seq + 1 tokens.
    public let droppedTooLong: Int
    public let source: String

    /// Completion data: tokens = the tokenizer's leading tokens + context + completion + EOT.
    public init(examples: [Example], tokenizer: any Tokenizer, seq: Int, source: String) throws {
        self.seq = seq
        self.source = source
        var kept: [TokenizedExample] = []
        var dropped = 0
        for e in examples {
            let c = tokenizer.encodeStart(e.context), m = tokenizer.encode(e.completion)
            let t = c + m + [tokenizer.eot]
            if t.count - 1 > seq || c.count == tokenizer.leading.count { dropped += 1; continue }
            kept.append(TokenizedExample(tokens: t, lossFrom: c.count))
        }
        guard !kept.isEmpty else {
            throw DataError.empty(source, examples.isEmpty ? "the file holds no examples"
                                  : "all \(examples.count) examples are longer than the context of \(seq) tokens (or have an empty context)")
        }
        self.examples = kept
        droppedTooLong = dropped
    }

    /// Plain text: documents (separated by blank lines) joined by end-of-text, cut into
    /// consecutive windows of seq + 1 tokens (the last partial window is dropped).
    public init(text: String, tokenizer: any Tokenizer, seq: Int, source: String) throws {
        self.seq = seq
        self.source = source
        var ids: [Int32] = []
        for doc in text.components(separatedBy: "\n\n") {
            let t = doc.trimmingCharacters(in: .whitespacesAndNewlines)
            if t.isEmpty { continue }
            ids += tokenizer.encodeStart(t)
            ids.append(tokenizer.eot)
        }
        var ex: [TokenizedExample] = []
        var i = 0
        while i + seq + 1 <= ids.count {
            ex.append(TokenizedExample(tokens: Array(ids[i..<(i + seq + 1)]), lossFrom: 1))
            i += seq
        }
        guard !ex.isEmpty else { throw DataError.empty(source, "the text is shorter than one window of \(seq + 1) tokens") }
        examples = ex
        droppedTooLong = 0
    }

    public var count: Int { examples.count }

    /// The largest token id in the data (-1 if none), to check against the model's vocabulary.
    public var largestToken: Int32 { examples.lazy.map { $0.tokens.max() ?? -1 }.max() ?? -1 }

    /// Writes example `index` into row `row` of `mb` (padding with token 0 and mask 0); returns
    /// its number of target tokens. index < 0 writes an empty row.
    @discardableResult
    public func fill(_ mb: MicroBatch, row: Int, example index: Int) -> Int {
        let base = row * mb.seq
        for t in 0..<mb.seq { mb.tokens[base + t] = 0; mb.targets[base + t] = 0; mb.mask[base + t] = 0 }
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

/// Where a loader is in its data: epoch and position in that epoch's order. The order of an epoch
/// is a shuffle determined by (seed, epoch), so this pair restores the loader exactly.
public struct LoaderPosition: Codable, Equatable, Sendable {
    public var epoch = 0
    public var cursor = 0
    public init(epoch: Int = 0, cursor: Int = 0) { self.epoch = epoch; self.cursor = cursor }
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
            if position.cursor == data.count { position.epoch += 1; position.cursor = 0 }
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
