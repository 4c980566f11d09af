import XCTest

/// Under CI a test that cannot run fails: `Skip.because` throws XCTSkip only off CI.
final class SkipPolicyTests: XCTestCase {
    func testUnderCIASkipIsAFailureAndOffCIASkip() {
        let saved = ProcessInfo.processInfo.environment["CI"]
        defer { if let saved { setenv("CI", saved, 1) } else { unsetenv("CI") } }
        for (value, skips) in [("true", false), ("1", false), ("false", true), ("", true)] {
            setenv("CI", value, 1)
            XCTAssertThrowsError(try Skip.because("no tool")) { e in
                XCTAssertEqual(e is XCTSkip, skips, "CI=\(value): \(e)")
                if !skips { XCTAssertTrue("\(e)".contains("no tool"), "\(e)") }
            }
        }
        unsetenv("CI")
        XCTAssertThrowsError(try Skip.because("no tool")) { e in XCTAssertTrue(e is XCTSkip) }
    }
}
