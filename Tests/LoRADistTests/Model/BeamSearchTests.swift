import XCTest

@testable import LoRADist

/// Beam search on the sharded model, ranked by Σ log p (length penalty 0): width 1 is greedy
/// decoding, a wider beam finds a sequence at least as likely as greedy's, and TP = 2 and 4 return
/// what one rank returns.
final class BeamSearchTests: XCTestCase {
    func testBeamSearchIsGreedyAtWidthOneBeatsItWiderAndIsTPInvariant() throws {
        let cfg = Fixtures.tiny(vocabSize: 40, nPositions: 24)
        let prompt: [Int32] = [3, 14, 15, 9]
        func run(_ tp: Int) throws -> [([Int32], Float, [Int32], [Int32], Float)] {
            try InProcessCommunicator.run(ranks: tp) { comm in
                let m = try Fixtures.randomModel(cfg, comm, training: false, baseSeed: 21)
                // A sharper head than 0.02 init gives, so beams really diverge.
                Fixtures.sharpenHead(m, by: 60)
                let g = Generator(m)
                let greedy = try g.greedy(prompt: prompt, maxNew: 10, stop: 0)
                let one = try g.beam(
                    prompt: prompt, decoding: Decoding(beams: 1, lengthPenalty: 0), maxNew: 10,
                    stop: 0)
                let four = try g.beam(
                    prompt: prompt, decoding: Decoding(beams: 4, lengthPenalty: 0), maxNew: 10,
                    stop: 0)
                return (greedy, one.score, one.tokens, four.tokens, four.score)
            }
        }
        let ref = try run(1)[0]
        XCTAssertEqual(ref.2, ref.0, "width 1 is greedy")
        XCTAssertGreaterThanOrEqual(ref.4, ref.1 - 1e-4, "a wider beam is at least as likely")
        for tp in [2, 4] {
            for r in try run(tp) {
                XCTAssertEqual(r.0, ref.0, "greedy tp \(tp)")
                XCTAssertEqual(r.3, ref.3, "beam tp \(tp)")
                XCTAssertEqual(r.4, ref.4, accuracy: 1e-3, "beam score tp \(tp)")
            }
        }
    }
}
