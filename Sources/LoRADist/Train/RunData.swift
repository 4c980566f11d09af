import Foundation

/// The data of a run: its tokenizer, the examples to train on, held-out ones for the loss, and
/// test examples to generate from.
struct RunData {
    var tokenizer: any Tokenizer
    var train: TokenDataset
    var valid: TokenDataset?
    var test: [Example]

    /// The tokenizer `options` choose (the base's own unless --tokenizer), checked against the
    /// base's vocabulary of `vocabSize`, and `--text`, `--data` or the built-in task read with it.
    static func load(_ options: RunOptions, vocabSize: Int, say: (String) -> Void) throws -> RunData {
        let tokenizer = try TokenizerChoice.forBase(options.base, override: options.tokenizer)
        // A small random model may still take bytes on user data whose bytes fit (checked below).
        let userData = options.textFile != nil || options.dataDir != nil
        if !(tokenizer is ByteTokenizer && userData) { try TokenizerChoice.check(tokenizer, fits: vocabSize) }
        let data = try read(options, tokenizer: tokenizer)
        for d in [data.train] + (data.valid.map { [$0] } ?? []) where d.largestToken >= vocabSize {
            throw TrainError.invalidOption(
                "\(d.source) holds token id \(d.largestToken), beyond the base's vocabulary "
                    + "of \(vocabSize) (\(tokenizer.description))")
        }
        let dropped = data.train.droppedTooLong
        if dropped > 0 && options.seqFromData && options.textFile == nil {
            say(
                "data: dropped \(dropped) of \(dropped + data.train.count) training examples longer than the "
                    + "model's context of \(options.train.seq) tokens")
        } else if dropped > 0 {
            say("data: dropped \(dropped) training examples longer than --seq \(options.train.seq) tokens")
        }
        return data
    }

    /// With no --seq on completion data: the data read at the model's `context`, and the sequence
    /// length of its longest training example (at least 2), the held-out examples longer than it
    /// dropped as well.
    static func sized(_ options: RunOptions, context: Int, vocabSize: Int, say: (String) -> Void) throws -> (
        data: RunData, seq: Int
    ) {
        var o = options
        o.train.seq = context
        var data = try load(o, vocabSize: vocabSize, say: say)
        let seq = max(2, data.train.longest)
        if let v = data.valid {
            let kept = TokenDataset(v, seq: seq)
            data.valid = kept.count > 0 ? kept : nil
        }
        data.train = TokenDataset(data.train, seq: seq)
        return (data, seq)
    }

    /// Reads `--text` (its last 5% held out), `--data` (test.jsonl, or else valid.jsonl, to
    /// generate from) or the built-in task's splits.
    static func read(_ options: RunOptions, tokenizer: any Tokenizer) throws -> RunData {
        func tokens(_ examples: [Example], _ source: String) throws -> TokenDataset {
            try TokenDataset(examples: examples, tokenizer: tokenizer, seq: options.train.seq, source: source)
        }
        if let text = options.textFile {
            guard FileManager.default.fileExists(atPath: text) else { throw DataError.missing(text) }
            let hint = "--text needs plain text to train on (documents separated by blank lines)"
            let s = try TextFile.read(text, emptyHint: hint)
            let cut = s.utf8.count * 95 / 100
            let head = String(decoding: Array(s.utf8)[..<cut], as: UTF8.self)
            let tail = String(decoding: Array(s.utf8)[cut...], as: UTF8.self)
            let seq = options.train.seq
            let train = try TokenDataset(text: head, tokenizer: tokenizer, seq: seq, source: text)
            let valid = try? TokenDataset(text: tail, tokenizer: tokenizer, seq: seq, source: text + " (last 5%)")
            return RunData(tokenizer: tokenizer, train: train, valid: valid, test: [])
        }
        if let dir = options.dataDir {
            // train.jsonl first: its errors are reported before valid.jsonl's.
            let train = try tokens(try JSONLines.read(dir + "/train.jsonl"), dir + "/train.jsonl")
            let valid = try JSONLines.read(dir + "/valid.jsonl")
            let hasTest = FileManager.default.fileExists(atPath: dir + "/test.jsonl")
            return RunData(
                tokenizer: tokenizer, train: train, valid: try tokens(valid, dir + "/valid.jsonl"),
                test: hasTest ? try JSONLines.read(dir + "/test.jsonl") : valid)
        }
        let s = BuiltinTask.standardSplits()
        return RunData(
            tokenizer: tokenizer, train: try tokens(s.train, "built-in task (train)"),
            valid: try tokens(s.valid, "built-in task (valid)"), test: s.test)
    }
}
