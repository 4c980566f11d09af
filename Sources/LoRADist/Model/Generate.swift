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
        let wasTraining = training, saved = acts
        training = false
        acts = decodeActivations()
        defer { training = wasTraining; acts = saved }
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
