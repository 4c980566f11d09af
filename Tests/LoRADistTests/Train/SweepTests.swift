import XCTest

@testable import LoRADist

/// `lora-dist sweep`: each row of sweep.csv is the run `train` makes with the same options (held-out
/// loss bit for bit); sweep.md's mean ± spread are the CSV rows' over seeds; a sweep started again
/// runs only what the CSV lacks; the fixed-budget plan trains the same parameter count everywhere.
final class SweepTests: XCTestCase {
    static let cfg = ResumeTests.cfg

    func tmp() -> String { makeTempDir("sweep") }

    /// The options `train` would get, built by hand (not from the sweep): ResumeTests' small run
    /// without checkpoints, with a held-out evaluation.
    static func trainOptions(out: String, targets: [LoRATarget], rank: Int, seed: UInt64) -> RunOptions {
        var o = ResumeTests.options(out: out)
        o.saveEvery = 0
        o.train.steps = 3
        o.train.lora = LoRAConfig(rank: rank, alpha: 16, targets: targets)
        o.train.seed = seed
        o.evalExamples = 2
        return o
    }

    func runSweep(_ s: Sweep) throws -> [SweepRow] {
        try InProcessCommunicator.run(ranks: 1) { comm in
            try s.run(world: RecordingCommunicator(comm), say: { _ in }).rows
        }[0]
    }

