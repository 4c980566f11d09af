import Foundation

/// Held-out evaluation: mean loss on the target tokens of a dataset, and the task metric of greedy
/// generations (exact match and BLEU-4). Data-parallel replicas split the work and add their sums;
/// tensor-parallel ranks of a replica cooperate on each pass.
public enum Evaluate {
    /// Mean loss per target token over `data` (all examples).
    public static func loss(model: GPTModel, data: TokenDataset, grid: ProcessGrid, batch: MicroBatch) throws -> Double {
        let rows = batch.batch
        var sum = 0.0, count = 0.0
        var start = grid.replica * rows
        while start < data.count {
            var n = 0
            for r in 0..<rows {
                let i = start + r
                n += data.fill(batch, row: r, example: i < data.count ? i : -1)
            }
            for i in 0..<batch.mask.count { batch.weights[i] = batch.mask[i] }
            try batch.tokens.withUnsafeBufferPointer { try model.forward(tokens: $0.baseAddress!, batch: rows, len: batch.seq) }
            sum += try model.lossForward(targets: batch.targets, weights: batch.weights, backward: false)
            count += Double(n)
            start += rows * grid.dpDegree
        }
        var v = [sum, count]
        if grid.dpDegree > 1 { try Collective.sum(&v, over: grid.dp, at: .evalLoss) }
        return v[1] > 0 ? v[0] / v[1] : .nan
    }

    public struct Generation: Codable, Sendable {
        /// Share of generations equal to one of their references.
        public var exactMatch: Double
        /// BLEU-4 on whitespace tokens against the first reference (`TextMetrics`).
        public var bleu: Double
        public var examples: Int
        public var samples: [[String]]   // a few (context, generated, reference) triples
        /// The E2E metrics against every reference of each example.
        public var e2e: E2EScores?
        public var decoding: Decoding?
        /// Every generation and its references, in the order of the examples (not serialised).
        public var hypotheses: [String] = []
        public var references: [[String]] = []

        enum CodingKeys: String, CodingKey { case exactMatch, bleu, examples, samples, e2e, decoding }
    }

    /// Completions of the first `limit` examples (greedy, or beam search as `decoding` says),
    /// compared with their references. Data-parallel replicas split the examples and gather the
    /// generations, so every rank scores the whole corpus.
    public static func generation(model: GPTModel, examples: [Example], limit: Int, grid: ProcessGrid,
                                  tokenizer: any Tokenizer, decoding: Decoding = .greedy, maxNew: Int? = nil,
                                  lowercase: Bool = true) throws -> Generation {
        let ex = Array(examples.prefix(limit))
        var mine: [String] = []
        let cache = KVCache(config: model.config, layout: model.layout, batch: 1, capacity: model.config.nPositions)
        var i = grid.replica
        while i < ex.count {
            let prompt = tokenizer.encodeStart(ex[i].context)
            let room = min(maxNew ?? Int.max, model.config.nPositions - prompt.count)
            var out: [Int32] = []
            if room > 0 && !prompt.isEmpty {
                out = decoding.isGreedy ? try model.generateGreedy(prompt: prompt, maxNew: room, stop: tokenizer.eot, cache: cache)
                                        : try model.generateBeam(prompt: prompt, decoding: decoding, maxNew: room, stop: tokenizer.eot).tokens
            }
            mine.append(tokenizer.decode(out))
            i += grid.dpDegree
        }
        // Replica r generated examples r, r + dp, ...: gather and interleave.
        var hyps = mine
        if grid.dpDegree > 1 {
            let parts = try Collective.gatherStrings(String(decoding: try JSONEncoder().encode(mine), as: UTF8.self), over: grid.dp, at: .evalGather)
            let lists = try parts.map { try JSONDecoder().decode([String].self, from: Data($0.utf8)) }
            hyps = (0..<ex.count).map { lists[$0 % grid.dpDegree][$0 / grid.dpDegree] }
        }
        let refs = ex.map(\.allReferences)
        let exact = zip(hyps, refs).filter { $1.contains($0) }.count
        let samples = (0..<min(3, ex.count)).map { [ex[$0].context.trimmingCharacters(in: .newlines), hyps[$0], refs[$0][0]] }
        var g = Generation(exactMatch: ex.isEmpty ? 0 : Double(exact) / Double(ex.count),
                           bleu: TextMetrics.bleu(hyps, refs.map { $0[0] }), examples: ex.count, samples: samples,
                           e2e: ex.isEmpty ? nil : E2EMetrics.score(hypotheses: hyps, references: refs, lowercase: lowercase),
                           decoding: decoding)
        g.hypotheses = hyps
        g.references = refs
        return g
    }

    /// "BLEU 65.2, NIST 8.12, ROUGE-L 68.1, CIDEr 2.21" (BLEU and ROUGE-L × 100, as the paper prints them).
    public static func describe(_ e: E2EScores) -> String {
        "BLEU \(fixed(100 * e.bleu, 1)), NIST \(fixed(e.nist, 2)), ROUGE-L \(fixed(100 * e.rougeL, 1)), CIDEr \(fixed(e.cider, 2))"
    }
}
