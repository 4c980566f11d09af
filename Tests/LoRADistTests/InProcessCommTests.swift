import XCTest
@testable import LoRADist

final class InProcessCommTests: XCTestCase {
    func testAllReduceSumMatchesSerialSum() throws {
        for n in 1...4 {
            let results = try InProcessCommunicator.run(ranks: n) { comm -> [Float] in
                var v = (0..<7).map { Float(comm.rank * 10 + $0) }
                try comm.allReduce(&v, op: .sum)
                return v
            }
            let expected = (0..<7).map { i in (0..<n).reduce(Float(0)) { $0 + Float($1 * 10 + i) } }
            for r in results { XCTAssertEqual(r, expected, "ranks=\(n)") }
        }
    }
}
