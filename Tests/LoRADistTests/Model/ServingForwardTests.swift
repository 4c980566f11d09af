import XCTest

@testable import LoRADist

/// The serving forward (`forward(tokens:sequences:into:caches:)`): sequences laid end to end, each
/// on its own KV cache at its own length, prompts (whole or in chunks) mixed with decoding rows,
/// equal sequence by sequence to one sequence decoded alone on its cache (`Generator`'s greedy
/// decoding): greedy tokens identical, each emitted token's logits within fp32 tolerance. GPT-2
/// and the Llama family, TP 1, 2 and 4 in process.
final class ServingForwardTests: XCTestCase {
    struct Plan {
        var prompt: [Int32]
        /// The step it joins at, and how many prompt tokens a step feeds it at most.
        var arrives: Int, chunk: Int
    }

    static let maxNew = 6

    static func plans(_ vocab: Int) -> [Plan] {
        [
            Plan(prompt: Fixtures.randomTokens(5, below: vocab, seed: 31), arrives: 0, chunk: 5),
            Plan(prompt: Fixtures.randomTokens(9, below: vocab, seed: 32), arrives: 1, chunk: 4),
            Plan(prompt: Fixtures.randomTokens(3, below: vocab, seed: 33), arrives: 2, chunk: 8),
            Plan(prompt: Fixtures.randomTokens(1, below: vocab, seed: 34), arrives: 4, chunk: 1)
        ]
    }

    /// One sequence decoded alone on its cache: the tokens and each token's logits shard.
    static func alone(_ m: GPTModel, _ prompt: [Int32]) throws -> (tokens: [Int32], logits: [[Float]]) {
        let capacity = prompt.count + maxNew
        let acts = try m.activations(batch: 1, seq: capacity, training: false)
        let cache = KVCache(config: m.config, layout: m.layout, batch: 1, capacity: capacity)
        var pass = try prompt.withUnsafeBufferPointer {
            try m.forward(tokens: $0.baseAddress!, batch: 1, len: prompt.count, into: acts, cache: cache)
        }
        var tokens: [Int32] = []
        var logits: [[Float]] = []
        while true {
            logits.append(Array(UnsafeBufferPointer(start: try m.lastLogitsShard(pass), count: m.layout.localVocab)))
            var t = try m.argmaxLast(pass)[0]
            tokens.append(t)
            if tokens.count == maxNew { break }
            pass = try m.forward(tokens: &t, batch: 1, len: 1, into: acts, pos0: cache.length, cache: cache)
        }
        return (tokens, logits)
    }

    /// The plans served together: each step one serving forward over every sequence that has
    /// arrived and is not done.
    static func together(_ m: GPTModel, _ plans: [Plan]) throws -> (tokens: [[Int32]], logits: [[[Float]]], steps: Int)
    {
        let caches = plans.map {
            KVCache(config: m.config, layout: m.layout, batch: 1, capacity: $0.prompt.count + maxNew)
        }
        // Enough for every sequence feeding its largest chunk at its last positions.
        let rows = plans.reduce(0) { $0 + min($1.chunk, $1.prompt.count) }
        let scores = zip(plans, caches).reduce(0) { $0 + min($1.0.chunk, $1.0.prompt.count) * $1.1.capacity }
        let acts = try m.servingActivations(rows: rows, sequences: plans.count, probabilities: scores)
        var fed = [Int](repeating: 0, count: plans.count)
        var tokens = [[Int32]](repeating: [], count: plans.count)
        var logits = [[[Float]]](repeating: [], count: plans.count)
        var step = 0
        while tokens.contains(where: { $0.count < maxNew }) {
            var ids: [Int] = []
            var input: [Int32] = []
            var lengths: [Int] = []
            for (i, p) in plans.enumerated() where p.arrives <= step && tokens[i].count < maxNew {
                ids.append(i)
                if fed[i] < p.prompt.count {
                    let k = min(p.chunk, p.prompt.count - fed[i])
                    input += p.prompt[fed[i]..<(fed[i] + k)]
                    fed[i] += k
                    lengths.append(k)
                } else {
                    input.append(tokens[i].last!)
                    lengths.append(1)
                }
            }
            step += 1
            if ids.isEmpty { continue }
            let pass = try input.withUnsafeBufferPointer {
                try m.forward(
                    tokens: $0.baseAddress!, sequences: Sequences(lengths: lengths), into: acts,
                    caches: ids.map { caches[$0] })
            }
            let vl = m.layout.localVocab
            let shard = try m.lastLogitsShard(pass)
            let rowsOut = (0..<ids.count).map { Array(UnsafeBufferPointer(start: shard + $0 * vl, count: vl)) }
            let next = try m.argmaxLast(pass)
            for (j, i) in ids.enumerated() where fed[i] == plans[i].prompt.count {
                tokens[i].append(next[j])
                logits[i].append(rowsOut[j])
            }
        }
        return (tokens, logits, step)
    }

