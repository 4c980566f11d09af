import Foundation

/// Progress of a long evaluation pass: a line ("eval: 12/48 generations, 3.1 s, ETA 9 s") once
/// `interval` seconds have passed since the start or the last line, none for a pass that ends sooner.
/// `say` decides who prints (rank 0, as the training loop's progress).
public final class ProgressMeter {
    public let what: String
    public let total: Int
    public let interval: Double
    let clock: () -> Double
    let say: (String) -> Void
    let start: Double
    var last: Double

    public init(
        _ what: String, total: Int, interval: Double = 10, clock: (() -> Double)? = nil, say: @escaping (String) -> Void
    ) {
        self.what = what
        self.total = total
        self.interval = interval
        self.clock = clock ?? { now() }
        self.say = say
        start = self.clock()
        last = start
    }

    /// `done` of `total` are finished.
    public func update(_ done: Int) {
        let t = clock()
        guard done > 0, done < total, t - last >= interval else { return }
        last = t
        let elapsed = t - start
        let eta = elapsed / Double(done) * Double(total - done)
        say("eval: \(done)/\(total) \(what), \(fixed(elapsed, 1)) s, ETA \(Int(eta.rounded())) s")
    }
}

/// Held-out evaluation: mean loss on the target tokens of a dataset, and the task metrics of
/// generations (exact match and the E2E metrics, BLEU among them). Data-parallel replicas split
/// the work and add their sums; tensor-parallel ranks of a replica cooperate on each pass.
public enum Evaluate {
    /// Mean loss per target token over the first `limit` examples of `data` (nil: all), the passes
    /// in `acts`, each of `batch.batch` consecutive examples: one per row of `batch`'s shape, or
    /// with `packing` laid end to end (`TokenDataset.pack`), so no padding is computed and a pass
    /// takes its examples' Σ len rows (the activations must hold them: `Batcher.packedBound`).
    public static func loss(
        model: GPTModel, acts: Activations, data: TokenDataset, grid: ProcessGrid,
        batch: MicroBatch, limit: Int? = nil, packing: Bool = false, progress: ProgressMeter? = nil
    ) throws -> Double {
        let rows = batch.batch
        let total = min(limit ?? data.count, data.count)
        var sum = 0.0
        var count = 0.0
        var start = grid.replica * rows
        while start < total {
            var n = 0
            var pass: ForwardPass
            if packing {
                n = data.pack(batch, examples: Array(start..<min(start + rows, total)))
                let seqs = batch.sequences
                guard acts.fits(seqs) else {
                    throw TrainError.data(
                        "validation examples \(start) to \(start + seqs.count - 1) need \(seqs.rows) tokens and Σ len² "
                            + "\(seqs.squares), beyond the activations' \(acts.n) and \(acts.probabilities)")
                }
                for i in 0..<seqs.rows { batch.weights[i] = batch.mask[i] }
                pass = try batch.tokens.withUnsafeBufferPointer {
                    try model.forward(tokens: $0.baseAddress!, sequences: seqs, into: acts)
                }
            } else {
                for r in 0..<rows {
                    let i = start + r
                    n += data.fill(batch, row: r, example: i < total ? i : -1)
                }
                for i in 0..<batch.mask.count { batch.weights[i] = batch.mask[i] }
                pass = try batch.tokens.withUnsafeBufferPointer {
                    try model.forward(tokens: $0.baseAddress!, batch: rows, len: batch.seq, into: acts)
                }
            }
            sum += try model.lossForward(&pass, targets: batch.targets, weights: batch.weights, backward: false)
            count += Double(n)
            start += rows * grid.dpDegree
            progress?.update(min(start - grid.replica * rows, total))
        }
        var v = [sum, count]
        if grid.dpDegree > 1 { try Collective.sum(&v, over: grid.dp, at: .evalLoss) }
        return v[1] > 0 ? v[0] / v[1] : .nan
    }

    /// The most new tokens a generation may take when not told: the longest reference of
    /// `examples` in `tokenizer`'s tokens plus a margin of a quarter of it, at least 8 tokens.
    public static func maxNewTokens(for examples: [Example], tokenizer: any Tokenizer) -> Int {
        let longest = examples.flatMap(\.allReferences).map { tokenizer.encode($0).count }.max() ?? 0
        return longest + max(8, (longest + 3) / 4)
    }

