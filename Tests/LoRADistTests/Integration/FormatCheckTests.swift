import Foundation
import XCTest

/// launch/check-format on a small tree of its own with the
/// repository's .swift-format: it passes a tree as swift-format leaves it, and fails one with a line
/// over 120 characters and one that swift-format would change, naming the file (and the line).
final class FormatCheckTests: XCTestCase {
    func testCheckFormatPassesAFormattedTreeAndNamesALongLineAndAnUnformattedFile() throws {
        let tools = [Launcher.which("swift-format"), "/opt/swift/usr/bin/swift-format"].compactMap { $0 }
        guard let tool = tools.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            try Skip.because("swift-format (part of the Swift toolchain) is not installed")
        }
        let dir = makeTempDir("lora-dist-format")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fm = FileManager.default
        for sub in ["launch", "Sources/X", "Tests/XTests"] {
            try fm.createDirectory(atPath: dir + "/" + sub, withIntermediateDirectories: true)
        }
        for file in ["launch/check-format", ".swift-format"] {
            try fm.copyItem(atPath: Launcher.root.appendingPathComponent(file).path, toPath: dir + "/" + file)
        }
        let source = dir + "/Sources/X/X.swift"
        try "// swift-tools-version:6.0\nimport PackageDescription\n\nlet package = Package(name: \"x\")\n"
            .write(toFile: dir + "/Package.swift", atomically: true, encoding: .utf8)
        try "import XCTest\n".write(toFile: dir + "/Tests/XTests/XTests.swift", atomically: true, encoding: .utf8)
        let formatted = "/// A value.\npublic let x = 1\n"
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let env = ["PATH": URL(fileURLWithPath: tool).deletingLastPathComponent().path + ":" + path]
        func check(_ text: String) throws -> Launcher.Result {
            try text.write(toFile: source, atomically: true, encoding: .utf8)
            return try Launcher.run([dir + "/launch/check-format"], timeout: 300, cwd: dir, env: env)
        }

        let clean = try check(formatted)
        XCTAssertEqual(clean.status, 0, clean.output)
        XCTAssertTrue(clean.output.contains("no line over 120 characters"), clean.output)

        // swift-format leaves a comment as it is, whatever its length: only the length check sees it.
        let long = try check(formatted + "// " + String(repeating: "a", count: 118) + "\n")
        XCTAssertEqual(long.status, 1, long.output)
        XCTAssertTrue(long.output.contains("Sources/X/X.swift:3: 121 characters"), long.output)
        XCTAssertFalse(long.output.contains("would change"), long.output)

        let unformatted = try check(formatted + "public let y=2\n")
        XCTAssertEqual(unformatted.status, 1, unformatted.output)
        XCTAssertTrue(unformatted.output.contains("would change these files:\n  Sources/X/X.swift"), unformatted.output)
        XCTAssertTrue(unformatted.output.contains("+public let y = 2"), unformatted.output)
        XCTAssertFalse(unformatted.output.contains("characters:\n"), unformatted.output)
    }
}
