import XCTest

@testable import LoRADist

/// A rank that hangs: every collective has a deadline (--collective-timeout); when it passes, each
/// waiting rank reports the phase, the operation and the ranks that did not arrive, the job exits
/// non-zero within seconds, the newest checkpoint is intact and the resumed run ends with the
/// uninterrupted run's adapter, bit for bit. An injected hang and a SIGSTOPped rank under
/// launch/mpirun -n 4, an injected hang in-process; a rank slower than the notice threshold but
/// within the deadline changes nothing.
final class HangTests: XCTestCase {
    static let steps = PreemptionTests.mpiSteps
    static func args(_ out: String, steps: Int = steps) -> [String] {
        PreemptionTests.args(steps: steps) + ["--save-every", "2", "--out", out]
    }

    func tmp() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("hang-\(UUID().uuidString)").path
    }

    /// Checks every waiting rank's report and the time to exit, then resumes and compares with `reference`.
    func checkReportedAndResumed(
        _ r: Launcher.Result, out: String, missing: Int, waiting: [Int], timeout: Double, phase: String? = nil,
        together: Bool = true,
        reference: String, steps: Int = steps, resume: ([String]) throws -> Launcher.Result,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        XCTAssertFalse(r.timedOut, "hung:\n\(r.output)", file: file, line: line)
        XCTAssertEqual(r.status, 1, r.output, file: file, line: line)
        XCTAssertLessThan(r.seconds, timeout + 15, "seconds from the hang to the exit", file: file, line: line)
        let latest = Checkpoint.completeCheckpoints(out).last
        XCTAssertNotNil(latest, "a checkpoint was written before the hang", file: file, line: line)
        for w in waiting {
            let report = r.output.split(separator: "\n").first {
                $0.hasPrefix("lora-dist: error: rank \(w): collective timeout: waited ")
            }
            guard let report else {
                XCTFail("rank \(w) did not report:\n\(r.output)", file: file, line: line)
                continue
            }
            if w == waiting.first { print("hang report: \(report)") }
            XCTAssertTrue(report.contains("rank \(missing) did not arrive"), String(report), file: file, line: line)
            if let phase {
                XCTAssertTrue(
                    report.contains(" s in \(phase) AllReduce on group "), String(report), file: file, line: line)
            }
            let others = waiting.filter { $0 != w }
            if together {
                XCTAssertTrue(
                    report.contains(
                        """
                        \(others.count == 1 ? "rank" : "ranks") \(others.map(String.init).joined(separator: ", ")) \
                        \(others.count == 1 ? "is" : "are") waiting in it too
                        """
                    ),
                    String(report), file: file, line: line)
            }
            XCTAssertTrue(
                report.hasSuffix(
                    "the newest complete checkpoint, \(latest ?? "?"), is intact: continue with --resume latest"),
                String(report), file: file, line: line)
        }
        let resumed = try resume(Self.args(out, steps: steps) + ["--resume", "latest"])
        XCTAssertEqual(resumed.status, 0, resumed.output, file: file, line: line)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: out + "/adapter.safetensors")),
            try Data(contentsOf: URL(fileURLWithPath: reference + "/adapter.safetensors")), "bit-identical adapter",
            file: file, line: line)
    }

    func testInjectedHangUnderMpirunIsReportedByEveryWaitingRank() throws {
        let reference = try PreemptionTests.mpiReference.get()
        let out = tmp()
        let r = try Launcher.mpirun(
            4, Self.args(out) + ["--inject-hang-at", "5:2", "--collective-timeout", "3"], timeout: 120)
        print(
            """
            hang: injected at step 5 on rank 2 of 4 (mpirun, timeout 3 s): status \(r.status) after \
            \(String(format: "%.1f", r.seconds)) s of the whole run
            """
        )
        try checkReportedAndResumed(
            r, out: out, missing: 2, waiting: [0, 1, 3], timeout: 3 + 25, phase: "control", reference: reference
        ) {
            try Launcher.mpirun(4, $0, timeout: 300)
        }
    }

    func testSIGSTOPpedRankUnderMpirunIsReportedByEveryWaitingRank() throws {
        let reference = try PreemptionTests.mpiReference.get()
        let out = tmp()
        let job = try BackgroundLaunch.mpirun(4, Self.args(out) + ["--collective-timeout", "3"])
        XCTAssertTrue(
            job.wait(timeout: 120) { Checkpoint.completeCheckpoints(out).count >= 1 && metricsLines(out) >= 3 },
            job.output)
        let ranks = Launcher.ranks(below: job.pid)
        XCTAssertEqual(ranks.count, 4)
        guard let victim = ranks.last else { return XCTFail("no rank processes") }
        let env = (try? String(contentsOfFile: "/proc/\(victim)/environ", encoding: .utf8)) ?? ""
        guard
            let rank = env.split(separator: "\0").first(where: { $0.hasPrefix("OMPI_COMM_WORLD_RANK=") }).flatMap({
                Int($0.split(separator: "=")[1])
            })
        else {
            return XCTFail("no rank in the victim's environment")
        }
        let t = Date()
        kill(victim, SIGSTOP)
        let r = job.finish(timeout: 60, since: t)
        defer { kill(victim, SIGKILL) }
        print(
            """
            hang: rank \(rank) of 4 SIGSTOPped (mpirun, timeout 3 s): status \(r.status) after \
            \(String(format: "%.1f", r.seconds)) s
            """
        )
        // mpirun ends the job with SIGCONT, SIGTERM and SIGKILL: the stopped rank goes too.
        let gone = Date()
        while kill(victim, 0) == 0 && Date().timeIntervalSince(gone) < 10 { usleep(50_000) }
        XCTAssertNotEqual(kill(victim, 0), 0, "the stopped rank is gone")
        // Stopped inside a collective, the rank may leave some ranks waiting in it and let others go
        // one further (the algorithm's rounds): each reports where the others are; all name it.
        try checkReportedAndResumed(
            r, out: out, missing: rank, waiting: (0..<4).filter { $0 != rank }, timeout: 3, together: false,
            reference: reference
        ) {
            try Launcher.mpirun(4, $0, timeout: 300)
        }
    }

    func testInjectedHangInProcessIsReportedByEveryWaitingRank() throws {
        let reference = try PreemptionTests.inProcessReference.get()
        let out = tmp()
        let steps = PreemptionTests.inProcessSteps
        let r = try Launcher.lora(
            Self.args(out, steps: steps) + [
                "--local-ranks", "4", "--inject-hang-at", "5:2", "--collective-timeout", "2"
            ], timeout: 120)
        print(
            """
            hang: injected at step 5 on rank 2 of 4 in-process (timeout 2 s): status \(r.status) after \
            \(String(format: "%.1f", r.seconds)) s of the whole run
            """
        )
        try checkReportedAndResumed(
            r, out: out, missing: 2, waiting: [0, 1, 3], timeout: 2 + 20, phase: "control", reference: reference,
            steps: steps
        ) {
            try Launcher.lora($0 + ["--local-ranks", "4"], timeout: 300)
        }
    }

    /// A rank 2 s late (past the 1 s after which waiting ranks tell each other, within the 8 s
    /// deadline) delays the step and changes nothing else.
    func testSlowRankWithinTheDeadlineChangesNothing() throws {
        let reference = try PreemptionTests.mpiReference.get()
        let out = tmp()
        let r = try Launcher.mpirun(
            4,
            PreemptionTests.args(steps: Self.steps) + [
                "--out", out, "--inject-hang-at", "3:1:2", "--collective-timeout", "8"
            ], timeout: 300)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: out + "/adapter.safetensors")),
            try Data(contentsOf: URL(fileURLWithPath: reference + "/adapter.safetensors")))
        XCTAssertEqual(
            try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").count, Self.steps
        )
    }

    /// The in-process backend on a 2 × 2 grid: rank 3 never enters its TP group's collective; its
    /// TP partner reports it, with the phase from the ledger; a late rank within the deadline is fine.
    func testInProcessDeadlineNamesTheMissingRankOfTheGroup() throws {
        let saved = CollectiveDeadline.seconds
        defer { CollectiveDeadline.seconds = saved }
        CollectiveDeadline.seconds = 1
        var result: Result<[Void], Error>?
        let t0 = Date()
        result = Result {
            try InProcessCommunicator.runReportingRank(ranks: 4) { c in
                let world = RecordingCommunicator(c)
                let grid = try ProcessGrid(world: world, tp: 2)
                if c.rank == 1 { usleep(300_000) }  // late, within the deadline
                var x = [Float(c.rank)]
                try world.allReduce(&x)
                XCTAssertEqual(x, [6])
                if c.rank == 3 {
                    while !(c as! InProcessCommunicator).isAborted { usleep(10_000) }
                    throw CommError.aborted("rank 3 hung until the job ended")
                }
                try world.ledger.with(.forward) { try grid.tp.allReduce(&x) }
            }
        }
        XCTAssertLessThan(Date().timeIntervalSince(t0), 15)
        guard case .failure(let f as RankFailure)? = result else {
            return XCTFail("the world must fail: \(String(describing: result))")
        }
        let reports = f.timeouts.map { "rank \($0.rank): \($0.error)" }.joined(separator: "\n")
        XCTAssertTrue(
            reports.contains(
                "rank 2: collective timeout: waited 1.0 s in forward AllReduce on group tp (world ranks 2, 3)"), reports
        )
        XCTAssertTrue(reports.contains("of 4 bytes; rank 3 did not arrive"), reports)
    }
}
