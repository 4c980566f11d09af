import Foundation

/// How a generation decodes: greedy, or beam search as the LoRA repository's E2E scripts run it
/// (`gpt2_beam.py`): `beams` hypotheses, n-grams of `noRepeatNgram` generated tokens never
/// repeated (0: off), and finished hypotheses ranked by Σ log p / length^`lengthPenalty`.
public struct Decoding: Codable, Equatable, Sendable, CustomStringConvertible {
    public var beams: Int
    public var lengthPenalty: Float
    public var noRepeatNgram: Int

    public init(beams: Int = 1, lengthPenalty: Float = 1, noRepeatNgram: Int = 0) {
        self.beams = beams
        self.lengthPenalty = lengthPenalty
        self.noRepeatNgram = noRepeatNgram
    }

    public static let greedy = Decoding()
    /// The paper's E2E decoding: beam 10, length penalty 0.8, no repeated 4-grams.
    public static let paper = Decoding(beams: 10, lengthPenalty: 0.8, noRepeatNgram: 4)

    public var isGreedy: Bool { beams == 1 && noRepeatNgram == 0 }

    public var description: String {
        isGreedy ? "greedy" : "beam \(beams), length penalty \(lengthPenalty), no repeated \(noRepeatNgram)-grams"
    }
}

/// Autoregressive decoding on one model (its TP shard): greedy, or the one beam search. It owns
/// its one-row activations and its KV caches, sized to the longest generation so far and kept for
/// the next one; the buffers of the model's other passes are never touched. Every TP rank runs
/// the same generator and returns the same tokens.
public final class Generator {
    public let model: GPTModel
    private var acts: Activations?
    /// The caches of the last generation; a beam search uses two per beam (the live hypotheses
    /// and the set being filled for the next step).
    private var caches: [KVCache] = []

    public init(_ model: GPTModel) { self.model = model }

    /// Positions a generation of up to `maxNew` new tokens after a prompt of `prompt` holds: the
    /// prompt and at least one new token, within the model's `context`. Attention's buffers grow
    /// with the square of it, so a generation is sized to its prompt and bound, not to the context
    /// (32,768 tokens for Qwen2.5 would need tens of GB).
    static func capacity(prompt: Int, maxNew: Int, context: Int) -> Int {
        min(context, prompt + max(1, min(maxNew, context)))
    }

    /// One-row inference buffers for `positions` positions: the last generation's when they are
    /// long enough.
    private func activations(_ positions: Int) throws -> Activations {
        if let a = acts, a.seq >= positions { return a }
        acts = nil
        let a = try model.activations(batch: 1, seq: positions, training: false)
        acts = a
        return a
    }

    /// `count` one-row KV caches of `capacity` positions or more: the last generation's when they
    /// are enough.
    private func kvCaches(_ count: Int, capacity: Int) -> [KVCache] {
        if caches.count < count || caches.prefix(count).contains(where: { $0.capacity < capacity }) {
            let m = model
            caches = (0..<count).map { _ in KVCache(config: m.config, layout: m.layout, batch: 1, capacity: capacity) }
        }
        return Array(caches.prefix(count))
    }

    /// The tokens `decoding` generates after `prompt`: greedy decoding (with the KV cache), or
    /// the beam search's best hypothesis.
    public func generate(prompt: [Int32], decoding: Decoding, maxNew: Int, stop: Int32?) throws -> [Int32] {
        decoding.isGreedy
            ? try greedy(prompt: prompt, maxNew: maxNew, stop: stop)
            : try beam(prompt: prompt, decoding: decoding, maxNew: maxNew, stop: stop).tokens
    }

