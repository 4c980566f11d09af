import Foundation
import XCTest

/// Skipping is for a developer's machine: under CI (`CI=true`, as `.ci/run` runs the tests) a test
/// that cannot run fails with its reason, since XCTest counts a skipped test as passed. Tests call
/// `Skip.because` instead of throwing `XCTSkip` themselves; launch/test also fails a CI run whose
/// log shows any skipped test.
enum Skip {
    static var inCI: Bool {
        guard let v = ProcessInfo.processInfo.environment["CI"]?.lowercased() else { return false }
        return !v.isEmpty && v != "0" && v != "false" && v != "no"
    }

    struct CannotRunInCI: Error, CustomStringConvertible {
        var reason: String
        var description: String { "this test cannot run here, and under CI=true a test must not skip: \(reason)" }
    }

    /// Skips the test (throws XCTSkip), or under CI fails it (throws an error naming the reason).
    static func because(_ reason: String) throws -> Never {
        if inCI { throw CannotRunInCI(reason: reason) }
        throw XCTSkip(reason)
    }
}
