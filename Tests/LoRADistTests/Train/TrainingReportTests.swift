import XCTest

@testable import LoRADist

/// The model a training run builds (`train`, `bench train`) and the report both print: the model
/// is the one built by hand, and every figure of the report is what the TP layout implies.
final class TrainingReportTests: XCTestCase {
    static let cfg = GridTraining.cfg

    func testATrainingRunsModelIsTheBaseLoadedAndLoRAInitialisedFromTheSeed() throws {
        var o = GridTraining.options()
        o.seed = 7
        let same = try InProcessCommunicator.run(ranks: 2) { raw -> Bool in
            let comm = RecordingCommunicator(raw)
            let grid = try ProcessGrid(world: comm, tp: 2)
            let trainer = try Trainer(
                grid: grid, ledger: comm.ledger, config: Self.cfg,
                base: try RandomInitSource(config: Self.cfg, seed: 3),
                options: o, adapters: nil)
            let byHand = try Fixtures.randomModel(Self.cfg, grid.tp, trainable: .lora(o.lora), baseSeed: 3)
            byHand.lora!.initialize(seed: 7)
            let m = trainer.model
            return Array(m.base.arena.buffer) == Array(byHand.base.arena.buffer)
                && Array(m.lora!.arena.buffer) == Array(byHand.lora!.arena.buffer)
                && trainer.trainableCount == o.lora.parameterCount(for: Self.cfg)
        }
        XCTAssertEqual(same, [true, true])
    }

    func testASequenceBeyondTheContextIsRefusedBeforeTheModelIsBuilt() throws {
        var o = GridTraining.options()
        o.seq = Self.cfg.nPositions + 1
        XCTAssertThrowsError(
            try InProcessCommunicator.run(ranks: 1) { raw in
                let comm = RecordingCommunicator(raw)
                _ = try Trainer(
                    grid: try ProcessGrid(world: comm, tp: 1), ledger: comm.ledger, config: Self.cfg,
                    base: try RandomInitSource(config: Self.cfg, seed: 1), options: o, adapters: nil)
            }
        ) { XCTAssertTrue("\($0)".contains("--seq 17 exceeds the model's context 16"), "\($0)") }
    }

    /// `bench train` writes the task file on rank 0 alone: when that fails, every rank ends with its
    /// message at once (an agreement), instead of the others waiting in the next collective.
    func testABenchTaskFileRank0CannotWriteEndsEveryRankWithItsMessage() throws {
        let blocker = makeTempDir("bench-write") + "/not-a-directory"
        XCTAssertTrue(FileManager.default.createFile(atPath: blocker, contents: Data()))
        let saved = ProcessInfo.processInfo.environment["TMPDIR"]
        setenv("TMPDIR", blocker, 1)
        defer { if let saved { setenv("TMPDIR", saved, 1) } else { unsetenv("TMPDIR") } }
        var o = GridTraining.options()
        o.lora = LoRAConfig(rank: 2, alpha: 4, targets: [.q, .v])
        let t0 = Date()
        let messages = try InProcessCommunicator.run(ranks: 2) { raw -> String in
            var b = TrainBenchOptions(config: Self.cfg, options: o, tp: 2)
            b.steps = 1
            do {
                _ = try TrainBench.run(world: RecordingCommunicator(raw), options: b, name: "tiny")
                return "no error"
            } catch { return "\(error)" }
        }
        for m in messages { XCTAssertTrue(m.contains("not-a-directory"), m) }
        XCTAssertLessThan(Date().timeIntervalSince(t0), 30, "no rank waited for a collective deadline")
    }

