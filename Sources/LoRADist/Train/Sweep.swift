import Foundation

/// One LoRA setting of a sweep: the matrices adapted and the rank.
public struct SweepConfig: Hashable, Sendable {
    public var targets: [LoRATarget]
    public var rank: Int
    public init(targets: [LoRATarget], rank: Int) {
        self.targets = LoRATarget.allCases.filter { targets.contains($0) }
        self.rank = rank
    }
    /// "q,v" (the CSV's and the tables' spelling).
    public var targetsLabel: String { targets.map(\.rawValue).joined(separator: ",") }
}

/// What a sweep compares (the paper's Tables 6 and 5).
public enum SweepMode: String, Sendable, CaseIterable {
    /// Every rank × every target set (Table 6: is a small r enough?).
    case rank
    /// One trainable-parameter budget spread over different target sets (Table 5: which matrices?).
    case targets
}

public enum SweepPlan {
    /// Table 5's target sets (each of the attention matrices alone, pairs, all four).
    public static let budgetTargetSets: [[LoRATarget]] = [[.q], [.k], [.v], [.o], [.q, .k], [.q, .v], [.q, .k, .v, .o]]

    public static func rank(ranks: [Int], targetSets: [[LoRATarget]]) -> [SweepConfig] {
        targetSets.flatMap { t in ranks.map { SweepConfig(targets: t, rank: $0) } }
    }

    /// The budget of rank `budget` on one matrix type spread evenly over each target set:
    /// r = budget / |set|, so every setting trains the same number of parameters when the
    /// matrices have equal shapes (q, k, v and o are all d × d).
    public static func budget(rank budget: Int, targetSets: [[LoRATarget]]) throws -> [SweepConfig] {
        try targetSets.map { t in
            guard !t.isEmpty, budget % t.count == 0, budget / t.count >= 1 else {
                throw TrainError.invalidOption(
                    """
                    --budget-rank \(budget) does not spread evenly over the \(t.count) targets \
                    \(t.map(\.rawValue).joined(separator: ","))
                    """
                )
            }
            return SweepConfig(targets: t, rank: budget / t.count)
        }
    }

    /// "q;v;q,v" → target sets.
    public static func parseTargetSets(_ s: String) throws -> [[LoRATarget]] {
        try s.split(separator: ";").map { set in
            try set.split(separator: ",").map { t in
                guard let x = LoRATarget(rawValue: t.trimmingCharacters(in: .whitespaces)) else {
                    throw TrainError.invalidOption(
                        "unknown LoRA target \(t) in \(s) (use q, k, v, o, mlp_in, mlp_out; sets separated by ;)")
                }
                return x
            }
        }
    }
}

/// One finished run of a sweep: a line of sweep.csv.
public struct SweepRow: Equatable, Sendable {
    /// The setting: sweep mode, targets ("q,v"), rank, seed; and what the run measured.
    public var mode: String, targets: String, rank: Int, seed: UInt64, trainableParams: Int
    public var finalTrainLoss: Double, heldOutLoss: Double, exactMatch: Double, bleu: Double, seconds: Double

    public static let header =
        "mode,targets,rank,seed,trainable_params,final_train_loss,held_out_loss,exact_match,bleu,seconds"

    /// Doubles in Swift's shortest round-trip form, so a row reads back bit for bit; targets quoted
    /// (they hold commas).
    public var csvLine: String {
        """
        \(mode),\"\(targets)\",\(rank),\(seed),\(trainableParams),\(finalTrainLoss),\(heldOutLoss),\(exactMatch),\
        \(bleu),\(seconds)
        """
    }

    public init(
        mode: String, targets: String, rank: Int, seed: UInt64, trainableParams: Int, finalTrainLoss: Double,
        heldOutLoss: Double, exactMatch: Double, bleu: Double, seconds: Double
    ) {
        self.mode = mode
        self.targets = targets
        self.rank = rank
        self.seed = seed
        self.trainableParams = trainableParams
        self.finalTrainLoss = finalTrainLoss
        self.heldOutLoss = heldOutLoss
        self.exactMatch = exactMatch
        self.bleu = bleu
        self.seconds = seconds
    }

    /// Parses a line `csvLine` wrote; nil for anything else.
    public init?(csv line: String) {
        let parts = line.split(separator: "\"", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        let head = parts[0].split(separator: ",", omittingEmptySubsequences: false)
        let tail = parts[2].split(separator: ",", omittingEmptySubsequences: false).dropFirst()
        guard head.count == 2, tail.count == 8,
            let rank = Int(tail[tail.startIndex]), let seed = UInt64(tail[tail.startIndex + 1]),
            let params = Int(tail[tail.startIndex + 2])
        else { return nil }
        let d = tail.dropFirst(3).compactMap { Double($0) }
        guard d.count == 5 else { return nil }
        self.init(
            mode: String(head[0]), targets: String(parts[1]), rank: rank, seed: seed, trainableParams: params,
            finalTrainLoss: d[0], heldOutLoss: d[1], exactMatch: d[2], bleu: d[3], seconds: d[4])
    }

    /// The rows of a sweep.csv (header and unreadable lines skipped); empty when there is none.
    public static func read(_ path: String) -> [SweepRow] {
        guard let s = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        return s.split(separator: "\n").compactMap { SweepRow(csv: String($0)) }
    }

    func isRun(of mode: SweepMode, _ c: SweepConfig, seed s: UInt64) -> Bool {
        self.mode == mode.rawValue && targets == c.targetsLabel && rank == c.rank && seed == s
    }
}

/// A sweep: the same training as `lora-dist train` (a `TrainRun` on this world) for every
/// (setting, seed), one after another. Each finished run appends its row to OUT/sweep.csv at
/// once, and a sweep started again over the same OUT with the same options skips the runs the
/// file already holds, so an interrupted sweep loses at most the run it was in. Afterwards OUT/sweep.md aggregates the
/// rows over seeds and OUT/sweep.png plots them.
public struct Sweep {
    public var mode: SweepMode
    public var configs: [SweepConfig]
    public var seeds: [UInt64]
    /// Everything but the LoRA setting, the seed and the output directory of each run.
    public var template: RunOptions
    public var out: String

