import XCTest

@testable import LoRADist

/// The paper's decoding (the LoRA repository's gpt2_beam.py): beam search with a length penalty
/// and no repeated n-grams, on the sharded model.
final class PaperDecodingTests: XCTestCase {
    static let cfg = Fixtures.tiny(vocabSize: 40, nPositions: 48)

    /// A random model with a sharp head (wte × 60), which loops when decoded greedily.
    static func model(_ comm: Communicator) throws -> GPTModel {
        let m = try Fixtures.randomModel(cfg, comm, training: false, baseSeed: 21)
        Fixtures.sharpenHead(m, by: 60)
        return m
    }

    static func repeatedNgram(_ t: [Int32], _ n: Int) -> [Int32]? {
        guard t.count >= n else { return nil }
        var seen = Set<[Int32]>()
        for i in 0...(t.count - n) { if !seen.insert(Array(t[i..<(i + n)])).inserted { return Array(t[i..<(i + n)]) } }
        return nil
    }

    static let prompts: [[Int32]] = [[3, 14, 15, 9], [2, 7], [1, 8, 28, 18, 28], [39, 0, 5]]

    func testNeverEmitsARepeatedFourGram() throws {
        let runs = try InProcessCommunicator.run(ranks: 1) { comm in
            let m = try Self.model(comm)
            let g = Generator(m)
            return try Self.prompts.map { p in
                (
                    p, try g.greedy(prompt: p, maxNew: 40, stop: nil),
                    try g.beam(prompt: p, decoding: .paper, maxNew: 40, stop: nil).tokens,
                    try g.beam(
                        prompt: p, decoding: Decoding(beams: 3, lengthPenalty: 0.8, noRepeatNgram: 2), maxNew: 30,
                        stop: nil
                    ).tokens
                )
            }
        }[0]
        var loops = 0
        for (p, greedy, beam, bigrams) in runs {
            if Self.repeatedNgram(greedy, 4) != nil { loops += 1 }
            XCTAssertEqual(beam.count, 40, "without a stop token every hypothesis runs to the limit")
            XCTAssertNil(Self.repeatedNgram(beam, 4), "prompt \(p): \(beam)")
            XCTAssertEqual(bigrams.count, 30)
            XCTAssertNil(Self.repeatedNgram(bigrams, 2), "no repeated bigram: \(bigrams)")
        }
        XCTAssertGreaterThan(
            loops, 0, "greedy decoding of this model repeats 4-grams, so the blocking is what prevents them")
    }

    func testWidthOneIsGreedy() throws {
        let runs = try InProcessCommunicator.run(ranks: 2) { comm in
            let m = try Self.model(comm)
            let g = Generator(m)
            return try Self.prompts.map { p in
                (
                    try g.greedy(prompt: p, maxNew: 20, stop: 0),
                    try [Float(0), 0.8, 1].map {
                        try g.beam(prompt: p, decoding: Decoding(beams: 1, lengthPenalty: $0), maxNew: 20, stop: 0)
                            .tokens
                    }
                )
            }
        }
        for rank in runs { for (greedy, beams) in rank { for b in beams { XCTAssertEqual(b, greedy) } } }
    }

    /// The returned score is Σ log p (full-vocabulary softmax, recomputed by re-running the whole
    /// sequence) over the tokens and the stop token, divided by that length^0.8; TP 2 and 4 agree.
    func testScoreIsTheLengthPenalisedLogProbabilityAndTPInvariant() throws {
        let d = Decoding(beams: 4, lengthPenalty: 0.8, noRepeatNgram: 0)
        let ref = try InProcessCommunicator.run(ranks: 1) { comm -> [([Int32], Float, Double, Int)] in
            let m = try Self.model(comm)
            let g = Generator(m)
            var out: [([Int32], Float, Double, Int)] = []
            for p in Self.prompts {
                let r = try g.beam(prompt: p, decoding: d, maxNew: 12, stop: 0)
                // Teacher forcing: log p of each generated token (and the stop token if it stopped).
                let finished = r.tokens.count < 12
                let seq = r.tokens + (finished ? [0] : [])
                let acts = try m.activations(batch: 1, seq: Self.cfg.nPositions, training: false)
                var sum = 0.0
                for (i, t) in seq.enumerated() {
                    let ctx = p + Array(r.tokens.prefix(i))
                    let pass = try ctx.withUnsafeBufferPointer {
                        try m.forward(tokens: $0.baseAddress!, batch: 1, len: ctx.count, into: acts)
                    }
                    let z = try m.lastLogitsShard(pass)
                    let row = (0..<Self.cfg.vocabSize).map { Double(z[$0]) }
                    let mx = row.max()!
                    sum += row[Int(t)] - (mx + log(row.reduce(0) { $0 + exp($1 - mx) }))
                }
                out.append((r.tokens, r.score, sum, seq.count))
            }
            return out
        }[0]
        for (tokens, score, sum, len) in ref {
            XCTAssertEqual(Double(score), sum / pow(Double(len), 0.8), accuracy: 1e-3 * max(1, abs(sum)), "\(tokens)")
        }
        for tp in [2, 4] {
            for rank in try InProcessCommunicator.run(
                ranks: tp,
                { comm -> [([Int32], Float)] in
                    let m = try Self.model(comm)
                    let g = Generator(m)
                    return try Self.prompts.map {
                        let r = try g.beam(prompt: $0, decoding: d, maxNew: 12, stop: 0)
                        return (r.tokens, r.score)
                    }
                })
            {
                for (a, b) in zip(rank, ref) {
                    XCTAssertEqual(a.0, b.0, "tp \(tp)")
                    XCTAssertEqual(a.1, b.1, accuracy: 1e-3, "tp \(tp)")
                }
            }
        }
    }

    func testBannedTokensFollowFairseqsRule() {
        XCTAssertEqual(Generator.bannedTokens([1, 2, 3, 1, 2], n: 3), [3])
        XCTAssertEqual(Generator.bannedTokens([1, 2, 3, 1, 2, 4, 1, 2], n: 3), [3, 4])
        XCTAssertEqual(Generator.bannedTokens([1, 2], n: 4), [])
        XCTAssertEqual(Generator.bannedTokens([5, 5, 5], n: 4), [])
        XCTAssertEqual(Generator.bannedTokens([5, 5, 5, 5], n: 4), [5])
        XCTAssertEqual(Generator.bannedTokens([7, 8], n: 1), [7, 8])
    }
}
