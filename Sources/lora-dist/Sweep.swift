import ArgumentParser
import Foundation
import LoRADist

struct SweepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweep",
        abstract:
            """
            LoRA settings × seeds as training runs in one process: the paper's rank (Table 6) and target (Table 5) \
            comparisons.
            """,
        discussion:
            """
            Each run is `lora-dist train` with the arguments after `--` (the built-in task by default; --data, --lr, \
            --batch, ... apply to every run) and the run's targets, rank and seed. OUT/sweep.csv gets one row per run \
            as it finishes; a sweep started again over the same OUT runs only what the file lacks. OUT/sweep.md \
            aggregates over seeds (mean ± standard deviation), OUT/sweep.png plots the held-out loss.
            """,
        subcommands: [SweepRank.self, SweepTargets.self])
}

/// Options every sweep takes.
struct SweepOptions: ParsableArguments {
    @Option(help: "Seeds (comma-separated): each setting trains once per seed (LoRA init, data order).") var seeds =
        "1,2,3"
    @Option(help: "Optimizer steps of each run.") var steps = trainDefaults.steps
    @Option(help: "Output directory (sweep.csv, sweep.md, sweep.png, runs/).") var out: String
    @OptionGroup var ranks: RanksOptions
    @Argument(
        parsing: .postTerminator,
        help:
            """
            `train` options for every run, after `--` (not --lora-targets, --lora-rank, --seed, --steps, --out, \
            --method).
            """
    )
    var trainArguments: [String] = []

    static let owned = [
        "--lora-targets", "--lora-rank", "--seed", "--steps", "--out", "--method", "--local-ranks", "--resume"
    ]

    func validate() throws {
        guard !seedList.isEmpty else { throw ValidationError("--seeds must list at least one seed (got \(seeds))") }
        guard steps >= 1 else { throw ValidationError("--steps must be at least 1 (got \(steps))") }
        if let bad = trainArguments.first(where: { a in Self.owned.contains { a == $0 || a.hasPrefix($0 + "=") } }) {
            throw ValidationError("\(bad) is set by the sweep itself; give it as a sweep option or leave it out")
        }
    }

    var seedList: [UInt64] {
        seeds.split(separator: ",").compactMap { UInt64($0.trimmingCharacters(in: .whitespaces)) }
    }

    func run(mode: SweepMode, configs: [SweepConfig], title: String) throws {
        let train = try Train.parse(trainArguments + ["--steps", String(steps), "--out", out])
        StopSignal.install()
        let interrupted = SharedFlag()
        let code = ranks.run { world in
            let sweep = Sweep(
                mode: mode, configs: configs, seeds: seedList, template: try train.runOptions(worldSize: world.size),
                out: out)
            let say: (String) -> Void = { s in
                if world.rank == 0 {
                    print(s)
                    fflush(stdout)
                }
            }
            say(
                """
                lora-dist sweep \(mode.rawValue): \(configs.count) settings × \(seedList.count) seeds, \(steps) steps \
                each, into \(out)
                """
            )
            let (rows, stopped) = try sweep.run(world: world, say: say)
            if let sig = stopped {
                interrupted.set(sig)
                return
            }
            try Collective.agree(over: world, at: .write) {
                guard world.rank == 0 else { return }
                let paths = try SweepReport.write(rows, title: title, to: out)
                print("\n" + SweepReport.markdown(rows), terminator: "")
                print("wrote \(sweep.csvPath), " + paths.joined(separator: ", "))
            }
        }
        if code != 0 { throw ExitCode(code) }
        if let s = interrupted.value { throw ExitCode(StopSignal.exitStatus(s)) }
    }
}

struct SweepRank: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rank", abstract: "Every rank × every target set (the paper's Table 6: is a small r enough?).")

    @Option(help: "Ranks (comma-separated).") var ranks = "1,2,4,8,64"
    @Option(help: "Target sets, separated by ';' (targets within a set by ',').") var targetSets = "q;v;q,v;q,k,v,o"
    @OptionGroup var sweep: SweepOptions

    func run() throws {
        let rs = ranks.split(separator: ",").compactMap { Int($0) }
        guard !rs.isEmpty, rs.allSatisfy({ $0 >= 1 }) else {
            throw ValidationError("--ranks must list ranks of at least 1 (got \(ranks))")
        }
        let configs = SweepPlan.rank(ranks: rs, targetSets: try SweepPlan.parseTargetSets(targetSets))
        try sweep.run(
            mode: .rank, configs: configs, title: "held-out loss vs LoRA rank, per target set (\(sweep.steps) steps)")
    }
}

struct SweepTargets: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "targets",
        abstract:
            "One trainable-parameter budget over different target sets (the paper's Table 5: which matrices to adapt?)."
    )

    @Option(help: "The budget as a rank on one matrix type: each set of k targets trains at rank budget/k.")
    var budgetRank = 8
    @Option(help: "Target sets, separated by ';' (targets within a set by ',').") var targetSets =
        "q;k;v;o;q,k;q,v;q,k,v,o"
    @OptionGroup var sweep: SweepOptions

    func run() throws {
        let configs = try SweepPlan.budget(rank: budgetRank, targetSets: try SweepPlan.parseTargetSets(targetSets))
        try sweep.run(
            mode: .targets, configs: configs,
            title: "held-out loss at a budget of r \(budgetRank) on one matrix (\(sweep.steps) steps)")
    }
}
