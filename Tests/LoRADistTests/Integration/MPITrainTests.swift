import LoRADist
import XCTest

/// Training under real mpirun: TP=4 and a 2×2 grid learn the same as one rank, the replicas stay
/// bit-identical, the ledger shows one gradient AllReduce of 4·|A∪B| bytes per step, resume is
/// bit-identical, and faults end the job promptly with their cause while the newest checkpoint
/// stays loadable.
final class MPITrainTests: XCTestCase {
    static let small = [
        "--steps", "6", "--batch", "4", "--seq", "168", "--eval-examples", "2", "--valid-limit", "8",
        "--log-every", "1", "--lr", "5e-3", "--warmup", "2"
    ]

    func tmp() -> String { makeTempDir("mpitrain") }

    func summary(_ out: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/summary.json")))
            as! [String: Any]
    }

    func losses(_ out: String) throws -> [Double] {
        try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map {
            ((try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any])["loss"] as! NSNumber).doubleValue
        }
    }

    /// `train` with `args` on `n` in-process ranks (the twin) and under mpirun -n `n` (the real
    /// one): their output directories, and the real run's result.
    func twinAndReal(_ n: Int, _ args: [String]) throws -> (twin: String, real: String, result: Launcher.Result) {
        let twin = tmp()
        let real = tmp()
        let a = try Launcher.lora(
            ["train"] + Self.small + args + ["--local-ranks", String(n), "--out", twin], timeout: 300)
        XCTAssertEqual(a.status, 0, a.output)
        let b = try Launcher.mpirun(n, ["train"] + Self.small + args + ["--out", real], timeout: 300)
        XCTAssertEqual(b.status, 0, b.output)
        return (twin, real, b)
    }

    func testTP4AndTwoByTwoUnderMpirunMatchOneRank() throws {
        let one = tmp()
        let r1 = try Launcher.lora(["train"] + Self.small + ["--out", one], timeout: 300)
        XCTAssertEqual(r1.status, 0, r1.output)
        let ref = try losses(one)
        XCTAssertEqual(ref.count, 6)
        for extra in [[String](), ["--tp", "2"]] {
            let out = tmp()
            let r = try Launcher.mpirun(4, ["train"] + Self.small + ["--out", out] + extra, timeout: 300)
            XCTAssertEqual(r.status, 0, r.output)
            XCTAssertTrue(r.output.contains("grad-sync"), "the collectives table is printed\n\(r.output)")
            let s = try summary(out)
            XCTAssertEqual(s["world"] as? Int, 4)
            XCTAssertEqual(s["tp"] as? Int, extra.isEmpty ? 4 : 2)
            XCTAssertEqual(s["dp"] as? Int, extra.isEmpty ? 1 : 2)
            let trainable = s["trainable_params"] as! Int
            XCTAssertEqual(s["grad_sync_bytes_per_step"] as? Int, 4 * trainable, "one AllReduce of every A/B gradient")
            XCTAssertEqual(s["full_ft_grad_bytes_per_step"] as? Int, 4 * (s["total_params"] as! Int - trainable))
            XCTAssertNotNil(s["exact_match_after"])
            let per = s["collectives_per_step"] as! [String: [String: Double]]
            XCTAssertEqual(per["grad-sync"]?["AllReduce.count"], 1)
            XCTAssertEqual(per["grad-sync"]?["AllReduce.bytes"], Double(4 * trainable))
            // tiny has 4 blocks: forward 1 + 2·4 + 2 AllReduces, backward 2·4 (per micro-batch; one here).
            XCTAssertEqual(per["forward"]?["AllReduce.count"], 11)
            XCTAssertEqual(per["backward"]?["AllReduce.count"], 8)
            let fps = s["replica_fingerprints"] as! [String]
            XCTAssertEqual(fps.count, 4)
            XCTAssertEqual(Set(fps).count, 1, "A and B must be bit-identical on every rank: \(fps)")
            for (a, b) in zip(try losses(out), ref) {
                XCTAssertEqual(a, b, accuracy: 1e-4 * (1 + abs(b)), "tp \(extra)")
            }
        }
    }

    /// bf16 under real mpirun equals the same grid of in-process ranks: same losses every step,
    /// the same adapter on every rank (the in-process twin is the single-process test mode).
    func testBF16UnderMpirunMatchesItsInProcessTwin() throws {
        for (n, tp) in [(2, 2), (4, 2)] {
            let (twin, real, _) = try twinAndReal(n, ["--precision", "bf16", "--tp", String(tp)])
            let la = try losses(twin)
            let lb = try losses(real)
            XCTAssertEqual(la.count, 6)
            // Step 1's loss depends only on the forward (TP sums of two ranks, the same in any
            // order); later steps follow updates whose DP sums MPI and the in-process backend may
            // order differently, and bf16 rounding of the inputs can carry such a last-bit change
            // into a larger one, so they get a bf16 tolerance.
            XCTAssertEqual(la.first!, lb.first!, accuracy: 1e-6 * (1 + abs(la.first!)), "bf16 -n \(n) tp \(tp), step 1")
            for (x, y) in zip(la, lb) { XCTAssertEqual(x, y, accuracy: 1e-2 * (1 + abs(x)), "bf16 -n \(n) tp \(tp)") }
            let sa = try summary(twin)
            let sb = try summary(real)
            XCTAssertEqual(sa["precision"] as? String, "bf16")
            XCTAssertEqual(sb["precision"] as? String, "bf16")
            XCTAssertEqual(Set(sb["replica_fingerprints"] as! [String]).count, 1, "A and B bit-identical on every rank")
            XCTAssertEqual(sa["base_bytes_per_rank"] as? Int, sb["base_bytes_per_rank"] as? Int)
        }
    }

    /// BitFit under real mpirun equals its in-process twin, at TP 2 and at DP 2 (where the biases'
    /// gradients, 4 bytes each, are the only ones all-reduced; the saved biases and trained model
    /// files match bit for bit, --save-model at TP 2 too).
    func testBitFitUnderMpirunMatchesItsInProcessTwin() throws {
        for tp in [2, 1] {
            let (twin, real, _) = try twinAndReal(2, ["--method", "bitfit", "--tp", String(tp), "--save-model"])
            let la = try losses(twin)
            let lb = try losses(real)
            XCTAssertEqual(la.count, 6)
            XCTAssertLessThan(la.last!, la.first!)
            for (x, y) in zip(la, lb) { XCTAssertEqual(x, y, accuracy: 1e-6 * (1 + abs(x)), "bitfit tp \(tp)") }
            let s = try summary(real)
            XCTAssertEqual(s["method"] as? String, "bitfit")
            let trainable = s["trainable_params"] as! Int
            XCTAssertEqual(trainable, 4 * 11 * 128 + 128, "every bias of the 4-block, d-128 built-in base")
            XCTAssertEqual(
                s["grad_sync_bytes_per_step"] as? Int, tp == 1 ? 4 * trainable : 0,
                "DP 2 sums whole shards; TP 2 sums nothing")
            // At either degree: the biases and the whole model, gathered from the shards.
            for file in ["/adapter.safetensors", "/model/model.safetensors"] {
                XCTAssertEqual(
                    try Data(contentsOf: URL(fileURLWithPath: twin + file)),
                    try Data(contentsOf: URL(fileURLWithPath: real + file)), "trained \(file) bit for bit (tp \(tp))")
            }
        }
    }

    /// `--recompute blocks` under real mpirun at TP 2 equals its in-process twin and the run that
    /// keeps every block's activations: the same losses and adapter bit for bit (sums of two
    /// ranks are the same in either order); the summary names the setting and counts the
    /// recomputed blocks' AllReduces (3 of the built-in base's 4 blocks, attention and MLP each).
    func testRecomputeUnderMpirunMatchesItsInProcessTwin() throws {
        let grid = ["--tp", "2"]
        let twin = tmp()
        let real = tmp()
        let kept = tmp()
        let a = try Launcher.lora(
            ["train"] + Self.small + grid + ["--recompute", "blocks", "--local-ranks", "2", "--out", twin],
            timeout: 300)
        XCTAssertEqual(a.status, 0, a.output)
        let b = try Launcher.mpirun(
            2, ["train"] + Self.small + grid + ["--recompute", "blocks", "--out", real], timeout: 300)
        XCTAssertEqual(b.status, 0, b.output)
        XCTAssertTrue(b.output.contains("--recompute blocks"), b.output)
        let c = try Launcher.mpirun(2, ["train"] + Self.small + grid + ["--out", kept], timeout: 300)
        XCTAssertEqual(c.status, 0, c.output)
        XCTAssertEqual(try losses(twin).count, 6)
        XCTAssertEqual(try losses(twin), try losses(real))
        XCTAssertEqual(try losses(kept), try losses(real))
        let adapter = { (out: String) in try Data(contentsOf: URL(fileURLWithPath: out + "/adapter.safetensors")) }
        XCTAssertEqual(try adapter(twin), try adapter(real), "the twin's adapter bit for bit")
        XCTAssertEqual(try adapter(kept), try adapter(real), "recompute changes no number")
        for (out, setting) in [(twin, "blocks"), (real, "blocks"), (kept, "none")] {
            let s = try summary(out)
            XCTAssertEqual(s["recompute"] as? String, setting)
            let per = s["collectives_per_step"] as! [String: [String: Double]]
            XCTAssertEqual(per["recompute"]?["AllReduce.count"], setting == "blocks" ? 6 : nil, out)
            XCTAssertEqual(per["forward"]?["AllReduce.count"], 11)
            XCTAssertEqual(per["backward"]?["AllReduce.count"], 8)
        }
        let shrunk = try summary(real)["activation_bytes_per_rank"] as! Int
        XCTAssertLessThan(shrunk, try summary(kept)["activation_bytes_per_rank"] as! Int)
    }

    /// Packed micro-batches (the default) under real mpirun equal their in-process twin at TP 2
    /// (-n 2) and on a 2 × 2 grid (-n 4, whose replicas pack micro-batches of different sizes):
    /// the same losses every step, the same tokens computed, no padding; `--packing off` computes
    /// padding on the same examples.
    func testPackingUnderMpirunMatchesItsInProcessTwin() throws {
        for (n, tp) in [(2, 2), (4, 2)] {
            let (twin, real, b) = try twinAndReal(n, ["--tp", String(tp)])
            let la = try losses(twin)
            let lb = try losses(real)
            XCTAssertEqual(la.count, 6)
            XCTAssertLessThan(la.last!, la.first!)
            for (x, y) in zip(la, lb) { XCTAssertEqual(x, y, accuracy: 1e-6 * (1 + abs(x)), "packed -n \(n) tp \(tp)") }
            let sa = try summary(twin)
            let sb = try summary(real)
            XCTAssertEqual(sb["packing"] as? Bool, true)
            XCTAssertEqual(sb["padding_fraction"] as? Double, 0)
            let computed = (sb["tokens_computed_per_step"] as! NSNumber).doubleValue
            XCTAssertEqual(computed, (sa["tokens_computed_per_step"] as! NSNumber).doubleValue)
            XCTAssertLessThan(computed, 4 * 168, "the built-in task's examples are shorter than --seq")
            XCTAssertEqual(Set(sb["replica_fingerprints"] as! [String]).count, 1, "A and B bit-identical on every rank")
            XCTAssertTrue(b.output.contains("0.0% padding"), b.output)
            // Seconds per step × real tokens per second = the real tokens of a step (all computed:
            // no padding), fewer than sequences × seq.
            let sps = (sb["seconds_per_step"] as! NSNumber).doubleValue
            let tps = (sb["tokens_per_second"] as! NSNumber).doubleValue
            XCTAssertEqual(sps * tps, computed, accuracy: 1e-6 * computed)
            XCTAssertLessThan(sps, Double(sb["tokens_per_step"] as! Int) / tps)
        }
        let off = tmp()
        let r = try Launcher.mpirun(2, ["train"] + Self.small + ["--packing", "off", "--out", off], timeout: 300)
        XCTAssertEqual(r.status, 0, r.output)
        let s = try summary(off)
        XCTAssertEqual(s["packing"] as? Bool, false)
        XCTAssertEqual((s["tokens_computed_per_step"] as! NSNumber).doubleValue, 4 * 168)
        XCTAssertGreaterThan(s["padding_fraction"] as! Double, 0.2)
        let real = 4 * 168 * (1 - (s["padding_fraction"] as! Double))
        let sps = (s["seconds_per_step"] as! NSNumber).doubleValue
        XCTAssertEqual(sps * (s["tokens_per_second"] as! NSNumber).doubleValue, real, accuracy: 1e-6 * real)
    }

    func testResumeUnderMpirunIsBitIdentical() throws {
        let a = tmp()
        let b = tmp()
        let ck = ["--save-every", "2"]
        XCTAssertEqual(try Launcher.mpirun(4, ["train"] + Self.small + ck + ["--out", a], timeout: 300).status, 0)
        let killed = try Launcher.mpirun(
            4, ["train"] + Self.small + ck + ["--out", b, "--inject-exit-at", "3:2"], timeout: 300)
        XCTAssertFalse(killed.timedOut, "the job ended by itself, it was not killed by the test\n\(killed.output)")
        XCTAssertEqual(killed.status, 3, "rank 2's exit status\n\(killed.output)")
        XCTAssertLessThan(killed.seconds, 60)
        let resumed = try Launcher.mpirun(
            4, ["train"] + Self.small + ck + ["--out", b, "--resume", "latest"], timeout: 300)
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertTrue(resumed.output.contains("resumed from"), resumed.output)
        let fa = try Data(contentsOf: URL(fileURLWithPath: a + "/adapter.safetensors"))
        let fb = try Data(contentsOf: URL(fileURLWithPath: b + "/adapter.safetensors"))
        XCTAssertEqual(fa, fb, "adapters must be byte-identical")
        XCTAssertEqual(try losses(a), try losses(b))
    }

    static let faultArgs = ["train"] + small + ["--steps", "16", "--save-every", "2", "--eval-examples", "0"]

    /// The uninterrupted run every recovery below must end with, bit for bit.
    static let faultReference: Swift.Result<Data, Error> = Swift.Result {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("mpitrain-ref-\(UUID().uuidString)")
            .path
        let r = try Launcher.mpirun(4, faultArgs + ["--out", out], timeout: 300)
        guard r.status == 0 else { throw CommError.invalid("reference run failed:\n\(r.output)") }
        return try Data(contentsOf: URL(fileURLWithPath: out + "/adapter.safetensors"))
    }

    /// Runs a faulty training, checks it ends in time with its message, then resumes from the newest
    /// checkpoint and compares the adapter with an uninterrupted run's, bit for bit.
    func checkFault(_ extra: [String], message: String?, kill: Bool = false) throws {
        let out = tmp()
        let args = Self.faultArgs + ["--out", out] + extra
        let r: Launcher.Result
        if kill {
            // After the first complete checkpoint (its MANIFEST is written last).
            r = try Launcher.mpirunKillingOneRank(
                4, args, afterFile: out + "/checkpoints/step-00000002/MANIFEST", timeout: 120)
            XCTAssertTrue(r.output.contains("exited on signal 9 (Killed)"), "a rank was killed\n\(r.output)")
        } else {
            r = try Launcher.mpirun(4, args, timeout: 120)
        }
        XCTAssertFalse(r.timedOut, "mpirun hung\n\(r.output)")
        XCTAssertNotEqual(r.status, 0, r.output)
        XCTAssertLessThan(r.seconds, 90)
        if let message { XCTAssertTrue(r.output.contains(message), "expected \"\(message)\" in\n\(r.output)") }
        let resumed = try Launcher.mpirun(4, Self.faultArgs + ["--out", out, "--resume", "latest"], timeout: 300)
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: out + "/adapter.safetensors")), try Self.faultReference.get(),
            "the recovered run ends with the uninterrupted run's adapter")
    }

    func testRankRaisingAnErrorEndsTheJob() throws {
        try checkFault(["--inject-fail-at", "3:1"], message: "rank 1: injected failure at step 3")
    }
    func testNaNGradientOnOneRankEndsTheJob() throws {
        try checkFault(["--inject-nan-at", "3:2"], message: "non-finite gradient")
    }
    func testSIGKILLedRankEndsTheJobWithinSeconds() throws { try checkFault([], message: nil, kill: true) }
}
