import XCTest

@testable import LoRADist

/// The inference benchmark's collectives, per forward pass and per decoded token, read from the
/// ledger on TP = 2 and 4: merged and unmerged LoRA add nothing to the base; sharded adapters add
/// one AllReduce per adapter, owner adapters one Broadcast, replicated adapters nothing.
final class InferenceLedgerTests: XCTestCase {
    func testMergedLoRAAddsNoCollectiveAndAdaptersAddTheirs() throws {
        let cfg = GPTConfig(nLayer: 3, nEmbd: 32, nHead: 4, vocabSize: 64, nPositions: 32)
        var o = InferenceBenchOptions(
            config: cfg, cases: [InferenceCase(batch: 2, seq: 8), InferenceCase(batch: 1, seq: 8, decode: true)])
        o.warmup = 1
        o.reps = 2
        o.bottleneck = 8
        for tp in [2, 4] {
            let rows = try InProcessCommunicator.run(ranks: tp) { raw in
                try InferenceBench.run(comm: RecordingCommunicator(raw), options: o)
            }[0]
            XCTAssertEqual(rows.count, InferenceMethod.all.count * 2)
            for cs in o.cases {
                let byMethod = Dictionary(
                    uniqueKeysWithValues: rows.filter { $0.caseName == cs.description }.map { ($0.method, $0) })
                let base = byMethod["base"]!
                XCTAssertEqual(base.allReduce, 1 + 2 * cfg.nLayer, "embedding g and two g's per block")
                XCTAssertEqual(base.allGather, 1, "the vocab-parallel argmax")
                for m in ["lora-merged", "lora-unmerged"] {
                    XCTAssertEqual(byMethod[m]!.allReduce, base.allReduce, "\(m) tp \(tp) \(cs)")
                    XCTAssertEqual(byMethod[m]!.broadcast, 0)
                    XCTAssertEqual(byMethod[m]!.bytes, base.bytes, "\(m) moves the same bytes as the base")
                }
                for kind in AdapterKind.allCases {
                    let per = (kind == .houlsby ? 2 : 1) * cfg.nLayer
                    let rep = byMethod["\(kind.rawValue)/replicated"]!
                    let sh = byMethod["\(kind.rawValue)/sharded"]!
                    let ow = byMethod["\(kind.rawValue)/owner"]!
                    XCTAssertEqual(rep.allReduce, base.allReduce)
                    XCTAssertEqual(rep.broadcast, 0)
                    XCTAssertEqual(sh.allReduce, base.allReduce + per, "\(kind) sharded tp \(tp) \(cs)")
                    XCTAssertEqual(sh.broadcast, 0)
                    XCTAssertEqual(ow.allReduce, base.allReduce)
                    XCTAssertEqual(ow.broadcast, per, "\(kind) owner tp \(tp) \(cs)")
                    XCTAssertGreaterThan(
                        rep.adapterParamsPerRank, sh.adapterParamsPerRank,
                        "replicated stores more per rank than sharded")
                }
            }
        }
    }
}