    /// Greedy decoding of one prompt. With `useCache`, the prompt is run once and each new token
    /// costs one single-position forward over the KV cache; without, every step re-runs the whole
    /// sequence (the reference the cache is tested against). Stops at `stop`, after `maxNew`
    /// tokens, or at the context length.
    public func greedy(prompt: [Int32], maxNew: Int, stop: Int32?, useCache: Bool = true) throws -> [Int32] {
        let m = model
        let limit = m.config.nPositions
        guard !prompt.isEmpty else { throw ModelError.invalidConfig("generation needs a non-empty prompt") }
        guard prompt.count <= limit else {
            throw ModelError.invalidConfig("prompt of \(prompt.count) tokens exceeds the context \(limit)")
        }
        let positions = Generator.capacity(prompt: prompt.count, maxNew: maxNew, context: limit)
        let acts = try activations(positions)
        var out: [Int32] = []
        var seqTokens = prompt
        if useCache {
            let cache = kvCaches(1, capacity: positions)[0]
            cache.length = 0
            var pass = try prompt.withUnsafeBufferPointer {
                try m.forward(tokens: $0.baseAddress!, batch: 1, len: prompt.count, into: acts, cache: cache)
            }
            var next = try m.argmaxLast(pass)[0]
            while true {
                if let stop, next == stop { break }
                out.append(next)
                seqTokens.append(next)
                if out.count >= maxNew || seqTokens.count >= limit { break }
                var tok = next
                pass = try m.forward(tokens: &tok, batch: 1, len: 1, into: acts, pos0: cache.length, cache: cache)
                next = try m.argmaxLast(pass)[0]
            }
        } else {
            while true {
                let pass = try seqTokens.withUnsafeBufferPointer {
                    try m.forward(tokens: $0.baseAddress!, batch: 1, len: seqTokens.count, into: acts)
                }
                let next = try m.argmaxLast(pass)[0]
                if let stop, next == stop { break }
                out.append(next)
                seqTokens.append(next)
                if out.count >= maxNew || seqTokens.count >= limit { break }
            }
        }
        return out
    }

    /// Beam search as the LoRA repository's `gpt2_beam.py`, one KV cache per beam: at each step
    /// the `beams` best (hypothesis, token) pairs by summed log-probability (banned n-gram
    /// continuations excluded); a pair ending in `stop` is finished, scored Σ log p /
    /// length^lengthPenalty (its length counting the stop token), and leaves the beam; at `maxNew`
    /// tokens the live hypotheses are scored the same way. Returns the best-scoring tokens (without
    /// the stop token) and that score. Width 1 is greedy decoding; a length penalty of 0 ranks by
    /// Σ log p alone.
    public func beam(
        prompt: [Int32], decoding: Decoding, maxNew: Int,
        stop: Int32?
    ) throws -> (tokens: [Int32], score: Float) {
        let m = model
        let k = decoding.beams
        let context = m.config.nPositions
        guard k >= 1 else { throw ModelError.invalidConfig("--beams must be at least 1") }
        guard decoding.noRepeatNgram >= 0 else {
            throw ModelError.invalidConfig("--no-repeat-ngram must not be negative")
        }
        guard !prompt.isEmpty, prompt.count < context else {
            throw ModelError.invalidConfig("prompt of \(prompt.count) tokens does not fit the context \(context)")
        }
        let positions = Generator.capacity(prompt: prompt.count, maxNew: maxNew, context: context)
        let steps = positions - prompt.count
        let acts = try activations(positions)
        let all = kvCaches(2 * k, capacity: positions)
        let caches = Array(all[..<k])
        let spare = Array(all[k...])
        let promptPass = try prompt.withUnsafeBufferPointer {
            try m.forward(tokens: $0.baseAddress!, batch: 1, len: prompt.count, into: acts, cache: caches[0])
        }
        func normalised(_ score: Float, _ len: Int) -> Float { score / powf(Float(len), decoding.lengthPenalty) }
        var best: (tokens: [Int32], score: Float)?
        func offer(_ t: [Int32], _ s: Float) { if best == nil || best!.score < s { best = (t, s) } }
        // Live hypotheses: generated tokens, summed log-probability, cache slot.
        var alive: [(tokens: [Int32], score: Float, cache: Int)] = [([], 0, 0)]
        var step = 0
        while !alive.isEmpty && step < steps {
            var candidates: [(tokens: [Int32], score: Float, parent: Int)] = []
            for h in alive {
                var pass = promptPass
                if step > 0 {
                    var t = h.tokens.last!
                    pass = try m.forward(
                        tokens: &t, batch: 1, len: 1, into: acts, pos0: prompt.count + step - 1,
                        cache: caches[h.cache])
                }
                let banned = Generator.bannedTokens(h.tokens, n: decoding.noRepeatNgram)
                for c in try topNextTokens(k, after: pass, banned: banned) {
                    candidates.append((h.tokens + [c.id], h.score + c.logProb, h.cache))
                }
            }
            candidates.sort { $0.score > $1.score }
            var next: [(tokens: [Int32], score: Float, cache: Int)] = []
            for c in candidates.prefix(k) {
                if let stop, c.tokens.last == stop {
                    offer(Array(c.tokens.dropLast()), normalised(c.score, c.tokens.count))
                    continue
                }
                // The child's cache is its parent's; copy it into a spare slot, then swap sets.
                spare[next.count].copy(from: caches[c.parent])
                next.append((c.tokens, c.score, next.count))
            }
            for i in 0..<next.count { caches[i].copy(from: spare[i]) }
            alive = next
            step += 1
        }
        for h in alive { offer(h.tokens, normalised(h.score, h.tokens.count)) }
        return best!
    }