    func check(_ family: ModelFamily) throws {
        let config = family == .gpt2 ? Fixtures.tiny : Fixtures.llamaTiny
        let plans = Self.plans(config.vocabSize)
        var byTP: [Int: [[Int32]]] = [:]
        for tp in [1, 2, 4] {
            let ranks = try InProcessCommunicator.run(ranks: tp) { comm in
                let m = try Fixtures.randomModel(config, comm, training: false, baseSeed: 8)
                let served = try Self.together(m, plans)
                let single = try plans.map { try Self.alone(m, $0.prompt) }
                let generated = try plans.map {
                    try Generator(m).greedy(prompt: $0.prompt, maxNew: Self.maxNew, stop: nil)
                }
                return (served, single, generated)
            }
            for (rank, (served, single, generated)) in ranks.enumerated() {
                XCTAssertGreaterThan(served.steps, 8, "prompts join at different steps")
                for i in 0..<plans.count {
                    let label = "\(family) tp \(tp) rank \(rank) sequence \(i)"
                    XCTAssertEqual(served.tokens[i], single[i].tokens, "greedy tokens: \(label)")
                    XCTAssertEqual(served.tokens[i], generated[i], "vs Generator: \(label)")
                    XCTAssertEqual(served.tokens[i].count, Self.maxNew, label)
                    TensorParallelModelTests.assertClose(
                        served.logits[i].flatMap { $0 }, single[i].logits.flatMap { $0 }, tol: 1e-4, rel: 1e-5,
                        "logits: \(label)")
                }
            }
            byTP[tp] = ranks[0].0.tokens
            XCTAssertEqual(byTP[tp], byTP[1], "\(family) tp \(tp) vs tp 1")
        }
        // The sequences' tokens differ (the check compares something).
        XCTAssertNotEqual(byTP[1]![0], byTP[1]![1])
    }

    func testServingForwardEqualsEachSequenceAloneGPT2() throws { try check(.gpt2) }

    func testServingForwardEqualsEachSequenceAloneLlama() throws { try check(.llama) }

    /// The serving plan holds Σ len · (pos0 + len) scores per head, not sequences × context².
    func testServingActivationsAreSizedByTheStep() throws {
        try InProcessCommunicator.run(ranks: 1) { comm in
            let m = try Fixtures.randomModel(Fixtures.tiny, comm, training: false, baseSeed: 8)
            let small = try m.servingActivations(rows: 8, sequences: 8, probabilities: 8 * 40)
            XCTAssertEqual(small.probabilities, 320)
            let whole = try m.activations(batch: 8, seq: Fixtures.tiny.nPositions, training: false)
            XCTAssertEqual(whole.probabilities, 8 * Fixtures.tiny.nPositions * Fixtures.tiny.nPositions)
            XCTAssertLessThan(small.bytes, whole.bytes)
            XCTAssertThrowsError(try m.servingActivations(rows: 2, sequences: 3, probabilities: 10))
        }
    }
}
