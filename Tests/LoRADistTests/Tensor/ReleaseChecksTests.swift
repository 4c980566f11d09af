import XCTest

@testable import LoRADist

/// The release build keeps its checks (Package.swift builds with -O, not -Ounchecked): a wrong
/// shape stops the process instead of writing past a buffer. Each test runs itself again as a
/// child process (the same release test binary, built with the library's own flags) that breaks a
/// check on purpose; under -Ounchecked the child would run on and print that it did.
final class ReleaseChecksTests: XCTestCase {
    static let childVariable = "LORA_DIST_CHECK_CHILD"

    func runChild(_ test: String, _ mode: String) throws -> Launcher.Result {
        // The XCTest runner of this very bundle, asked for one test.
        try Launcher.run(
            [CommandLine.arguments[0], "LoRADistTests.ReleaseChecksTests/\(test)"], timeout: 120,
            env: [Self.childVariable: mode])
    }

    func testAPreconditionStopsTheReleaseBuild() throws {
        if ProcessInfo.processInfo.environment[Self.childVariable] == "precondition" {
            // A row stride below the width: `Mat`'s precondition.
            var x = [Float](repeating: 0, count: 12)
            let m = x.withUnsafeMutableBufferPointer { Mat($0.baseAddress!, 3, 4, ld: 3) }
            print("a 3×4 matrix with row stride \(m.ld) was made: preconditions are compiled out")
            return
        }
        let r = try runChild("testAPreconditionStopsTheReleaseBuild", "precondition")
        XCTAssertFalse(r.timedOut)
        XCTAssertNotEqual(r.status, 0, r.output)
        XCTAssertFalse(r.output.contains("preconditions are compiled out"), r.output)
    }

    func testAWrongMatmulShapeStopsWithTheShapesInItsMessage() throws {
        if ProcessInfo.processInfo.environment[Self.childVariable] == "matmul" {
            // C [2×3] = A [2×4] · B [5×3]: the inner sizes differ (4 vs 5).
            let a = [Float](repeating: 1, count: 8)
            let b = [Float](repeating: 1, count: 15)
            var c = [Float](repeating: 0, count: 6)
            a.withUnsafeBufferPointer { a in
                b.withUnsafeBufferPointer { b in
                    c.withUnsafeMutableBufferPointer { c in
                        matmul(Mat(c.baseAddress!, 2, 3), Mat(a.baseAddress!, 2, 4), Mat(b.baseAddress!, 5, 3))
                    }
                }
            }
            print("the mismatched matmul ran")
            return
        }
        let r = try runChild("testAWrongMatmulShapeStopsWithTheShapesInItsMessage", "matmul")
        XCTAssertFalse(r.timedOut)
        XCTAssertNotEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("matmul shapes: [2×3] = [2×4]·[5×3]"), r.output)
        XCTAssertFalse(r.output.contains("the mismatched matmul ran"), r.output)
    }
}