    public init(mode: SweepMode, configs: [SweepConfig], seeds: [UInt64], template: RunOptions, out: String) {
        self.mode = mode
        self.configs = configs
        self.seeds = seeds
        self.template = template
        self.out = out
    }

    public var csvPath: String { out + "/sweep.csv" }

    /// Everything a row depends on besides its setting and seed; a sweep continues the rows of
    /// OUT/sweep.csv only when OUT/sweep-options.txt says the same.
    public var optionsDescription: String {
        var o = runOptions(SweepConfig(targets: [.q], rank: 1), seed: 0)
        o.out = out
        var t = o.train
        t.lora.targets = []
        t.lora.rank = 0
        let data = [o.dataDir, o.textFile, o.tokenizer, o.validLimit.map(String.init)].map { $0 ?? "-" }
        return [
            "mode \(mode.rawValue)", "\(t)", "base \(o.base)", "data \(data)", "tp \(o.tp.map(String.init) ?? "world")",
            "eval \(o.evalExamples) \(o.decoding)" + (o.evalMaxTokens.map { " max \($0) tokens" } ?? ""),
            "adapters \(String(describing: o.adapters))"
        ].joined(separator: "\n") + "\n"
    }

    /// The options of one run: the template with this setting and seed, into OUT/runs/NAME.
    public func runOptions(_ c: SweepConfig, seed: UInt64) -> RunOptions {
        var o = template
        o.train.method = .lora
        o.train.lora.targets = c.targets
        o.train.lora.rank = c.rank
        o.train.seed = seed
        o.out =
            out + "/runs/\(mode.rawValue)-\(c.targets.map(\.rawValue).joined(separator: "+"))-r\(c.rank)-seed\(seed)"
        o.quiet = true
        return o
    }

    /// Runs what is missing from sweep.csv on `world` (every rank calls it); returns the rows of
    /// this sweep's settings and seeds, in plan order, and the signal that stopped it early (a
    /// run stopped by a signal writes its checkpoint, as `train` does, but no row: it did not finish).
    /// `say` gets progress lines (rank 0).
    public func run(world: RecordingCommunicator, say: (String) -> Void) throws -> (rows: [SweepRow], stoppedBy: Int32?)
    {
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        var done = SweepRow.read(csvPath)
        var csv: AppendFile?
        let optionsPath = out + "/sweep-options.txt"
        try Collective.agree(over: world, at: .write) {
            guard world.rank == 0 else { return }
            if let before = try? String(contentsOfFile: optionsPath, encoding: .utf8), before != optionsDescription {
                throw TrainError.invalidOption(
                    """
                    \(out) holds a sweep with other options (\(optionsPath)); its rows would not compare: choose \
                    another --out
                    """
                )
            }
            try writeFileAtomically(Data(optionsDescription.utf8), to: optionsPath)
            if !FileManager.default.fileExists(atPath: csvPath) {
                try writeFileAtomically(Data((SweepRow.header + "\n").utf8), to: csvPath)
            }
            csv = try AppendFile(path: csvPath)
        }
        defer { csv?.close() }
        let plan = configs.flatMap { c in seeds.map { (c, $0) } }
        let skipped = plan.filter { c, s in done.contains { $0.isRun(of: mode, c, seed: s) } }.count
        if skipped > 0 { say("sweep: \(skipped) of \(plan.count) runs already in \(csvPath)") }
        for (i, (c, seed)) in plan.enumerated() where !done.contains(where: { $0.isRun(of: mode, c, seed: seed) }) {
            let o = runOptions(c, seed: seed)
            // Each run has its own ledger, as a separate `train` would.
            let run = try TrainRun(world: RecordingCommunicator(world.inner), options: o)
            let s = try run.run()
            if let sig = run.stoppedBy {
                say(
                    """
                    interrupted by \(StopSignal.name(sig)) in \(mode.rawValue) \(c.targetsLabel) r \(c.rank) seed \
                    \(seed): not recorded; the same command continues the sweep
                    """
                )
                return (plan.compactMap { c, s in done.last { $0.isRun(of: mode, c, seed: s) } }, sig)
            }
            let row = SweepRow(
                mode: mode.rawValue, targets: c.targetsLabel, rank: c.rank, seed: seed,
                trainableParams: s.trainableParams,
                finalTrainLoss: s.trainLossFinal ?? .nan, heldOutLoss: s.evalLossAfter ?? .nan,
                exactMatch: s.exactMatchAfter ?? .nan, bleu: s.bleuAfter ?? .nan, seconds: s.seconds)
            try Collective.agree(over: world, at: .write) { try csv?.append(row.csvLine + "\n") }
            done.append(row)
            say(
                """
                [\(i + 1)/\(plan.count)] \(mode.rawValue) \(c.targetsLabel) r \(c.rank) seed \(seed): \
                \(s.trainableParams) trainable, held-out loss \(fixed(row.heldOutLoss, 4)), exact match \
                \(fixed(100 * row.exactMatch, 1))%, BLEU \(fixed(row.bleu, 1)) (\(fixed(row.seconds, 0)) s)
                """
            )
        }
        return (plan.compactMap { c, s in done.last { $0.isRun(of: mode, c, seed: s) } }, nil)
    }
}