    /// Log-probabilities of the `k` most likely next tokens after `pass`'s last position that are
    /// not `banned`, normalised over the vocabulary without the banned tokens (their logits set to
    /// −∞ before the softmax, as the LoRA repository's decoder does); every TP rank returns the same
    /// list. Each rank offers its shard's top k; the normaliser log Σexp is reduced across the shards.
    func topNextTokens(_ k: Int, after pass: ForwardPass, banned: Set<Int32>) throws -> [(logProb: Float, id: Int32)] {
        let m = model
        let layout = m.layout
        let regions = m.regions
        let vl = layout.localVocab
        let lo = layout.vocabRange.lowerBound
        let valid = max(0, min(vl, m.config.vocabSize - lo))
        let z = try m.lastLogitsShard(pass)
        let allowed = { (j: Int) in banned.isEmpty || !banned.contains(Int32(lo + j)) }
        var mx = -Float.infinity
        for j in 0..<valid where allowed(j) { mx = max(mx, z[j]) }
        var mxs = [mx]
        try regions.vocabMax(&mxs, 1)
        var se: Float = 0
        if banned.isEmpty {
            se = K.sumExpShift(z, valid, mxs[0])
        } else {
            for j in 0..<valid where allowed(j) { se += expf(z[j] - mxs[0]) }
        }
        var sums = [se]
        try regions.vocabSums(&sums, 1)
        let logZ = mxs[0] + logf(sums[0])
        // Local top k by a partial selection (k is small).
        var best: [(Float, Int)] = []
        for j in 0..<valid where allowed(j) {
            if best.count < k {
                best.append((z[j], j))
                best.sort { $0.0 > $1.0 }
            } else if z[j] > best[k - 1].0 {
                best[k - 1] = (z[j], j)
                best.sort { $0.0 > $1.0 }
            }
        }
        var send = [Float](repeating: -Float.infinity, count: 2 * k)
        for (i, b) in best.enumerated() {
            send[2 * i] = b.0 - logZ
            send[2 * i + 1] = Float(lo + b.1)
        }
        var recv = [Float](repeating: 0, count: 2 * k * layout.degree)
        try send.withUnsafeBufferPointer { s in
            try recv.withUnsafeMutableBufferPointer { r in
                try regions.gatherCandidates(s.baseAddress!, 2 * k, into: r.baseAddress!)
            }
        }
        var all: [(logProb: Float, id: Int32)] = []
        for i in 0..<(k * layout.degree) where recv[2 * i].isFinite {
            all.append((recv[2 * i], Int32(recv[2 * i + 1])))
        }
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
            for i in 0...(history.count - n) where Array(history[i..<(i + n - 1)]) == prefix {
                out.insert(history[i + n - 1])
            }
        }
        return out
    }
}

extension KVCache {
    /// Takes `other`'s positions (a beam's child continues from its parent): the `length` filled
    /// positions of every layer and head; the rest is written before it is read.
    func copy(from other: KVCache) {
        if other === self { return }
        precondition(
            other.capacity == capacity && other.batch == batch && other.k.count == k.count,
            "caches of one shape")
        let filled = other.length * hd
        for block in stride(from: 0, to: k.count, by: capacity * hd) {
            (k.base + block).update(from: other.k.base + block, count: filled)
            (v.base + block).update(from: other.v.base + block, count: filled)
        }
        length = other.length
    }
}
