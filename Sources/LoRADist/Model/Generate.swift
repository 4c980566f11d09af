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
        let saved = acts
        acts = decodeActivations()
        defer { acts = saved }
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

extension GPTModel {
    /// Log-probabilities (over the full vocabulary) of the `k` most likely next tokens after the
    /// last forward's final position, with their ids; every TP rank returns the same list. Each
    /// rank offers its shard's top k; the normaliser log Σexp is reduced across the shards.
    func topNextTokens(_ k: Int, len: Int) throws -> [(logProb: Float, id: Int32)] {
        let vl = layout.localVocab, lo = layout.vocabRange.lowerBound
        let valid = max(0, min(vl, config.vocabSize - lo))
        let z = try lastLogitsShard(batch: 1, len: len)
        var m = -Float.infinity
        for j in 0..<valid { m = max(m, z[j]) }
        var mx = [m]
        try regions.vocabMax(&mx, 1)
        var se = [K.sumExpShift(z, valid, mx[0])]
        try regions.vocabSums(&se, 1)
        let logZ = mx[0] + logf(se[0])
        // Local top k by a partial selection (k is small).
        var best: [(Float, Int)] = []
        for j in 0..<valid {
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

    /// Beam search of width `beams` (sum of log-probabilities; a hypothesis ends at `stop`), one KV
    /// cache per beam. Returns the best finished hypothesis, or the best one alive at the limit,
    /// and its score. Width 1 is greedy decoding.
    public func generateBeam(prompt: [Int32], beams: Int, maxNew: Int, stop: Int32?) throws -> (tokens: [Int32], logProb: Float) {
        guard beams >= 1 else { throw ModelError.invalidConfig("--beams must be at least 1") }
        guard !prompt.isEmpty, prompt.count < config.nPositions else {
            throw ModelError.invalidConfig("prompt of \(prompt.count) tokens does not fit the context \(config.nPositions)")
        }
        let saved = acts
        acts = decodeActivations()
        defer { acts = saved }
        let caches = (0..<beams).map { _ in KVCache(config: config, layout: layout, batch: 1, capacity: config.nPositions) }
        let spare = (0..<beams).map { _ in KVCache(config: config, layout: layout, batch: 1, capacity: config.nPositions) }
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

    private func copyCache(_ a: KVCache, into b: KVCache) {
        if a === b { return }
        b.k.base.update(from: a.k.base, count: a.k.count)
        b.v.base.update(from: a.v.base, count: a.v.count)
        b.length = a.length
    }
}
