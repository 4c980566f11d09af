import Foundation

/// What the step loop leaves for the report.
struct LoopOutcome {
    var firstLoss = Double.nan, lastLoss = Double.nan
    var trainSeconds = 0.0
    /// The signal that stopped the loop at a step boundary (every rank agrees on it), nil if it ran to the end.
    var stoppedBy: Int32?
    var interrupted: Bool { stoppedBy != nil }
    var stepsRun = 1
    /// Tokens of the steps run here that are not padding, and tokens computed (padding included).
    var realTokens = 0, computedTokens = 0
    /// Σ len² of the sequences the steps run here computed (attention's cost).
    var squares = 0
    /// The ledger's entries of the steps (checkpoints and control left out).
    var stepEntries: [LedgerEntry] = []
}

/// The steps from the trainer's current one to the last: one metrics.jsonl line per step (rank
/// 0), progress lines, checkpoints every `--save-every`, and a stop with a checkpoint at the
/// first boundary after a signal. Every write is agreed on by all ranks: one that fails (a full
/// disk) stops every rank with an error naming the file, and the newest complete checkpoint
/// stays as it was. The fault plan's faults happen at their steps.
struct StepLoop {
    let run: TrainRun
    let batcher: Batcher
    let checkpoints: RunCheckpoints
    var options: RunOptions { run.options }
    var world: RecordingCommunicator { run.world }

    /// Runs the steps; `log` holds the lines of metrics.jsonl a resumed run keeps, `t0` when the
    /// steps started (for the ETA).
    func run(log: [String], t0: Double) throws -> LoopOutcome {
        let o = options.train
        let trainer = run.trainer
        let grid = run.grid
        let ledger = world.ledger
        let micro = (0..<o.accumulation(dp: grid.dpDegree)).map { _ in MicroBatch(batch: o.microBatch, seq: o.seq) }
        let metrics = try MetricsLog(run, lines: log)
        defer { metrics.close() }
        var out = LoopOutcome()
        let stepsLedgerStart = ledger.entries.count
        let startStep = trainer.step
        while trainer.step < o.steps {
            if let signal = try agreeOnStop(metrics) {
                try checkpoints.save(batcher)
                out.stoppedBy = signal
                run.say(
                    "interrupted by \(StopSignal.name(signal)): stopped after step \(trainer.step) and wrote "
                        + "\(Checkpoint.dir(options.out, step: trainer.step)); continue with --resume latest")
                break
            }
            try options.faults.afterStopAgreement(step: trainer.step, rank: world.rank)
            let tokens = batcher.next(into: micro, options: o, replica: grid.replica, dp: grid.dpDegree)
            var st = try trainer.trainStep(micro, globalTokens: tokens, faults: options.faults)
            // The global batch's counts (the trainer sees only this replica's micro-batches).
            st.tokens = batcher.stepTokens.real
            st.computedTokens = batcher.stepTokens.computed
            out.realTokens += st.tokens
            out.computedTokens += st.computedTokens
            out.squares += batcher.stepTokens.squares
            out.trainSeconds += st.seconds
            if out.firstLoss.isNaN { out.firstLoss = st.loss }
            out.lastLoss = st.loss
            metrics.append(st)
            if world.rank == 0 && (st.step % options.logEvery == 0 || st.step == o.steps) {
                sayProgress(st, from: startStep, t0: t0)
            }
            if options.saveEvery > 0 && (trainer.step % options.saveEvery == 0 || trainer.step == o.steps) {
                try checkpoints.save(batcher)
            }
        }
        try metrics.checkWritten(known: true)
        out.stepsRun = max(1, trainer.step - startStep)
        out.stepEntries = ledger.entries[stepsLedgerStart...].filter { $0.phase != .checkpoint && $0.phase != .control }
        return out
    }

    /// At the boundary before the trainer's step, every rank agrees on stopping (a signal may
    /// reach only some: the signal if any did), and learns whether rank 0 could write the last
    /// step's line of the log (all stop if it could not).
    func agreeOnStop(_ metrics: MetricsLog) throws -> Int32? {
        try options.faults.beforeStopAgreement(step: run.trainer.step, world: world)
        var stop = [Float(StopSignal.signalNumber), metrics.failed ? 1 : 0]
        if world.size > 1 { try world.ledger.with(.control) { try Collective.max(&stop, over: world, at: .stop) } }
        try metrics.checkWritten(known: stop[1] > 0)
        return stop[0] > 0 ? Int32(stop[0]) : nil
    }

    func sayProgress(_ st: StepStats, from startStep: Int, t0: Double) {
        let steps = options.train.steps
        let eta = (now() - t0) / Double(st.step - startStep) * Double(steps - st.step)
        let padding = StepTokens(real: st.tokens, computed: st.computedTokens).paddingFraction
        run.say(
            "step \(st.step)/\(steps)  loss \(fixed(st.loss, 4))  lr \(String(format: "%.2e", st.lr))  "
                + "\(Int(Double(st.tokens) / st.seconds)) tok/s  \(st.computedTokens) tokens computed, "
                + "\(fixed(100 * padding, 1))% padding  "
                + "ETA \(Int(eta.rounded()))s")
    }
}

/// out/metrics.jsonl, one line per step, written by rank 0. A line that cannot be written (a full
/// disk) is remembered, and every rank learns of it at the next agreement.
final class MetricsLog {
    let run: TrainRun
    private var file: AppendFile?
    private var error: Error?
    var failed: Bool { error != nil }

    /// Starts the log with `lines` (those a resumed run keeps).
    init(_ run: TrainRun, lines: [String]) throws {
        self.run = run
        let world = run.world
        let path = run.options.out + "/metrics.jsonl"
        var file: AppendFile?
        try Collective.agree(over: world, at: .write) {
            guard world.rank == 0 else { return }
            try writeFileAtomically(Data(lines.map { $0 + "\n" }.joined().utf8), to: path)
            file = try AppendFile(path: path)
        }
        self.file = file
    }

    func append(_ st: StepStats) {
        guard error == nil else { return }
        do {
            try file?.append(
                "{\"step\":\(st.step),\"loss\":\(st.loss),\"lr\":\(st.lr),\"grad_norm\":\(st.gradNorm),"
                    + "\"seconds\":\(st.seconds)}\n")
        } catch {
            self.error = error
        }
    }

    /// Every rank learns whether rank 0 could write the log (when the agreement says it could
    /// not, `known`); all stop if it could not.
    func checkWritten(known: Bool) throws {
        guard known else { return }
        let world = run.world
        try world.ledger.with(.control) {
            try RunFiles.resumeHint(out: run.options.out) {
                try Collective.agree(over: world, at: .write) { if let e = error { throw e } }
            }
        }
    }

    func close() { file?.close() }
}
