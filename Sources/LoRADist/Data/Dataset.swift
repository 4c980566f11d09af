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
            let c = tokenizer.encodeStart(e.context)
            let m = tokenizer.encode(e.completion)
            let t = c + m + [tokenizer.eot]
            if t.count - 1 > seq || c.count == tokenizer.leading.count {
                dropped += 1
                continue
            }
            kept.append(TokenizedExample(tokens: t, lossFrom: c.count))
        }
        guard !kept.isEmpty else {
            throw DataError.empty(
                source,
                examples.isEmpty
                    ? "the file holds no examples"
                    : """
                    all \(examples.count) examples are longer than the context of \(seq) tokens (or have an empty \
                    context)
                    """
            )
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
        guard !ex.isEmpty else {
            throw DataError.empty(source, "the text is shorter than one window of \(seq + 1) tokens")
        }
        examples = ex
        droppedTooLong = 0
    }

    /// The examples of `other` that fit `seq` tokens with a target; the others are dropped and
    /// counted with those `other` dropped.
    public init(_ other: TokenDataset, seq: Int) {
        self.seq = seq
        source = other.source
        examples = other.examples.filter { $0.tokens.count - 1 <= seq }
        droppedTooLong = other.droppedTooLong + other.count - examples.count
    }

    /// Examples already tokenized, those longer than `seq` tokens with a target dropped and counted.
    public convenience init(tokenized: [TokenizedExample], seq: Int, source: String) {
        self.init(TokenDataset(all: tokenized, source: source), seq: seq)
    }

    private init(all: [TokenizedExample], source: String) {
        seq = all.lazy.map { $0.tokens.count - 1 }.max() ?? 0
        self.source = source
        examples = all
        droppedTooLong = 0
    }

    public var count: Int { examples.count }

    /// Tokens with a target of the longest example (what its sequence needs).
    public var longest: Int { examples.lazy.map { $0.tokens.count - 1 }.max() ?? 0 }

    /// The largest token id in the data (-1 if none), to check against the model's vocabulary.
    public var largestToken: Int32 { examples.lazy.map { $0.tokens.max() ?? -1 }.max() ?? -1 }
}

/// Where a loader is in its data: epoch and position in that epoch's order. The order of an epoch
/// is a shuffle determined by (seed, epoch), so this pair restores the loader exactly.
public struct LoaderPosition: Codable, Equatable, Sendable {
    public var epoch = 0
    public var cursor = 0
    public init(epoch: Int = 0, cursor: Int = 0) {
        self.epoch = epoch
        self.cursor = cursor
    }
}
