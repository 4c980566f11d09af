import XCTest

@testable import LoRADist

/// Checkpoints and resume: training N steps in one go and training k steps, failing, and resuming
/// to N give byte-identical adapters and identical loss logs; corrupt checkpoints are refused
/// with their specific message and the previous one is named.
final class ResumeTests: XCTestCase {
    static let cfg = GPTConfig(nLayer: 2, nEmbd: 32, nHead: 4, vocabSize: 257, nPositions: 192)

    func tmp() -> String { makeTempDir("resume") }

    static func options(out: String, method: Method = .lora) -> RunOptions {
        var o = RunOptions(base: .random(Self.cfg, seed: 3), out: out)
        o.train.method = method
        o.train.steps = 6
        o.train.globalBatch = 4
        o.train.microBatch = 2
        o.train.seq = 168
        o.train.lr = 1e-2
        o.train.warmup = 2
        o.train.lora = LoRAConfig(rank: 2, alpha: 4, targets: [.q, .v], dropout: 0.1)
        o.evalExamples = 0
        o.validLimit = 4
        o.saveEvery = 2
        o.quiet = true
        return o
    }

    func run(ranks: Int, _ o: RunOptions) throws {
        _ = try InProcessCommunicator.run(ranks: ranks) { comm in
            _ = try TrainRun(world: RecordingCommunicator(comm), options: o).run()
        }
    }

    func losses(_ out: String) throws -> [String] {
        try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { line in
            let d = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return "\(d["step"]!) \(d["loss"]!) \(d["lr"]!) \(d["grad_norm"]!)"
        }
    }

    func checkResumeIsBitIdentical(
        ranks: Int, method: Method = .lora, edit: (inout RunOptions) -> Void = { _ in }
    ) throws {
        let a = tmp()
        let b = tmp()
        var first = Self.options(out: a, method: method)
        edit(&first)
        try run(ranks: ranks, first)
        var failing = Self.options(out: b, method: method)
        edit(&failing)
        failing.faults.fail = (step: 3, rank: ranks - 1)
        XCTAssertThrowsError(try run(ranks: ranks, failing)) { e in
            XCTAssertTrue("\(e)".contains("injected failure at step 3"), "\(e)")
        }
        XCTAssertEqual(
            Checkpoint.completeCheckpoints(b).map { URL(fileURLWithPath: $0).lastPathComponent }, ["step-00000002"])
        var resumed = Self.options(out: b, method: method)
        edit(&resumed)
        resumed.resume = "latest"
        try run(ranks: ranks, resumed)
        if method == .lora {
            let fa = try Data(contentsOf: URL(fileURLWithPath: a + "/adapter.safetensors"))
            let fb = try Data(contentsOf: URL(fileURLWithPath: b + "/adapter.safetensors"))
            XCTAssertEqual(fa, fb, "adapters must be byte-identical")
        }
        let ca = try Data(contentsOf: URL(fileURLWithPath: Checkpoint.dir(a, step: 6) + "/rank-0.safetensors"))
        let cb = try Data(contentsOf: URL(fileURLWithPath: Checkpoint.dir(b, step: 6) + "/rank-0.safetensors"))
        XCTAssertEqual(ca, cb, "final checkpoints (weights and optimizer moments) must be byte-identical")
        XCTAssertEqual(try losses(a), try losses(b))
        XCTAssertEqual(try losses(a).count, 6)
    }

    func testResumeIsBitIdenticalOnOneRank() throws { try checkResumeIsBitIdentical(ranks: 1) }
    func testResumeIsBitIdenticalOnTP4InProcess() throws { try checkResumeIsBitIdentical(ranks: 4) }
    func testResumeIsBitIdenticalForFullFineTuningOnTP2() throws {
        try checkResumeIsBitIdentical(ranks: 2, method: .full)
    }
    func testResumeIsBitIdenticalForBitFitOnTP2() throws { try checkResumeIsBitIdentical(ranks: 2, method: .bitfit) }
    /// The runs above pack each micro-batch's examples (the default); one example per row resumes
    /// as exactly, and so does packing on a 2 × 2 grid, whose replicas' micro-batches differ in size.
    func testResumeIsBitIdenticalWithPackingOff() throws {
        try checkResumeIsBitIdentical(ranks: 1) { $0.train.packing = false }
    }
    func testResumeIsBitIdenticalPackedOnATwoByTwoGrid() throws {
        try checkResumeIsBitIdentical(ranks: 4) {
            $0.tp = 2
            XCTAssertTrue($0.train.packing)
        }
    }

