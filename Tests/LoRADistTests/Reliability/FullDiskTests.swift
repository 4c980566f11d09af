import XCTest

@testable import LoRADist

/// A full disk: a checkpoint, metrics line, adapter or summary that does not fit stops every rank
/// with a message naming the file (printed by each rank under mpirun), exits 1 without a crash,
/// and leaves the newest complete checkpoint intact, from which the run continues to the same
/// adapter bit for bit. Each case runs on a tmpfs the test mounts (root), sized in pages so that
/// exactly the file under test does not fit, and unmounts afterwards.
final class FullDiskTests: XCTestCase {
    static let args = [
        "train", "--steps", "6", "--batch", "2", "--seq", "168", "--eval-examples", "0", "--valid-limit", "2",
        "--lora-rank", "2", "--lora-targets", "q,v", "--log-every", "1"
    ]
    static let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    private var mounts: [String] = []

    func tmp(_ name: String) -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    override func tearDown() {
        for m in mounts { _ = try? Launcher.run(["umount", m], timeout: 30) }
        mounts = []
    }

    /// A tmpfs of `pages` pages with `free` of them left (a file outside the run directory takes
    /// the rest); returns the run directory on it.
    func fullDisk(pages: Int, free: Int) throws -> String {
        guard getuid() == 0 else { try Skip.because("mounting a tmpfs needs root") }
        let m = tmp("tmpfs")
        let r = try Launcher.run(["mount", "-t", "tmpfs", "-o", "size=\(pages * Self.page)", "tmpfs", m], timeout: 30)
        guard r.status == 0 else { try Skip.because("cannot mount a tmpfs here: \(r.output)") }
        mounts.append(m)
        if pages > free {
            FileManager.default.createFile(atPath: m + "/filler", contents: Data(count: (pages - free) * Self.page))
        }
        var st = statvfs()
        XCTAssertEqual(statvfs(m, &st), 0)
        XCTAssertEqual(Int(st.f_bavail) * Int(st.f_bsize), free * Self.page, "free space on the test file system")
        return m + "/run"
    }

    /// What an uninterrupted run on two ranks writes, measured on a roomy disk, in pages; and its adapter.
    struct Reference {
        var dir: String
        var checkpoint: Int
        var adapter: Int
        var adapterBytes: Data
    }
    static let reference: Swift.Result<Reference, Error> = Swift.Result {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("fulldisk-ref-\(UUID().uuidString)").path
        let r = try Launcher.lora(args + ["--save-every", "2", "--out", d, "--local-ranks", "2"], timeout: 120)
        guard r.status == 0 else { throw CommError.invalid("the reference run failed:\n\(r.output)") }
        func pages(_ p: String) throws -> Int {
            let n = (try FileManager.default.attributesOfItem(atPath: p)[.size] as! NSNumber).intValue
            return (n + page - 1) / page
        }
        return Reference(
            dir: d, checkpoint: try pages(Checkpoint.dir(d, step: 2) + "/rank-0.safetensors"),
            adapter: try pages(d + "/adapter.safetensors"),
            adapterBytes: try Data(contentsOf: URL(fileURLWithPath: d + "/adapter.safetensors")))
    }

    /// Checks that the run ended with status 1 (not a crash), promptly, with `message` from each of `ranks` ranks.
    func checkStopped(
        _ r: Launcher.Result, _ message: String, ranks: Int, file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertFalse(r.timedOut, "hung:\n\(r.output)", file: file, line: line)
        XCTAssertEqual(r.status, 1, "exit status 1, not a crash:\n\(r.output)", file: file, line: line)
        for bad in ["Fatal error", "Segmentation", "signal", "Illegal instruction", "core dumped"] {
            XCTAssertFalse(r.output.contains(bad), "crashed (\(bad)):\n\(r.output)", file: file, line: line)
        }
        if ranks == 1 {
            XCTAssertTrue(
                r.output.contains("lora-dist: error: " + message), "expected \"\(message)\" in:\n\(r.output)",
                file: file, line: line)
        } else {
            for k in 0..<ranks {
                XCTAssertTrue(
                    r.output.contains("lora-dist: error: rank \(k): " + message),
                    "rank \(k) must say \"\(message)\":\n\(r.output)", file: file, line: line)
            }
        }
    }

