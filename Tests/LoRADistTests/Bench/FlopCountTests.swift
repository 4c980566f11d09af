import XCTest

@testable import LoRADist

/// `FlopCount`, which `bench train` divides by the step time, against the FLOPs of the GEMMs one
/// pass actually issues (2·m·n·k per call, counted at the GEMM seam): a forward and the loss of a
/// frozen base, for GPT-2 and for a Llama-family model (grouped-query attention, three MLP
/// matrices). Padded vocabulary columns are computed, so they count.
final class FlopCountTests: XCTestCase {
    func testForwardFLOPsPerTokenAreTheFLOPsTheGEMMsIssue() throws {
        for cfg in [Fixtures.tiny, Fixtures.llamaTiny] {
            let T = 12
            let batch = 2
            let issued = try InProcessCommunicator.run(ranks: 1) { comm -> Int in
                let m = try Fixtures.randomModel(cfg, comm, training: false, baseSeed: 3)
                let acts = try m.activations(batch: batch, seq: T, training: false)
                let tokens = Fixtures.randomTokens(batch * T, below: cfg.vocabSize, seed: 4)
                let before = Gemm.threadTotals.flops
                var pass = try tokens.withUnsafeBufferPointer {
                    try m.forward(tokens: $0.baseAddress!, batch: batch, len: T, into: acts)
                }
                _ = try m.lossForward(&pass, targets: tokens, weights: Fixtures.meanWeights(batch * T), backward: false)
                return Gemm.threadTotals.flops - before
            }[0]
            XCTAssertEqual(Double(issued), FlopCount.forwardPerToken(cfg, seq: T) * Double(batch * T), "\(cfg.family)")
        }
    }
}
