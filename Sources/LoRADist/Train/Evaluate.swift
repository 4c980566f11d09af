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
        if grid.dpDegree > 1 { try grid.dp.allReduce(&v, op: .sum) }
        return v[1] > 0 ? v[0] / v[1] : .nan
    }

    public struct Generation: Codable, Sendable {
        public var exactMatch: Double
        public var bleu: Double
        public var examples: Int
        public var samples: [[String]]   // a few (context, generated, reference) triples from replica 0
    }

    /// Greedy completions of the first `limit` examples, compared with their references.
    public static func generation(model: GPTModel, examples: [Example], limit: Int, grid: ProcessGrid,
                                  tokenizer: any Tokenizer) throws -> Generation {
        let ex = Array(examples.prefix(limit))
        var hyps: [String] = [], refs: [String] = []
        var samples: [[String]] = []
        let cache = KVCache(config: model.config, layout: model.layout, batch: 1, capacity: model.config.nPositions)
        var i = grid.replica
        while i < ex.count {
            let prompt = tokenizer.encode(ex[i].context)
            let room = model.config.nPositions - prompt.count
            let out = room > 0 && !prompt.isEmpty
                ? try model.generateGreedy(prompt: prompt, maxNew: room, stop: tokenizer.eot, cache: cache) : []
            let text = tokenizer.decode(out)
            hyps.append(text)
            refs.append(ex[i].completion)
            if samples.count < 3 { samples.append([ex[i].context.trimmingCharacters(in: .newlines), text, ex[i].completion]) }
            i += grid.dpDegree
        }
        // Exact-match count and BLEU's additive statistics are summed over replicas.
        var stats = [Double(zip(hyps, refs).filter { $0 == $1 }.count), Double(hyps.count)] + TextMetrics.bleuStats(hyps, refs).map(Double.init)
        if grid.dpDegree > 1 { try grid.dp.allReduce(&stats, op: .sum) }
        return Generation(exactMatch: stats[1] > 0 ? stats[0] / stats[1] : 0, bleu: TextMetrics.bleu(stats: stats[2...].map { Int($0) }),
                          examples: Int(stats[1]), samples: samples)
    }
}