    /// A checkpoint that does not fit (room for the metrics, one checkpoint and its manifest):
    /// every rank says so, the incomplete directory is gone, the previous one is intact, and
    /// resuming from it (once there is room) ends with the uninterrupted run's adapter, bit for bit.
    func checkCheckpointThatDoesNotFit(mpi: Bool) throws {
        let ref = try Self.reference.get()
        let free = 1 + ref.checkpoint + 1 + ref.checkpoint / 2
        let out = try fullDisk(pages: free, free: free)
        let args = Self.args + ["--save-every", "2", "--out", out]
        let r =
            mpi
            ? try Launcher.mpirun(2, args, timeout: 120)
            : try Launcher.lora(args + ["--local-ranks", "2"], timeout: 120)
        let ck = Checkpoint.dir(out, step: 2)
        checkStopped(
            r,
            """
            cannot write \(Checkpoint.dir(out, step: 4))/rank-0.safetensors: No space left on device (on rank 0); the \
            newest complete checkpoint, \(ck), is intact: free space (or choose another --out) and continue with \
            --resume latest
            """,
            ranks: mpi ? 2 : 1)
        XCTAssertEqual(Checkpoint.completeCheckpoints(out), [ck])
        XCTAssertFalse(
            FileManager.default.fileExists(atPath: Checkpoint.dir(out, step: 4)), "the incomplete checkpoint is removed"
        )
        XCTAssertEqual(
            try FileManager.default.contentsOfDirectory(atPath: ck).sorted(), ["MANIFEST", "rank-0.safetensors"])
        // Room again: the run continues from step 2 to the uninterrupted run's adapter.
        let roomy = tmp("fulldisk-resume")
        try FileManager.default.removeItem(atPath: roomy)
        try FileManager.default.copyItem(atPath: out, toPath: roomy)
        let resumed =
            mpi
            ? try Launcher.mpirun(
                2, Self.args + ["--save-every", "2", "--out", roomy, "--resume", "latest"], timeout: 120)
            : try Launcher.lora(
                Self.args + ["--save-every", "2", "--out", roomy, "--resume", "latest", "--local-ranks", "2"],
                timeout: 120)
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertTrue(
            resumed.output.contains("resumed from \(roomy)/checkpoints/step-00000002 at step 2"), resumed.output)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: roomy + "/adapter.safetensors")), ref.adapterBytes,
            "bit-identical to the uninterrupted run")
        XCTAssertEqual(
            try String(contentsOfFile: roomy + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").count, 6)
    }

    func testCheckpointThatDoesNotFitUnderMpirun() throws { try checkCheckpointThatDoesNotFit(mpi: true) }
    func testCheckpointThatDoesNotFitInProcess() throws { try checkCheckpointThatDoesNotFit(mpi: false) }

    func testMetricsLineThatDoesNotFit() throws {
        for mpi in [true, false] {
            let out = try fullDisk(pages: 2, free: 0)
            let r =
                mpi
                ? try Launcher.mpirun(2, Self.args + ["--out", out], timeout: 120)
                : try Launcher.lora(Self.args + ["--out", out], timeout: 120)
            checkStopped(
                r,
                """
                cannot write \(out)/metrics.jsonl: No space left on device (on rank 0); free space (or choose another \
                --out) and run again
                """,
                ranks: mpi ? 2 : 1)
            XCTAssertEqual(
                try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8), "", "no partial line is left")
        }
    }

    func testAdapterThatDoesNotFit() throws {
        let ref = try Self.reference.get()
        let out = try fullDisk(pages: 1 + ref.adapter - 1, free: 1 + ref.adapter - 1)
        let r = try Launcher.mpirun(2, Self.args + ["--out", out], timeout: 120)
        checkStopped(r, "cannot write \(out)/adapter.safetensors: No space left on device (on rank 0)", ranks: 2)
        XCTAssertEqual(
            try FileManager.default.contentsOfDirectory(atPath: out), ["metrics.jsonl"], "no temporary file is left")
        XCTAssertEqual(
            try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").count, 6)
    }

    func testSummaryThatDoesNotFit() throws {
        let ref = try Self.reference.get()
        let out = try fullDisk(pages: 1 + ref.adapter, free: 1 + ref.adapter)
        let r = try Launcher.lora(Self.args + ["--out", out, "--local-ranks", "2"], timeout: 120)
        checkStopped(r, "cannot write \(out)/summary.json: No space left on device (on rank 0)", ranks: 1)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: out + "/adapter.safetensors")), ref.adapterBytes,
            "the adapter was written whole")
    }
}
