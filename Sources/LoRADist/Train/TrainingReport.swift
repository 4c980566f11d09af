import Foundation

/// Peak resident memory of this process (VmHWM), in bytes; 0 where /proc is unavailable.
public func peakRSSBytes() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kb = line.split(separator: " ").compactMap { Int($0) }.first ?? 0
        return kb * 1024
    }
    return 0
}

/// What `train` (summary.json) and `bench train` report about the steps they ran, every figure
/// read from the model and this rank's ledger: parameters, the bytes of the one `grad-sync`
/// AllReduce, the model's activation collectives, the collectives per step by phase and
/// operation, and the peak memory of the job's processes.
public struct TrainingReport: Sendable {
    /// Steps the entries cover (at least 1).
    public var steps: Int
    /// The ledger's entries of those steps (checkpoints and control left out).
    public var stepEntries: [LedgerEntry]
    /// Parameters that train, and the model's total with them (a method that keeps the base
    /// frozen adds its parameters to the base's).
    public var trainableParams: Int, totalParams: Int
    public var gradSyncBytesPerStep: Int
    /// The model's forward and backward collectives (TP regions, the vocabulary-parallel loss; the
    /// recomputed forward's too).
    public var activationCollectivesPerStep: Int, activationBytesPerStep: Int
    /// Per phase, "<op>.count", "<op>.bytes" and "<op>.seconds" per step; with evaluation
    /// entries, "eval (whole run)" holds their counts and bytes over the whole run.
    public var collectivesPerStep: [String: [String: Double]]
    /// The largest rank's peak RSS, and the job's: the sum over its processes (ranks that are
    /// threads of one process share one figure).
    public var peakRSSBytes: Int, jobPeakRSSBytes: Int

    /// Reads the figures; gathers every rank's peak RSS over `world` (a collective: every rank
    /// builds its report at the same point).
    public init(
        model: GPTModel, steps: Int, stepEntries: [LedgerEntry], evalEntries: [LedgerEntry] = [],
        world: RecordingCommunicator
    ) throws {
        self.steps = steps
        self.stepEntries = stepEntries
        trainableParams = model.trainable?.parameterCount ?? 0
        totalParams = model.config.parameterCount + (model.trainable?.method.trainsBase == true ? 0 : trainableParams)
        gradSyncBytesPerStep = stepEntries.filter { $0.phase == .gradSync }.reduce(0) { $0 + $1.bytes } / steps
        let act = stepEntries.filter { $0.phase == .forward || $0.phase == .backward || $0.phase == .recompute }
        activationCollectivesPerStep = act.count / steps
        activationBytesPerStep = act.reduce(0) { $0 + $1.bytes } / steps
        var perStep: [String: [String: Double]] = [:]
        for e in stepEntries {
            perStep[e.phase.rawValue, default: [:]][e.op.rawValue + ".count", default: 0] += 1
            perStep[e.phase.rawValue, default: [:]][e.op.rawValue + ".bytes", default: 0] += Double(e.bytes)
            perStep[e.phase.rawValue, default: [:]][e.op.rawValue + ".seconds", default: 0] += e.seconds
        }
        perStep = perStep.mapValues { $0.mapValues { $0 / Double(steps) } }
        for e in evalEntries {
            perStep["eval (whole run)", default: [:]][e.op.rawValue + ".count", default: 0] += 1
            perStep["eval (whole run)", default: [:]][e.op.rawValue + ".bytes", default: 0] += Double(e.bytes)
        }
        collectivesPerStep = perStep
        // One figure per process: the high-water mark only grows, so its ranks' largest reading is its latest.
        let pidRSS = try world.ledger.with(.control) {
            try Collective.gather([Int64(getpid()), Int64(LoRADist.peakRSSBytes())], over: world, at: .memory)
        }
        var byProcess: [Int64: Int64] = [:]
        for i in stride(from: 0, to: pidRSS.count, by: 2) {
            byProcess[pidRSS[i]] = Swift.max(byProcess[pidRSS[i]] ?? 0, pidRSS[i + 1])
        }
        peakRSSBytes = Int(byProcess.values.max() ?? 0)
        jobPeakRSSBytes = Int(byProcess.values.reduce(0, +))
    }

    /// The step entries' totals per (phase, site, op, group), over all the steps.
    public var collectives: [Ledger.Row] { Ledger.summary(of: stepEntries) }

    /// The step entries as the ledger's table, per step.
    public var table: String { Ledger.table(of: stepEntries, per: Double(steps)) }
}