    func testEveryFigureIsWhatTheLayoutImpliesAndMemoryIsOneFigurePerProcess() throws {
        var o = GridTraining.options()
        o.lora = LoRAConfig(rank: 2, alpha: 4, targets: [.q, .v])
        let L = Self.cfg.nLayer
        let d = Self.cfg.nEmbd
        let steps = 3
        let passes = o.accumulation(dp: 1)
        let n = o.microBatch * o.seq
        let evalEntries = [
            LedgerEntry(
                op: .allReduce, group: "dp", elements: 2, bytes: 16, phase: .eval, site: "eval-loss", seconds: 0),
            LedgerEntry(
                op: .allGather, group: "dp", elements: 25, bytes: 100, phase: .eval, site: "eval-gather", seconds: 0)
        ]
        let results = try InProcessCommunicator.run(ranks: 2) { raw -> (TrainingReport, Int, Int) in
            let comm = RecordingCommunicator(raw)
            let grid = try ProcessGrid(world: comm, tp: 2)
            let trainer = try Trainer(
                grid: grid, ledger: comm.ledger, config: Self.cfg,
                base: try RandomInitSource(config: Self.cfg, seed: 1),
                options: o, adapters: nil)
            let micro = (0..<passes).map { _ in MicroBatch(batch: o.microBatch, seq: o.seq) }
            comm.ledger.reset()
            for s in 0..<steps {
                GridTraining.fillStep(micro, step: s, options: o, grid: grid)
                _ = try trainer.trainStep(micro, globalTokens: o.globalBatch * (o.seq - 2))
            }
            let before = peakRSSBytes()
            let report = try TrainingReport(
                model: trainer.model, steps: steps, stepEntries: comm.ledger.entries, evalEntries: evalEntries,
                world: comm)
            return (report, before, peakRSSBytes())
        }
        let trainable = o.lora.parameterCount(for: Self.cfg)
        for (r, rssBefore, rssAfter) in results {
            XCTAssertEqual(r.trainableParams, trainable)
            XCTAssertEqual(
                r.totalParams, Self.cfg.parameterCount + trainable, "LoRA adds its A and B to the frozen base")
            XCTAssertEqual(r.gradSyncBytesPerStep, 4 * trainable, "one AllReduce of every A/B gradient")
            // Forward: embedding, attn-out and mlp-out per block, loss-max, loss-sums; backward: head-in-grad,
            // mlp-in-grad per block, attn-in-grad on every block but the lowest (q and v are the lowest trainables).
            XCTAssertEqual(r.activationCollectivesPerStep, passes * ((3 + 2 * L) + (1 + L + L - 1)))
            XCTAssertEqual(r.activationBytesPerStep, passes * ((1 + 4 * L) * 4 * n * d + 4 * n + 12 * n))
            let per = r.collectivesPerStep
            XCTAssertEqual(Set(per.keys), ["forward", "backward", "grad-sync", "eval (whole run)"])
            XCTAssertEqual(per["grad-sync"]?["AllReduce.count"], 1)
            XCTAssertEqual(per["grad-sync"]?["AllReduce.bytes"], Double(4 * trainable))
            XCTAssertEqual(per["forward"]?["AllReduce.count"], Double(passes * (3 + 2 * L)))
            XCTAssertEqual(per["backward"]?["AllReduce.count"], Double(passes * 2 * L))
            XCTAssertEqual(
                per["eval (whole run)"]?["AllReduce.count"], 1, "evaluation is counted over the run, not per step")
            XCTAssertEqual(per["eval (whole run)"]?["AllGather.bytes"], 100)
            XCTAssertEqual(r.collectives.reduce(0) { $0 + $1.count }, steps * (passes * (3 + 4 * L) + 1))
            XCTAssertTrue(r.table.contains("grad-sync") && r.table.contains("attn-out"), r.table)
            // Both ranks are threads of this process: the job's peak is the process's, read between the two readings.
            XCTAssertEqual(r.jobPeakRSSBytes, r.peakRSSBytes)
            XCTAssertGreaterThan(r.peakRSSBytes, 0)
            XCTAssertGreaterThanOrEqual(rssAfter, r.peakRSSBytes)
            XCTAssertGreaterThanOrEqual(r.peakRSSBytes, rssBefore)
        }
    }

    /// Steps of different sizes (packed) give a fractional mean of bytes per step: the table prints
    /// it rounded to the byte (1,001 + 1,002 + 1,004 bytes over 3 steps: 1002.33 → 1002; 5 over 2:
    /// 2.5 → 3), and the count as it is.
    func testTheTablePrintsWholeBytes() {
        func entry(_ bytes: Int, _ site: String) -> LedgerEntry {
            LedgerEntry(
                op: .allReduce, group: "tp", elements: bytes / 4, bytes: bytes, phase: .forward, site: site,
                seconds: 0.001)
        }
        let three = [entry(1001, "attn-out"), entry(1002, "attn-out"), entry(1004, "attn-out")]
        let table = Ledger.table(of: three, per: 3)
        XCTAssertTrue(table.contains(" 1002 "), table)
        XCTAssertFalse(table.contains("1002.33"), table)
        let two = Ledger.table(of: [entry(2, "loss-max"), entry(3, "loss-max")], per: 2)
        XCTAssertTrue(two.contains(" 3 "), two)
        XCTAssertFalse(two.contains("2.5"), two)
    }
}