    func testCorruptCheckpointsAreRefusedWithTheirOwnMessage() throws {
        let out = tmp()
        try run(ranks: 1, Self.options(out: out))
        let dirs = Checkpoint.completeCheckpoints(out)
        XCTAssertEqual(dirs.count, 3)  // steps 2, 4, 6 with --keep 3
        let newest = dirs.last!
        let file = newest + "/rank-0.safetensors"
        let good = try Data(contentsOf: URL(fileURLWithPath: file))
        func expect(_ contains: String, _ line: UInt = #line) {
            var o = Self.options(out: out)
            o.resume = newest
            XCTAssertThrowsError(try run(ranks: 1, o), line: line) { e in
                XCTAssertTrue("\(e)".contains(contains), "\(e)", line: line)
            }
        }
        // A flipped byte in the data: the checksum catches it.
        var flipped = good
        flipped[flipped.count - 5] ^= 0x40
        try flipped.write(to: URL(fileURLWithPath: file))
        expect("fails its checksum")
        // Truncated.
        try good.prefix(good.count / 2).write(to: URL(fileURLWithPath: file))
        expect("is not a valid checkpoint")
        // Not a checkpoint (wrong magic).
        try SafeTensorsFile.write(path: file, tensors: [("params", [1], [0])])
        expect("wrong magic")
        // Another configuration.
        try good.write(to: URL(fileURLWithPath: file))
        var other = Self.options(out: out)
        other.train.lr = 5e-3
        other.resume = newest
        XCTAssertThrowsError(try run(ranks: 1, other)) { e in
            XCTAssertTrue(
                "\(e)".contains(
                    """
                    belongs to another configuration: the checkpoint was written with --lr 0.01, this run has --lr 0.005
                    """
                ), "\(e)")
        }
        // Each option that differs is named with both values, in the order of the command line.
        other.train.lora.rank = 4
        other.train.seed = 7
        XCTAssertThrowsError(try run(ranks: 1, other)) { e in
            XCTAssertTrue(
                "\(e)".contains(
                    """
                    the checkpoint was written with --lora-rank 2, this run has --lora-rank 4; --lr 0.01 vs 0.005; \
                    --seed 1234 vs 7
                    """
                ), "\(e)")
        }
        // A checkpoint written before the options were recorded is still refused, by its fingerprint.
        let f = try SafeTensorsFile(path: file)
        var state = try JSONDecoder().decode(CheckpointState.self, from: Data(f.metadata["state"]!.utf8))
        XCTAssertEqual(state.settings?.first { $0.option == "--lora-rank" }?.value, "2")
        state.settings = nil
        var meta = f.metadata
        meta["state"] = try compactJSON(state)
        XCTAssertFalse(meta["state"]!.contains("settings"))
        try SafeTensorsFile.write(
            path: file,
            tensors: try ["params", "adam.m", "adam.v"].map { ($0, try f.info($0).shape, try f.floats($0)) },
            metadata: meta)
        XCTAssertThrowsError(try run(ranks: 1, other)) { e in
            XCTAssertTrue(
                "\(e)".contains(
                    "it belongs to another configuration or base model (fingerprint \(state.fingerprint), this run "),
                "\(e)")
        }
        // An interrupted write (no MANIFEST) is not "latest"; the previous complete one is used.
        try FileManager.default.removeItem(atPath: newest + "/MANIFEST")
        XCTAssertEqual(try Checkpoint.resolve("latest", out: out), dirs[1])
        XCTAssertThrowsError(try Checkpoint.resolve(newest, out: out)) { e in
            XCTAssertTrue("\(e)".contains("no MANIFEST"), "\(e)")
        }
    }

    func testKeepPrunesToTheNewestCheckpoints() throws {
        let out = tmp()
        var o = Self.options(out: out)
        o.keep = 2
        try run(ranks: 2, o)
        XCTAssertEqual(
            Checkpoint.completeCheckpoints(out).map { URL(fileURLWithPath: $0).lastPathComponent },
            ["step-00000004", "step-00000006"])
        XCTAssertEqual(
            try FileManager.default.contentsOfDirectory(atPath: out + "/checkpoints").sorted(),
            ["step-00000004", "step-00000006"],
            "nothing else is left behind")
        // A resumed run prunes too: it continues from step 6 with --keep 1, and only its own last one stays.
        let more = tmp()
        var first = Self.options(out: more)
        first.faults.fail = (step: 5, rank: 1)
        XCTAssertThrowsError(try run(ranks: 2, first))
        var resumed = Self.options(out: more)
        resumed.keep = 1
        resumed.resume = "latest"
        try run(ranks: 2, resumed)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: more + "/checkpoints"), ["step-00000006"])
    }

    func testNaNGradientStopsEveryRankBeforeTheUpdate() throws {
        let out = tmp()
        var o = Self.options(out: out)
        o.faults.nan = (step: 3, rank: 1)
        XCTAssertThrowsError(try run(ranks: 2, o)) { e in XCTAssertTrue("\(e)".contains("non-finite gradient"), "\(e)")
        }
        // The last good checkpoint (step 2) is intact and loads.
        var r = Self.options(out: out)
        r.resume = "latest"
        r.train.steps = 6
        try run(ranks: 2, r)
    }
}
