import Foundation

extension GPTModel {
    /// Greedy decoding of one prompt. With `useCache`, the prompt is run once and each new token
    /// costs one single-position forward over the KV cache; without, every step re-runs the whole
    /// sequence (the reference the cache is tested against). Every TP rank returns the same tokens.
    /// Stops at `stop`, after `maxNew` tokens, or at the context length.
    public func generateGreedy(prompt: [Int32], maxNew: Int, stop: Int32?, useCache: Bool = true,
                               cache reuse: KVCache? = nil) throws -> [Int32] {
        guard !prompt.isEmpty else { throw ModelError.invalidConfig("generation needs a non-empty prompt") }
        guard prompt.count <= config.nPositions else {
            throw ModelError.invalidConfig("prompt of \(prompt.count) tokens exceeds the context \(config.nPositions)")
        }
        // Decoding runs on its own one-row inference buffers; the training buffers stay untouched.
        return try withDecodeActivations(tokens: prompt.count + min(maxNew, config.nPositions)) {
            var out: [Int32] = []
            var seqTokens = prompt
            let limit = config.nPositions
            if useCache {
                let cache = reuse ?? KVCache(config: config, layout: layout, batch: 1, capacity: config.nPositions)
                cache.length = 0
                try prompt.withUnsafeBufferPointer { try forward(tokens: $0.baseAddress!, batch: 1, len: prompt.count, pos0: 0, cache: cache) }
                var next = try argmaxLast(batch: 1, len: prompt.count)[0]
                while true {
                    if let stop, next == stop { break }
                    out.append(next)
                    seqTokens.append(next)
                    if out.count >= maxNew || seqTokens.count >= limit { break }
                    var tok = next
                    try forward(tokens: &tok, batch: 1, len: 1, pos0: cache.length, cache: cache)
                    next = try argmaxLast(batch: 1, len: 1)[0]
                }
            } else {
                while true {
                    try seqTokens.withUnsafeBufferPointer { try forward(tokens: $0.baseAddress!, batch: 1, len: seqTokens.count) }
                    let next = try argmaxLast(batch: 1, len: seqTokens.count)[0]
                    if let stop, next == stop { break }
                    out.append(next)
                    seqTokens.append(next)
                    if out.count >= maxNew || seqTokens.count >= limit { break }
                }
            }
            return out
        }
    }
}

extension GPTModel {
    /// Log-probabilities (over the full vocabulary) of the `k` most likely next tokens after the
    /// last forward's final position, with their ids; every TP rank returns the same list.
    func topNextTokens(_ k: Int, len: Int) throws -> [(logProb: Float, id: Int32)] {
        try topAllowedNextTokens(k, len: len, banned: [])
    }

    /// Beam search of width `beams` (sum of log-probabilities; a hypothesis ends at `stop`), one KV
    /// cache per beam. Returns the best finished hypothesis, or the best one alive at the limit,
    /// and its score. Width 1 is greedy decoding.
    public func generateBeam(prompt: [Int32], beams: Int, maxNew: Int, stop: Int32?) throws -> (tokens: [Int32], logProb: Float) {
        guard beams >= 1 else { throw ModelError.invalidConfig("--beams must be at least 1") }
        guard !prompt.isEmpty, prompt.count < config.nPositions else {
            throw ModelError.invalidConfig("prompt of \(prompt.count) tokens does not fit the context \(config.nPositions)")
        }
        return try withDecodeActivations(tokens: prompt.count + min(maxNew, config.nPositions)) {
            let capacity = min(config.nPositions, prompt.count + max(1, min(maxNew, config.nPositions)))
            let caches = (0..<beams).map { _ in KVCache(config: config, layout: layout, batch: 1, capacity: capacity) }
            let spare = (0..<beams).map { _ in KVCache(config: config, layout: layout, batch: 1, capacity: capacity) }
            try prompt.withUnsafeBufferPointer { try forward(tokens: $0.baseAddress!, batch: 1, len: prompt.count, pos0: 0, cache: caches[0]) }
            var alive: [(tokens: [Int32], score: Float, cache: Int)] = []
            var finished: [(tokens: [Int32], score: Float)] = []
            for c in try topNextTokens(beams, len: prompt.count) {
                if let stop, c.id == stop { finished.append(([], c.logProb)) } else { alive.append(([c.id], c.logProb, 0)) }
            }
            // Every first-step hypothesis continues from the prompt's cache.
            for i in 1..<max(1, alive.count) { copyCache(caches[0], into: caches[i]); alive[i].cache = i }
            var step = 1
            while !alive.isEmpty && step < maxNew && prompt.count + step < config.nPositions {
                var candidates: [(tokens: [Int32], score: Float, parent: Int)] = []
                for h in alive {
                    var t = h.tokens.last!
                    try forward(tokens: &t, batch: 1, len: 1, pos0: prompt.count + step - 1, cache: caches[h.cache])
                    for c in try topNextTokens(beams, len: 1) { candidates.append((h.tokens + [c.id], h.score + c.logProb, h.cache)) }
                }
                candidates.sort { $0.score > $1.score }
                var next: [(tokens: [Int32], score: Float, cache: Int)] = []
                for c in candidates where next.count < beams {
                    if let stop, c.tokens.last == stop { finished.append((Array(c.tokens.dropLast()), c.score)); continue }
                    // The child's cache is its parent's; copy it into a spare slot, then swap sets.
                    copyCache(caches[c.parent], into: spare[next.count])
                    next.append((c.tokens, c.score, next.count))
                }
                for i in 0..<next.count { copyCache(spare[i], into: caches[i]) }
                alive = next
                step += 1
                // Stop once no live hypothesis can beat the best finished one (scores only fall).
                if let best = finished.map(\.score).max(), alive.allSatisfy({ $0.score < best }) { break }
            }
            let pool = finished + alive.map { ($0.tokens, $0.score) }
            let best = pool.max { $0.score < $1.score }!
            return (best.tokens, best.score)
        }
    }

