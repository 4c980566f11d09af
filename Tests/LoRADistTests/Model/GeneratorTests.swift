import XCTest

@testable import LoRADist

/// The generator's one size rule (`Generator.capacity`): a generation's buffers and KV caches hold
/// its prompt and bound, at least one new token, never more than the context; and every way of
/// decoding runs at the edges of that rule.
final class GeneratorTests: XCTestCase {
    func testCapacityIsThePromptAndItsBoundWithinTheContext() {
        XCTAssertEqual(Generator.capacity(prompt: 5, maxNew: 7, context: 64), 12)
        XCTAssertEqual(Generator.capacity(prompt: 5, maxNew: 0, context: 64), 6, "at least one new token")
        XCTAssertEqual(Generator.capacity(prompt: 5, maxNew: -3, context: 64), 6, "at least one new token")
        XCTAssertEqual(Generator.capacity(prompt: 60, maxNew: 7, context: 64), 64, "never beyond the context")
        XCTAssertEqual(Generator.capacity(prompt: 64, maxNew: 1, context: 64), 64, "a prompt that fills the context")
        XCTAssertEqual(Generator.capacity(prompt: 1, maxNew: 1000, context: 64), 64)
        XCTAssertEqual(
            Generator.capacity(prompt: 32_000, maxNew: 40, context: 32_768), 32_040,
            "a long context is not allocated whole")
    }

    /// Greedy (with and without the cache) and beam search generate up to the context or the bound,
    /// on buffers the rule sized, and one generator serves prompts of growing length.
    func testEveryDecodingRunsAtTheEdgesOfItsCapacity() throws {
        let cfg = Fixtures.tiny(vocabSize: 40, nPositions: 12)
        let results = try InProcessCommunicator.run(ranks: 2) { comm -> [[Int32]] in
            let m = try Fixtures.randomModel(cfg, comm, training: false, baseSeed: 21)
            let g = Generator(m)
            var out: [[Int32]] = []
            for prompt in [[Int32(3)], [3, 14, 15, 9, 2, 6, 5, 3, 5, 8, 9]] {
                out.append(try g.greedy(prompt: prompt, maxNew: 100, stop: nil))
                out.append(try g.greedy(prompt: prompt, maxNew: 100, stop: nil, useCache: false))
                out.append(try g.beam(prompt: prompt, decoding: Decoding(beams: 3), maxNew: 100, stop: nil).tokens)
                out.append(try g.greedy(prompt: prompt, maxNew: 2, stop: nil))
            }
            return out
        }
        for r in results {
            XCTAssertEqual(r.map(\.count), [11, 11, 11, 2, 1, 1, 1, 1], "up to the context of 12, or the bound")
            XCTAssertEqual(r[0], r[1], "the cache changes nothing")
            XCTAssertEqual(r[4], r[5])
            XCTAssertEqual(Array(r[0].prefix(2)), r[3], "a shorter bound is a prefix")
            XCTAssertEqual(r, results[0], "both ranks decode the same")
        }
    }
}