    func testTinySweepRowsEqualSeparateTrainRunsAndTheTableTheirMeans() throws {
        let out = tmp()
        let configs = SweepPlan.rank(ranks: [1, 2], targetSets: [[.q, .v]])
        let template = Self.trainOptions(out: "unused", targets: [.mlpIn], rank: 5, seed: 77)
        let sweep = Sweep(mode: .rank, configs: configs, seeds: [1, 2], template: template, out: out)
        let rows = try runSweep(sweep)
        XCTAssertEqual(rows.count, 4)
        XCTAssertEqual(SweepRow.read(sweep.csvPath), rows, "the CSV reads back as the rows, bit for bit")
        XCTAssertEqual(
            try String(contentsOfFile: sweep.csvPath, encoding: .utf8).split(separator: "\n").first.map(String.init),
            SweepRow.header)

        for row in rows {
            let alone = tmp()
            let targets = row.targets.split(separator: ",").map { LoRATarget(rawValue: String($0))! }
            let o = Self.trainOptions(out: alone, targets: targets, rank: row.rank, seed: row.seed)
            let s = try InProcessCommunicator.run(ranks: 1) { comm in
                try TrainRun(world: RecordingCommunicator(comm), options: o).run()
            }[0]
            XCTAssertEqual(row.heldOutLoss.bitPattern, s.evalLossAfter!.bitPattern, "held-out loss of \(row.csvLine)")
            XCTAssertEqual(row.finalTrainLoss.bitPattern, s.trainLossFinal!.bitPattern)
            XCTAssertEqual(row.exactMatch, s.exactMatchAfter)
            XCTAssertEqual(row.bleu, s.bleuAfter)
            XCTAssertEqual(
                row.trainableParams, LoRAConfig(rank: row.rank, targets: targets).parameterCount(for: Self.cfg))
        }
        XCTAssertNotEqual(rows[0].heldOutLoss, rows[1].heldOutLoss, "seeds give different runs")

        // sweep.md: mean ± sample standard deviation over the seeds of each setting, from the CSV.
        let paths = try SweepReport.write(SweepRow.read(sweep.csvPath), title: "t", to: out)
        let md = try String(contentsOfFile: paths[0], encoding: .utf8)
        for rank in [1, 2] {
            let v = rows.filter { $0.rank == rank }.map(\.heldOutLoss)
            XCTAssertEqual(v.count, 2)
            let mean = (v[0] + v[1]) / 2
            let sd = (((v[0] - mean) * (v[0] - mean) + (v[1] - mean) * (v[1] - mean)) / 1).squareRoot()
            let params = rows.first { $0.rank == rank }!.trainableParams
            XCTAssertTrue(
                md.contains("| rank | q,v | \(rank) | \(params) | 2 | \(fixed(mean, 4)) ± \(fixed(sd, 4)) |"), md)
        }
        let png = try Data(contentsOf: URL(fileURLWithPath: paths[1]))
        XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])

        // Started again: nothing reruns. With the last row gone: that run alone, to the same bits.
        XCTAssertEqual(try runSweep(sweep), rows)
        XCTAssertEqual(SweepRow.read(sweep.csvPath).count, 4)
        let lines = try String(contentsOfFile: sweep.csvPath, encoding: .utf8).split(separator: "\n")
        try (lines.dropLast().joined(separator: "\n") + "\n").write(
            toFile: sweep.csvPath, atomically: true, encoding: .utf8)
        let again = try runSweep(sweep)
        XCTAssertEqual(again.map(\.heldOutLoss.bitPattern), rows.map(\.heldOutLoss.bitPattern))
        XCTAssertEqual(SweepRow.read(sweep.csvPath).count, 4)
        // Other options over the same OUT are refused: their rows would not compare.
        var other = sweep
        other.template.train.lr *= 2
        XCTAssertThrowsError(try runSweep(other)) { XCTAssertTrue("\($0)".contains("other options"), "\($0)") }
        XCTAssertEqual(SweepRow.read(sweep.csvPath).count, 4)
    }

    /// A run stopped by a signal (it writes a checkpoint and returns early) is not a result: no row,
    /// and the sweep stops; the same sweep later runs it in full.
    func testASweepStoppedByASignalRecordsNoRowAndContinuesLater() throws {
        let sweep = Sweep(
            mode: .targets, configs: [SweepConfig(targets: [.q], rank: 1)], seeds: [1],
            template: Self.trainOptions(out: "unused", targets: [.q], rank: 1, seed: 1), out: tmp())
        StopSignal.flag = SIGTERM
        defer { StopSignal.flag = 0 }
        let stopped = try InProcessCommunicator.run(ranks: 1) { comm in
            try sweep.run(world: RecordingCommunicator(comm), say: { _ in })
        }[0]
        XCTAssertEqual(stopped.stoppedBy, SIGTERM)
        XCTAssertEqual(stopped.rows, [])
        XCTAssertEqual(SweepRow.read(sweep.csvPath), [])
        // The stopped run's summary says no step ran (it used to fail encoding a NaN first loss).
        let summary =
            try JSONSerialization.jsonObject(
                with: Data(
                    contentsOf: URL(fileURLWithPath: sweep.runOptions(sweep.configs[0], seed: 1).out + "/summary.json"))
            ) as! [String: Any]
        XCTAssertEqual(summary["interrupted"] as? Bool, true)
        XCTAssertNil(summary["train_loss_first"])
        StopSignal.flag = 0
        let rows = try runSweep(sweep)
        XCTAssertEqual(rows.count, 1)
        XCTAssertTrue(rows[0].heldOutLoss.isFinite)
        XCTAssertEqual(SweepRow.read(sweep.csvPath), rows)
    }

    func testBudgetPlanSpreadsOneParameterCountOverTheTargetSets() throws {
        let plan = try SweepPlan.budget(rank: 8, targetSets: SweepPlan.budgetTargetSets)
        XCTAssertEqual(plan.map(\.rank), [8, 8, 8, 8, 4, 4, 2])
        XCTAssertEqual(plan.map(\.targetsLabel), ["q", "k", "v", "o", "q,k", "q,v", "q,k,v,o"])
        let counts = Set(plan.map { LoRAConfig(rank: $0.rank, targets: $0.targets).parameterCount(for: Self.cfg) })
        XCTAssertEqual(counts, [Self.cfg.nLayer * 8 * (32 + 32)], "one budget: r 8 on one d × d matrix per layer")
        XCTAssertThrowsError(try SweepPlan.budget(rank: 3, targetSets: [[.q, .k]]))
        XCTAssertEqual(try SweepPlan.parseTargetSets("q;q,v"), [[.q], [.q, .v]])
        XCTAssertThrowsError(try SweepPlan.parseTargetSets("q;x"))
    }

    func testRowsReadBackFromCSVBitForBit() {
        let r = SweepRow(
            mode: "targets", targets: "q,k,v,o", rank: 2, seed: 7, trainableParams: 4096, finalTrainLoss: 0.1 + 0.2,
            heldOutLoss: 1 / 3, exactMatch: 0.125, bleu: .nan, seconds: 12.5)
        let back = SweepRow(csv: r.csvLine)!
        XCTAssertEqual(back.heldOutLoss.bitPattern, r.heldOutLoss.bitPattern)
        XCTAssertEqual(back.finalTrainLoss.bitPattern, r.finalTrainLoss.bitPattern)
        XCTAssertTrue(back.bleu.isNaN)
        XCTAssertEqual(back.targets, "q,k,v,o")
        XCTAssertNil(SweepRow(csv: SweepRow.header))
    }
}
