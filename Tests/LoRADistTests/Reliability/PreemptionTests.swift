import XCTest

@testable import LoRADist

/// Preemption: SIGTERM to the launcher (what Slurm and schedulers send before SIGKILL) stops every
/// rank at the same step boundary with a checkpoint, exits with the conventional status in a few
/// seconds, and `--resume latest` ends with the uninterrupted run's adapter and loss log, bit for
/// bit: through launch/mpirun (-n 4), SIGTERM to mpirun itself, and in-process ranks.
final class PreemptionTests: XCTestCase {
    static func args(steps: Int) -> [String] {
        [
            "train", "--steps", String(steps), "--batch", "4", "--seq", "168", "--eval-examples", "0", "--valid-limit",
            "4",
            "--log-every", "1", "--lr", "5e-3", "--warmup", "2"
        ]
    }
    /// Long enough under mpirun that a run signalled at step 2 is still training when mpirun's own
    /// SIGTERM reaches the ranks (mpirun sends it odls_base_sigkill_timeout seconds after SIGCONT).
    static let mpiSteps = 120, inProcessSteps = 12

    static func tmp() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("preempt-\(UUID().uuidString)").path
    }

    /// Uninterrupted runs on 4 ranks: under mpirun, and in-process (whose reductions add in another order).
    static let mpiReference: Swift.Result<String, Error> = Swift.Result {
        let out = tmp()
        let r = try Launcher.mpirun(4, args(steps: mpiSteps) + ["--out", out], timeout: 300)
        guard r.status == 0 else { throw CommError.invalid("reference run failed:\n\(r.output)") }
        return out
    }
    static let inProcessReference: Swift.Result<String, Error> = Swift.Result {
        let out = tmp()
        let r = try Launcher.lora(args(steps: inProcessSteps) + ["--out", out, "--local-ranks", "4"], timeout: 300)
        guard r.status == 0 else { throw CommError.invalid("reference run failed:\n\(r.output)") }
        return out
    }

    func losses(_ out: String) throws -> [String] {
        try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { line in
            let d = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return "\(d["step"]!) \(d["loss"]!) \(d["grad_norm"]!)"
        }
    }

    /// Waits until `job` has logged two steps into `out`, sends SIGTERM to the process `target`
    /// picks from the launch's pid (the launch itself by default), and returns how the launch
    /// ended, timed from the signal; `label` names the target in the printed line.
    func stopWithSIGTERM(
        _ job: BackgroundLaunch, out: String, _ label: String, target: (Int32) throws -> Int32 = { $0 },
        file: StaticString = #filePath, line: UInt = #line
    ) throws -> Launcher.Result {
        XCTAssertTrue(job.wait(timeout: 120) { metricsLines(out) >= 2 }, job.output, file: file, line: line)
        let pid = try target(job.pid)
        let t = Date()
        kill(pid, SIGTERM)
        let r = job.finish(timeout: 60, since: t)
        print("preemption: SIGTERM to \(label): status \(r.status) after \(String(format: "%.1f", r.seconds)) s")
        return r
    }

    /// Checks a stopped run: status, time, one checkpoint at the step the log reached, replicas
    /// equal; then resumes it (`resume`) and compares with `reference` bit for bit.
    func checkStoppedAndResumed(
        _ r: Launcher.Result, out: String, steps: Int, status: Int32, signal: String, reference: String,
        resume: ([String]) throws -> Launcher.Result, file: StaticString = #filePath, line: UInt = #line
    ) throws {
        XCTAssertFalse(r.timedOut, "did not stop:\n\(r.output)", file: file, line: line)
        XCTAssertEqual(r.status, status, r.output, file: file, line: line)
        XCTAssertLessThan(r.seconds, 30, "seconds from the signal to the exit", file: file, line: line)
        let step = metricsLines(out)
        XCTAssertGreaterThanOrEqual(step, 2, file: file, line: line)
        XCTAssertLessThan(step, steps, "stopped before the end", file: file, line: line)
        XCTAssertTrue(
            r.output.contains(
                """
                interrupted by \(signal): stopped after step \(step) and wrote \(Checkpoint.dir(out, step: step)); \
                continue with --resume latest
                """
            ),
            r.output, file: file, line: line)
        XCTAssertEqual(
            Checkpoint.completeCheckpoints(out), [Checkpoint.dir(out, step: step)],
            "one checkpoint, at the step the log reached", file: file, line: line)
        let s =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/summary.json")))
            as! [String: Any]
        XCTAssertEqual(s["interrupted"] as? Bool, true, file: file, line: line)
        let fps = s["replica_fingerprints"] as! [String]
        XCTAssertEqual(fps.count, 4, file: file, line: line)
        XCTAssertEqual(Set(fps).count, 1, "every rank stopped after the same update", file: file, line: line)
        let resumed = try resume(Self.args(steps: steps) + ["--out", out, "--resume", "latest"])
        XCTAssertEqual(resumed.status, 0, resumed.output, file: file, line: line)
        XCTAssertTrue(
            resumed.output.contains("resumed from \(Checkpoint.dir(out, step: step)) at step \(step)"), resumed.output,
            file: file, line: line)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: out + "/adapter.safetensors")),
            try Data(contentsOf: URL(fileURLWithPath: reference + "/adapter.safetensors")), "bit-identical adapter",
            file: file, line: line)
        XCTAssertEqual(try losses(out), try losses(reference), "the same loss log", file: file, line: line)
    }

    func testSIGTERMToLaunchMpirunStopsEveryRankWithACheckpoint() throws {
        let reference = try Self.mpiReference.get()
        let out = Self.tmp()
        let job = try BackgroundLaunch.mpirun(4, Self.args(steps: Self.mpiSteps) + ["--out", out])
        // launch/mpirun passes it on to every rank as SIGUSR1.
        let r = try stopWithSIGTERM(job, out: out, "launch/mpirun -n 4")
        try checkStoppedAndResumed(
            r, out: out, steps: Self.mpiSteps, status: 143, signal: "SIGUSR1", reference: reference
        ) { try Launcher.mpirun(4, $0, timeout: 300) }
    }

    func testSIGTERMToMpirunItselfStopsEveryRankWithACheckpoint() throws {
        let reference = try Self.mpiReference.get()
        let out = Self.tmp()
        // Told to end the job, mpirun sends its ranks SIGCONT, then SIGTERM and then SIGKILL, each
        // odls_base_sigkill_timeout seconds (1 by default) after the one before: the ranks have
        // that long to finish their step and write the checkpoint.
        let job = try BackgroundLaunch.mpirun(
            4, Self.args(steps: Self.mpiSteps) + ["--out", out], env: ["OMPI_MCA_odls_base_sigkill_timeout": "3"])
        let r = try stopWithSIGTERM(job, out: out, "mpirun (-n 4)") { launcher in
            let mpirun = Launcher.descendants(of: launcher).first {
                ((try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8)) ?? "").hasPrefix("mpirun")
            }
            guard let mpirun else { throw CommError.invalid("no mpirun process below launch/mpirun") }
            return mpirun
        }
        // Open MPI ends a job it was told to end with status 1.
        try checkStoppedAndResumed(
            r, out: out, steps: Self.mpiSteps, status: 1, signal: "SIGTERM", reference: reference
        ) { try Launcher.mpirun(4, $0, timeout: 300) }
    }

    func testSIGTERMStopsInProcessRanksWithACheckpoint() throws {
        let reference = try Self.inProcessReference.get()
        let out = Self.tmp()
        let job = try BackgroundLaunch(
            [Launcher.binary] + Self.args(steps: Self.inProcessSteps) + ["--out", out, "--local-ranks", "4"])
        let r = try stopWithSIGTERM(job, out: out, "4 in-process ranks")
        try checkStoppedAndResumed(
            r, out: out, steps: Self.inProcessSteps, status: 143, signal: "SIGTERM", reference: reference
        ) {
            try Launcher.lora($0 + ["--local-ranks", "4"], timeout: 300)
        }
    }
}