    public struct Generation: Codable, Sendable {
        /// Share of generations equal to one of their references.
        public var exactMatch: Double
        /// Corpus BLEU-4 on the 0–100 scale, as sacreBLEU computes it on predictions.txt and
        /// references.txt (every reference of each example): `e2e.bleu`, 0 without examples.
        public var bleu: Double
        public var examples: Int
        public var samples: [[String]]  // a few (context, generated, reference) triples
        /// The E2E metrics against every reference of each example.
        public var e2e: E2EScores?
        public var decoding: Decoding?
        /// The bound on new tokens per generation, and the tokens generated over all examples.
        public var maxNewTokens: Int
        public var tokensGenerated: Int
        /// Every generation and its references, in the order of the examples (not serialised),
        /// each on one line as predictions.txt and references.txt hold them.
        public var hypotheses: [String] = []
        public var references: [[String]] = []

        enum CodingKeys: String, CodingKey {
            case exactMatch, bleu, examples, samples, e2e, decoding, maxNewTokens, tokensGenerated
        }
    }

    /// What one replica generated.
    struct Part: Codable {
        var texts: [String]
        var tokens: [Int]
    }

    /// Completions of the first `limit` examples (greedy, or beam search as `decoding` says), each
    /// ending at end-of-text or after `maxNew` tokens (nil: `maxNewTokens(for:)` of those
    /// examples), compared with their references. Data-parallel replicas split the examples and
    /// gather the generations, so every rank scores the whole corpus.
    public static func generation(
        model: GPTModel, examples: [Example], limit: Int, grid: ProcessGrid,
        tokenizer: any Tokenizer, decoding: Decoding = .greedy, maxNew: Int? = nil,
        lowercase: Bool = true, progress: ProgressMeter? = nil
    ) throws -> Generation {
        let ex = Array(examples.prefix(limit))
        let bound = maxNew ?? maxNewTokens(for: ex, tokenizer: tokenizer)
        var mine = Part(texts: [], tokens: [])
        let generator = Generator(model)
        var i = grid.replica
        while i < ex.count {
            let prompt = tokenizer.encodeStart(ex[i].context)
            let room = min(bound, model.config.nPositions - prompt.count)
            var out: [Int32] = []
            if room > 0 && !prompt.isEmpty {
                out = try generator.generate(prompt: prompt, decoding: decoding, maxNew: room, stop: tokenizer.eot)
            }
            mine.texts.append(tokenizer.decode(out))
            mine.tokens.append(out.count)
            i += grid.dpDegree
            progress?.update(min(i - grid.replica, ex.count))
        }
        // Replica r generated examples r, r + dp, ...: gather and interleave.
        var hyps = mine.texts
        var tokens = mine.tokens
        if grid.dpDegree > 1 {
            let parts = try Collective.gatherStrings(
                String(decoding: try JSONEncoder().encode(mine), as: UTF8.self), over: grid.dp, at: .evalGather)
            let lists = try parts.map { try JSONDecoder().decode(Part.self, from: Data($0.utf8)) }
            hyps = (0..<ex.count).map { lists[$0 % grid.dpDegree].texts[$0 / grid.dpDegree] }
            tokens = (0..<ex.count).map { lists[$0 % grid.dpDegree].tokens[$0 / grid.dpDegree] }
        }
        // Scored as the files hold them, so that sacreBLEU on the files gives the same figures.
        hyps = hyps.map(E2EMetrics.fileLine)
        let refs = ex.map { $0.allReferences.map(E2EMetrics.fileLine) }
        let exact = zip(hyps, refs).filter { $1.contains($0) }.count
        let samples = (0..<min(3, ex.count)).map {
            [ex[$0].context.trimmingCharacters(in: .newlines), hyps[$0], refs[$0][0]]
        }
        let e2e = ex.isEmpty ? nil : E2EMetrics.score(hypotheses: hyps, references: refs, lowercase: lowercase)
        var g = Generation(
            exactMatch: ex.isEmpty ? 0 : Double(exact) / Double(ex.count), bleu: e2e?.bleu ?? 0,
            examples: ex.count, samples: samples, e2e: e2e, decoding: decoding,
            maxNewTokens: bound, tokensGenerated: tokens.reduce(0, +))
        g.hypotheses = hyps
        g.references = refs
        return g
    }

    /// "BLEU 65.2, NIST 8.12, ROUGE-L 68.1, CIDEr 2.21" (BLEU on its 0–100 scale, ROUGE-L × 100, as the paper prints
    /// them).
    public static func describe(_ e: E2EScores) -> String {
        """
        BLEU \(fixed(e.bleu, 1)), NIST \(fixed(e.nist, 2)), ROUGE-L \(fixed(100 * e.rougeL, 1)), CIDEr \
        \(fixed(e.cider, 2))
        """
    }
}
