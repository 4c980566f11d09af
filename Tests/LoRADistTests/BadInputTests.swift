import XCTest

/// The bad-input catalogue: each gets one specific message naming the problem and the file or
/// option, a non-zero exit (on every rank under mpirun), and nothing on disk is damaged.
final class BadInputTests: XCTestCase {
    func tmp() -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    static let quick = ["--steps", "2", "--batch", "2", "--eval-examples", "0", "--valid-limit", "2"]

    func expectFailure(_ args: [String], _ message: String, mpi: Int? = nil, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = mpi.map { try? Launcher.mpirun($0, args, timeout: 120) } ?? (try? Launcher.lora(args, timeout: 120))
        guard let r else { return XCTFail("could not run", file: file, line: line) }
        XCTAssertFalse(r.timedOut, "hung: \(args)", file: file, line: line)
        XCTAssertNotEqual(r.status, 0, "must fail: \(args)\n\(r.output)", file: file, line: line)
        XCTAssertTrue(r.output.contains(message), "expected \"\(message)\" in:\n\(r.output)", file: file, line: line)
    }

    func writeData(_ dir: String, train: String, valid: String? = nil) {
        FileManager.default.createFile(atPath: dir + "/train.jsonl", contents: Data(train.utf8))
        FileManager.default.createFile(atPath: dir + "/valid.jsonl", contents: Data((valid ?? train).utf8))
    }

    func testMissingDataFile() throws {
        let d = tmp()
        try expectFailure(["train", "--data", d] + Self.quick, "data file \(d)/train.jsonl does not exist")
    }

    func testBadJSONLine() throws {
        let d = tmp()
        writeData(d, train: "{\"context\": \"a\", \"completion\": \"b\"}\n{not json\n")
        try expectFailure(["train", "--data", d] + Self.quick, "\(d)/train.jsonl line 2: not a JSON object")
    }

    func testMissingKey() throws {
        let d = tmp()
        writeData(d, train: "{\"context\": \"a\"}\n")
        try expectFailure(["train", "--data", d] + Self.quick, "line 1: needs string fields \"context\" and \"completion\"")
    }

    func testDatasetWithNoUsableExamples() throws {
        let d = tmp()
        let long = String(repeating: "x", count: 400)
        writeData(d, train: "{\"context\": \"\(long)\", \"completion\": \"y\"}\n")
        try expectFailure(["train", "--data", d] + Self.quick, "has no usable examples: all 1 examples are longer than the context of 168 tokens")
    }

    func testTooLongExamplesAreDroppedAndCounted() throws {
        let d = tmp(), out = tmp()
        let long = String(repeating: "x", count: 400)
        var lines = "{\"context\": \"\(long)\", \"completion\": \"y\"}\n"
        for i in 0..<8 { lines += "{\"context\": \"name=\(i)\\n\", \"completion\": \"ok \(i)\"}\n" }
        writeData(d, train: lines)
        let r = try Launcher.lora(["train", "--data", d, "--out", out] + Self.quick, timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("data: dropped 1 training examples longer than --seq 168 tokens"), r.output)
    }

    func testTPThatDoesNotDivideTheHeadsFailsOnEveryRank() throws {
        try expectFailure(["train", "--tp", "3"] + Self.quick, "--tp 3 does not divide the number of heads 4", mpi: 3)
    }

    func testWorldNotDivisibleByTP() throws {
        try expectFailure(["train", "--tp", "2"] + Self.quick, "the world of 3 ranks is not divisible by --tp 2", mpi: 3)
    }

    func testRankLargerThanTheMatrix() throws {
        try expectFailure(["train", "--lora-rank", "200"] + Self.quick, "--lora-rank 200 exceeds min(in, out) = 128")
    }

    func testNegativeLearningRate() throws {
        try expectFailure(["train", "--lr=-1"] + Self.quick, "--lr must be positive (got -1.0)")
    }

    func testUnwritableOutputDirectory() throws {
        let f = tmp() + "/file"
        FileManager.default.createFile(atPath: f, contents: Data("x".utf8))
        try expectFailure(["train", "--out", f + "/run"] + Self.quick, f)
        XCTAssertEqual(try String(contentsOfFile: f, encoding: .utf8), "x", "nothing on disk is damaged")
    }

    func testMissingBaseModel() throws {
        try expectFailure(["train", "--base", "/nonexistent/model.safetensors"] + Self.quick, "cannot read /nonexistent/model.safetensors")
    }

    func testCorruptBaseModel() throws {
        let p = tmp() + "/model.safetensors"
        FileManager.default.createFile(atPath: p, contents: Data([1, 2, 3, 4, 5, 6, 7, 8, 9]))
        try expectFailure(["train", "--base", p] + Self.quick, "\(p): header length")
    }

    func testUnknownTarget() throws {
        try expectFailure(["train", "--lora-targets", "q,z"] + Self.quick, "unknown target z")
    }
}

/// Ctrl-C: the run stops at the next step boundary, writes a checkpoint, exits 130, and resumes.
final class InterruptTests: XCTestCase {
    func testSIGINTStopsAtAStepBoundaryWithACheckpoint() throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("int-\(UUID().uuidString)").path
        let args = ["train", "--steps", "60", "--batch", "2", "--eval-examples", "0", "--valid-limit", "2", "--log-every", "1", "--out", out]
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Launcher.binary)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let t0 = Date()
        func lines() -> Int { ((try? String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8)) ?? "").split(separator: "\n").count }
        while lines() < 3 && Date().timeIntervalSince(t0) < 120 && p.isRunning { usleep(50_000) }
        kill(p.processIdentifier, SIGINT)
        p.waitUntilExit()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 130, text)
        XCTAssertTrue(text.contains("interrupted: stopped after step"), text)
        let step = lines()
        XCTAssertLessThan(step, 60)
        let dirs = try FileManager.default.contentsOfDirectory(atPath: out + "/checkpoints")
        XCTAssertTrue(dirs.contains("step-" + String(repeating: "0", count: 8 - String(step).count) + String(step)), "\(dirs) at step \(step)")
        let resumed = try Launcher.lora(args + ["--resume", "latest"], timeout: 120)
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertEqual(lines(), 60, "the resumed run continues the log to the last step")
    }
}

/// Typed as users type it: `lora-dist` found on PATH, run from another directory, finds its
/// built-in base model.
final class InstalledBinaryTests: XCTestCase {
    func testBinaryRunByNameFromAnotherDirectoryFindsTheBuiltinBase() throws {
        let dir = URL(fileURLWithPath: Launcher.binary).deletingLastPathComponent().path
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("byname-\(UUID().uuidString)").path
        let r = try Launcher.run(["env", "PATH=\(dir):" + (ProcessInfo.processInfo.environment["PATH"] ?? ""), "lora-dist", "train",
                                  "--steps", "1", "--batch", "2", "--eval-examples", "0", "--valid-limit", "2", "--out", out],
                                 timeout: 120, cwd: "/")
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("lora on tiny-base.safetensors"), r.output)
    }
}
