import XCTest
@testable import LoRADist

/// The α–β formulas against hand-computed cases, and the fit recovering known parameters.
final class CostModelTests: XCTestCase {
    let link = LinkModel(alpha: 10e-6, beta: 1e-9)  // 10 µs, 1 GB/s

    func testRingAllReduceOfFourRanks() {
        // 2·3·10µs + 2·3/4·1e6 B·1 ns/B = 60 µs + 1.5 ms
        XCTAssertEqual(link.ringAllReduce(bytes: 1e6, ranks: 4), 60e-6 + 1.5e-3, accuracy: 1e-12)
        XCTAssertEqual(link.ringAllReduce(bytes: 1e6, ranks: 1), 0)
    }

    func testTreeAllReduceWinsForSmallMessages() {
        // 8 bytes on 8 ranks: tree 3·(10µs + 8ns) vs ring 14·10µs + …
        XCTAssertEqual(link.treeAllReduce(bytes: 8, ranks: 8), 3 * (10e-6 + 8e-9), accuracy: 1e-15)
        XCTAssertEqual(link.allReduce(bytes: 8, ranks: 8), link.treeAllReduce(bytes: 8, ranks: 8))
        XCTAssertEqual(link.allReduce(bytes: 1e8, ranks: 8), link.ringAllReduce(bytes: 1e8, ranks: 8))
    }

    func testBroadcastAndAllGather() {
        XCTAssertEqual(link.broadcast(bytes: 1000, ranks: 4), 2 * (10e-6 + 1e-6), accuracy: 1e-15)
        XCTAssertEqual(link.allGather(bytesPerRank: 1000, ranks: 4), 3 * (10e-6 + 1e-6), accuracy: 1e-15)
    }

    func testLinkFromGigabits() {
        let l = LinkModel.link(gbit: 10, latencyMicros: 5)
        XCTAssertEqual(l.alpha, 5e-6, accuracy: 1e-15)
        XCTAssertEqual(l.beta, 0.8e-9, accuracy: 1e-18)
    }

    func testFitRecoversAlphaAndBeta() {
        let samples = [(8.0, 2), (8.0, 4), (1e6, 2), (1e6, 4), (6.4e7, 4)].map { (b, p) in
            (bytes: b, ranks: p, seconds: link.ringAllReduce(bytes: b, ranks: p))
        }
        let fit = LinkModel.fitRingAllReduce(samples)!
        XCTAssertEqual(fit.alpha, link.alpha, accuracy: 1e-9)
        XCTAssertEqual(fit.beta, link.beta, accuracy: 1e-13)
    }

    func testFullFineTuningBecomesNetworkBoundWhileLoRAStaysComputeBound() {
        let cfg = GPTConfig.named("gpt2-medium")!
        // Pure data parallelism over 64 nodes on 1 Gb/s at 1 TFLOP/s per node: full fine-tuning
        // all-reduces 4·|Φ| = 1.4 GB a step, LoRA 4·|Θ| = 0.8 MB.
        let slow = LinkModel.link(gbit: 1, latencyMicros: 50)
        func syncShare(_ m: TrainMode) -> Double {
            let p = StepCostModel(config: cfg, seq: 1024, batchPerReplica: 8, tp: 1, dp: 64, method: m,
                                  flopsPerRank: 1e12, intra: slow, inter: slow).predict()
            return p.gradSync / p.total
        }
        XCTAssertGreaterThan(syncShare(.full), 0.5)
        XCTAssertLessThan(syncShare(.lora), 0.01)
    }
}