    private func copyCache(_ a: KVCache, into b: KVCache) {
        if a === b { return }
        b.k.base.update(from: a.k.base, count: a.k.count)
        b.v.base.update(from: a.v.base, count: a.v.count)
        b.length = a.length
    }
}

/// How evaluation decodes: greedy, or beam search as the LoRA repository's E2E scripts run it
/// (`gpt2_beam.py`): `beams` hypotheses, n-grams of `noRepeatNgram` generated tokens never
/// repeated (0: off), and finished hypotheses ranked by Σ log p / length^`lengthPenalty`.
public struct Decoding: Codable, Equatable, Sendable, CustomStringConvertible {
    public var beams: Int
    public var lengthPenalty: Float
    public var noRepeatNgram: Int

    public init(beams: Int = 1, lengthPenalty: Float = 1, noRepeatNgram: Int = 0) {
        self.beams = beams; self.lengthPenalty = lengthPenalty; self.noRepeatNgram = noRepeatNgram
    }

    public static let greedy = Decoding()
    /// The paper's E2E decoding: beam 10, length penalty 0.8, no repeated 4-grams.
    public static let paper = Decoding(beams: 10, lengthPenalty: 0.8, noRepeatNgram: 4)

    public var isGreedy: Bool { beams == 1 && noRepeatNgram == 0 }

    public var description: String {
        isGreedy ? "greedy" : "beam \(beams), length penalty \(lengthPenalty), no repeated \(noRepeatNgram)-grams"
    }
}

extension GPTModel {
    /// Log-probabilities of the `k` most likely next tokens that are not `banned`, normalised over
    /// the vocabulary without the banned tokens (their logits set to −∞ before the softmax, as the
    /// LoRA repository's decoder does); every TP rank returns the same list. Each rank offers its
    /// shard's top k; the normaliser log Σexp is reduced across the shards.
    func topAllowedNextTokens(_ k: Int, len: Int, banned: Set<Int32>) throws -> [(logProb: Float, id: Int32)] {
        let vl = layout.localVocab, lo = layout.vocabRange.lowerBound
        let valid = max(0, min(vl, config.vocabSize - lo))
        let z = try lastLogitsShard(batch: 1, len: len)
        let allowed = { (j: Int) in banned.isEmpty || !banned.contains(Int32(lo + j)) }
        var m = -Float.infinity
        for j in 0..<valid where allowed(j) { m = max(m, z[j]) }
        var mx = [m]
        try regions.vocabMax(&mx, 1)
        var se: Float = 0
        if banned.isEmpty { se = K.sumExpShift(z, valid, mx[0]) } else {
            for j in 0..<valid where allowed(j) { se += expf(z[j] - mx[0]) }
        }
        var sums = [se]
        try regions.vocabSums(&sums, 1)
        let logZ = mx[0] + logf(sums[0])
        // Local top k by a partial selection (k is small).
        var best: [(Float, Int)] = []
        for j in 0..<valid where allowed(j) {
            if best.count < k { best.append((z[j], j)); best.sort { $0.0 > $1.0 } }
            else if z[j] > best[k - 1].0 { best[k - 1] = (z[j], j); best.sort { $0.0 > $1.0 } }
        }
        var send = [Float](repeating: -Float.infinity, count: 2 * k)
        for (i, b) in best.enumerated() { send[2 * i] = b.0 - logZ; send[2 * i + 1] = Float(lo + b.1) }
        var recv = [Float](repeating: 0, count: 2 * k * layout.degree)
        try send.withUnsafeBufferPointer { s in
            try recv.withUnsafeMutableBufferPointer { r in try regions.gatherCandidates(s.baseAddress!, 2 * k, into: r.baseAddress!) }
        }
        var all: [(logProb: Float, id: Int32)] = []
        for i in 0..<(k * layout.degree) where recv[2 * i].isFinite { all.append((recv[2 * i], Int32(recv[2 * i + 1]))) }
        all.sort { $0.logProb > $1.logProb || ($0.logProb == $1.logProb && $0.id < $1.id) }
        return Array(all.prefix(k))
    }

