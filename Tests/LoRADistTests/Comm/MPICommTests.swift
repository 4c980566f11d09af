import XCTest

/// Every collective under real mpirun on 2 and 4 processes, and faults that must end the whole job
/// promptly with the message shown, never hang it.
final class MPICommTests: XCTestCase {
    func testCollectivesUnderMpirunOnTwoAndFourRanks() throws {
        for n in [2, 4] {
            let r = try Launcher.mpirun(n, ["comm-check"], timeout: 60)
            XCTAssertEqual(r.status, 0, r.output)
            XCTAssertTrue(r.output.contains("comm-check: \(n) ranks OK"), r.output)
        }
    }

    func testRankThatAbortsEndsTheJobWithinSeconds() throws {
        let r = try Launcher.mpirun(4, ["comm-check", "--abort-rank", "1"], timeout: 30)
        XCTAssertFalse(r.timedOut, "mpirun hung")
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.output.contains("injected abort on rank 1"), r.output)
        XCTAssertLessThan(r.seconds, 20)
    }

    func testRankThatThrowsEndsTheJobWithItsMessage() throws {
        let r = try Launcher.mpirun(4, ["comm-check", "--fail-rank", "2"], timeout: 30)
        XCTAssertFalse(r.timedOut, "mpirun hung")
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.output.contains("rank 2: injected failure on rank 2"), r.output)
    }

    func testRankThatExitsEndsTheJob() throws {
        let r = try Launcher.mpirun(4, ["comm-check", "--exit-rank", "3"], timeout: 30)
        XCTAssertFalse(r.timedOut, "mpirun hung")
        XCTAssertNotEqual(r.status, 0)
        XCTAssertLessThan(r.seconds, 20)
    }

    func testDoctorUnderMpirunPrintsTheFigures() throws {
        let json = FileManager.default.temporaryDirectory.appendingPathComponent("doctor-\(UUID().uuidString).json")
            .path
        let r = try Launcher.mpirun(
            2, ["doctor", "--bandwidth-mib", "1", "--sgemm-size", "128", "--json", json], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("world: 2 ranks (mpi)"), r.output)
        let data = try Data(contentsOf: URL(fileURLWithPath: json))
        let obj = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        let ranks = obj["ranks"] as! [[String: Any]]
        XCTAssertEqual(ranks.count, 2)
        for rk in ranks {
            XCTAssertGreaterThan(rk["sgemmGflops"] as! Double, 0.1)
            XCTAssertGreaterThan(rk["allReduceLatencyMicros"] as! Double, 0)
            XCTAssertGreaterThan(rk["allReduceAlgGBps"] as! Double, 0)
        }
    }

    func testDoctorWithLocalRanksWorksInOneProcess() throws {
        let r = try Launcher.lora(
            ["doctor", "--local-ranks", "4", "--bandwidth-mib", "1", "--sgemm-size", "128"], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("world: 4 ranks (in-process)"), r.output)
    }
}