/// cluster/slurm.sbatch asks Slurm for SIGTERM ahead of the time limit, and after a stop with a
/// checkpoint (exit 143) submits a job that continues the same run directory with --resume latest.
/// Run with stand-ins for srun and sbatch that record how they were called.
final class SlurmScriptTests: XCTestCase {
    func testStopAheadOfTheLimitResubmitsAndTheNextJobResumes() throws {
        let script = Launcher.root.appendingPathComponent("cluster/slurm.sbatch").path
        let text = try String(contentsOfFile: script, encoding: .utf8)
        XCTAssertTrue(text.contains("\n#SBATCH --signal=TERM@120\n"), "SIGTERM two minutes before the time limit")
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("slurm-\(UUID().uuidString)").path
        let bin = d + "/bin"
        let out = d + "/run"
        let log = d + "/calls"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        for (tool, body) in [
            ("srun", "echo \"srun $*\" >> \"$FAKE_LOG\"; exit \"$FAKE_STATUS\""),
            ("sbatch", "echo \"sbatch OUT=$OUT $*\" >> \"$FAKE_LOG\"")
        ] {
            try Data("#!/bin/sh\n\(body)\n".utf8).write(to: URL(fileURLWithPath: bin + "/" + tool))
            chmod(bin + "/" + tool, 0o755)
        }
        func submit(status: Int, resubmit: Bool = true) throws -> (Int32, [String]) {
            try? FileManager.default.removeItem(atPath: log)
            let env = [
                "PATH=\(bin):" + (ProcessInfo.processInfo.environment["PATH"] ?? ""), "FAKE_LOG=\(log)",
                "FAKE_STATUS=\(status)",
                "SLURM_SUBMIT_DIR=\(Launcher.root.path)", "SLURM_JOB_ID=77", "SLURM_NTASKS_PER_NODE=4",
                "SLURM_CPUS_PER_TASK=1",
                "OUT=\(out)", "RESUBMIT=\(resubmit ? 1 : 0)"
            ]
            let r = try Launcher.run(["env"] + env + ["bash", script, "--steps", "240"], timeout: 60)
            let calls = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map(
                String.init)
            return (r.status, calls)
        }
        let lora = Launcher.root.appendingPathComponent(".build/release/lora-dist").path
        // First job: no checkpoint yet; stopped by the signal (143): a job that continues is submitted.
        var (status, calls) = try submit(status: 143)
        XCTAssertEqual(status, 143)
        XCTAssertEqual(
            calls,
            [
                "srun --mpi=pmix --cpu-bind=cores \(lora) train --tp 4 --out \(out) --save-every 50 --steps 240",
                "sbatch OUT=\(out) --export=ALL,OUT=\(out) \(script) --steps 240"
            ])
        // The next job finds the checkpoint and resumes; it ends normally: nothing more is submitted.
        try FileManager.default.createDirectory(
            atPath: out + "/checkpoints/step-00000120", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: out + "/checkpoints/step-00000120/MANIFEST", contents: Data("{}".utf8))
        (status, calls) = try submit(status: 0)
        XCTAssertEqual(status, 0)
        XCTAssertEqual(
            calls,
            [
                """
                srun --mpi=pmix --cpu-bind=cores \(lora) train --tp 4 --out \(out) --save-every 50 --resume latest \
                --steps 240
                """
            ])
        // A failure is not resubmitted, nor is a stop with RESUBMIT=0.
        (status, calls) = try submit(status: 1)
        XCTAssertEqual(status, 1)
        XCTAssertEqual(calls.count, 1)
        (status, calls) = try submit(status: 143, resubmit: false)
        XCTAssertEqual(status, 143)
        XCTAssertEqual(calls.count, 1)
    }
}