    /// The tokens that would repeat an n-gram of `history` (generated tokens only, not the
    /// prompt): the continuations seen after its last n − 1 tokens (fairseq's rule).
    static func bannedTokens(_ history: [Int32], n: Int) -> Set<Int32> {
        guard n > 0, history.count + 1 >= n else { return [] }
        if n == 1 { return Set(history) }
        let prefix = Array(history.suffix(n - 1))
        var out = Set<Int32>()
        if history.count >= n {
            for i in 0...(history.count - n) where Array(history[i..<(i + n - 1)]) == prefix { out.insert(history[i + n - 1]) }
        }
        return out
    }

    /// Beam search as the LoRA repository's `gpt2_beam.py`: at each step the `beams` best
    /// (hypothesis, token) pairs by summed log-probability (banned n-gram continuations excluded);
    /// a pair ending in `stop` is finished, scored Σ log p / length^lengthPenalty (its length
    /// counting the stop token), and leaves the beam; at `maxNew` tokens the live hypotheses are
    /// scored the same way. Returns the best-scoring tokens (without the stop token) and that score.
    public func generateBeam(prompt: [Int32], decoding: Decoding, maxNew: Int, stop: Int32?) throws -> (tokens: [Int32], score: Float) {
        let k = decoding.beams
        guard k >= 1 else { throw ModelError.invalidConfig("--beams must be at least 1") }
        guard decoding.noRepeatNgram >= 0 else { throw ModelError.invalidConfig("--no-repeat-ngram must not be negative") }
        guard !prompt.isEmpty, prompt.count < config.nPositions else {
            throw ModelError.invalidConfig("prompt of \(prompt.count) tokens does not fit the context \(config.nPositions)")
        }
        return try withDecodeActivations(tokens: prompt.count + max(1, min(maxNew, config.nPositions))) {
            let steps = max(1, min(maxNew, config.nPositions - prompt.count))
            let caches = (0..<k).map { _ in KVCache(config: config, layout: layout, batch: 1, capacity: prompt.count + steps) }
            let spare = (0..<k).map { _ in KVCache(config: config, layout: layout, batch: 1, capacity: prompt.count + steps) }
            try prompt.withUnsafeBufferPointer { try forward(tokens: $0.baseAddress!, batch: 1, len: prompt.count, pos0: 0, cache: caches[0]) }
            func normalised(_ score: Float, _ len: Int) -> Float { score / powf(Float(len), decoding.lengthPenalty) }
            var best: (tokens: [Int32], score: Float)?
            func offer(_ t: [Int32], _ s: Float) { if best == nil || best!.score < s { best = (t, s) } }
            // Live hypotheses: generated tokens, summed log-probability, cache slot.
            var alive: [(tokens: [Int32], score: Float, cache: Int)] = [([], 0, 0)]
            var step = 0
            while !alive.isEmpty && step < steps {
                var candidates: [(tokens: [Int32], score: Float, parent: Int)] = []
                for h in alive {
                    if step > 0 {
                        var t = h.tokens.last!
                        try forward(tokens: &t, batch: 1, len: 1, pos0: prompt.count + step - 1, cache: caches[h.cache])
                    }
                    let banned = Self.bannedTokens(h.tokens, n: decoding.noRepeatNgram)
                    for c in try topAllowedNextTokens(k, len: step == 0 ? prompt.count : 1, banned: banned) {
                        candidates.append((h.tokens + [c.id], h.score + c.logProb, h.cache))
                    }
                }
                candidates.sort { $0.score > $1.score }
                var next: [(tokens: [Int32], score: Float, cache: Int)] = []
                for c in candidates.prefix(k) {
                    if let stop, c.tokens.last == stop { offer(Array(c.tokens.dropLast()), normalised(c.score, c.tokens.count)); continue }
                    copyCache(caches[c.parent], into: spare[next.count])
                    next.append((c.tokens, c.score, next.count))
                }
                for i in 0..<next.count { copyCache(spare[i], into: caches[i]) }
                alive = next
                step += 1
            }
            for h in alive { offer(h.tokens, normalised(h.score, h.tokens.count)) }
            return best!
        }
    }
}
