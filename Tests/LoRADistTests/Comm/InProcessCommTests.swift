import XCTest

@testable import LoRADist

/// The in-process backend: every collective on 1–4 ranks, splits, reproducibility, the ledger, and
/// abort releasing the other ranks.
final class InProcessCommTests: XCTestCase {
    func testEveryCollectiveOnOneToFourRanks() throws {
        for n in 1...4 {
            _ = try InProcessCommunicator.run(ranks: n) { comm in try CollectiveChecks.run(comm) }
        }
    }

    func testAllReduceIsBitReproducibleRunToRun() throws {
        func once() throws -> [[Float]] {
            try InProcessCommunicator.run(ranks: 4) { comm -> [Float] in
                var rng = RNG(seed: UInt64(comm.rank))
                var v = (0..<1000).map { _ in rng.normal() * 1e3 }
                try comm.allReduce(&v, op: .sum)
                return v
            }
        }
        let a = try once()
        let b = try once()
        XCTAssertEqual(a, b)
        for r in a { XCTAssertEqual(r.map(\.bitPattern), a[0].map(\.bitPattern), "every rank holds the same bits") }
    }

    func testSplitFormsTheRowsAndColumnsOfATwoByTwoGrid() throws {
        let res = try InProcessCommunicator.run(ranks: 4) { comm -> [Int] in
            let grid = try ProcessGrid(world: comm, tp: 2)
            var v = [Float(comm.rank)]
            try grid.tp.allReduce(&v, op: .sum)
            var w = [Float(comm.rank)]
            try grid.dp.allReduce(&w, op: .sum)
            return [grid.tp.rank, grid.tp.size, grid.dp.rank, grid.dp.size, Int(v[0]), Int(w[0])]
        }
        XCTAssertEqual(res[0], [0, 2, 0, 2, 1, 2])
        XCTAssertEqual(res[1], [1, 2, 0, 2, 1, 4])
        XCTAssertEqual(res[2], [0, 2, 1, 2, 5, 2])
        XCTAssertEqual(res[3], [1, 2, 1, 2, 5, 4])
    }

    func testLedgerRecordsOpGroupBytesAndPhase() throws {
        let entries = try InProcessCommunicator.run(ranks: 2) { raw -> [LedgerEntry] in
            let ledger = Ledger()
            let comm = RecordingCommunicator(raw, ledger: ledger)
            var a = [Float](repeating: 1, count: 10)
            try ledger.with(.forward) { try comm.allReduce(&a, op: .sum) }
            let sub = try comm.split(color: 0, key: comm.rank, name: "tp")
            var b = [Double](repeating: 1, count: 3)
            try ledger.with(.gradSync) { try sub.broadcast(&b, root: 1) }
            _ = try ledger.with(.eval) { try sub.allGather([Float(1), 2]) }
            return ledger.entries
        }[0]
        XCTAssertEqual(entries.map(\.op), [.allReduce, .split, .broadcast, .allGather])
        XCTAssertEqual(entries.map(\.bytes), [40, 0, 24, 8])
        XCTAssertEqual(entries.map(\.group), ["world", "world", "tp", "tp"])
        XCTAssertEqual(entries.map(\.phase), [.forward, .setup, .gradSync, .eval])
        XCTAssertTrue(entries.allSatisfy { $0.seconds >= 0 })
    }

    func testAbortReleasesTheOtherRanksWithTheRootCause() throws {
        let t0 = Date()
        XCTAssertThrowsError(
            try InProcessCommunicator.run(ranks: 3) { comm in
                if comm.rank == 1 { try comm.abort("disk full") }
                try comm.barrier()  // ranks 0 and 2 would wait here forever without the abort
            }
        ) { e in
            XCTAssertTrue("\(e)".contains("disk full"), "\(e)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(t0), 5)
    }

    func testRankThatThrowsIsTheErrorReported() throws {
        struct Boom: Error {}
        XCTAssertThrowsError(
            try InProcessCommunicator.run(ranks: 4) { comm in
                if comm.rank == 3 { throw Boom() }
                var v: [Float] = [1]
                try comm.allReduce(&v, op: .sum)
            }
        ) { e in XCTAssertTrue(e is Boom, "\(e)") }
    }
}
