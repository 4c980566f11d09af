import XCTest

@testable import LoRADist

/// Parallel/ is the one door for every collective: each call the ledger records carries the site
/// that issued it, a training step's sites are the ones the layout implies, and no source file
/// outside Parallel/ and Comm/ calls a Communicator's collective methods itself.
final class CollectiveSiteTests: XCTestCase {
    func testEveryRecordedCollectiveNamesItsSiteAndAStepHasTheSitesTheLayoutImplies() throws {
        var o = GridTraining.options()
        o.lora = LoRAConfig(rank: 2, alpha: 4, targets: [.q, .v])
        let L = GridTraining.cfg.nLayer
        let steps = GridTraining.steps
        let r = try GridTraining.train(world: 4, tp: 4, options: o)[0]
        let passes = steps * o.accumulation(dp: 1)
        let known = Set(Site.allCases.map(\.rawValue))
        for e in r.entries {
            XCTAssertTrue(known.contains(e.site), "\(e.phase) \(e.op) on \(e.group) has no site (\"\(e.site)\")")
        }
        func perPass(_ p: Phase, _ s: Site) -> Int {
            r.entries.filter { $0.phase == p && $0.site == s.rawValue }.count / passes
        }
        XCTAssertEqual(perPass(.forward, .embedding), 1)
        XCTAssertEqual(perPass(.forward, .attnOut), L)
        XCTAssertEqual(perPass(.forward, .mlpOut), L)
        XCTAssertEqual(perPass(.forward, .lossMax), 1)
        XCTAssertEqual(perPass(.forward, .lossSums), 1)
        XCTAssertEqual(perPass(.backward, .headInGrad), 1)
        XCTAssertEqual(perPass(.backward, .mlpInGrad), L)
        // q and v are the lowest trainable parameters: block 0's attention input needs no f.
        XCTAssertEqual(perPass(.backward, .attnInGrad), L - 1)
        let sync = r.entries.filter { $0.site == Site.gradSync.rawValue }
        XCTAssertEqual(sync.count, steps, "one gradient AllReduce per step")
        XCTAssertTrue(sync.allSatisfy { $0.phase == .gradSync && $0.op == .allReduce && $0.group == "world" })
        // The ledger's table names the sites.
        let table = Ledger.table(of: r.entries)
        XCTAssertTrue(table.contains("attn-out") && table.contains("grad-sync") && table.hasPrefix("phase"), table)
    }

    /// The schedule the cost model prices is what a step issues: one step of each method and
    /// placement on a 2×2 grid and on TP 4, its ledger grouped by (phase, site, op, group, size)
    /// against `StepSchedule.training` — every line, with its calls and bytes. The same for a
    /// Llama-family model (q/k/v biases, 2 key/value heads: split at TP 2, shared at TP 4, where
    /// full fine-tuning and BitFit are refused): its blocks have GPT-2's collectives.
    func testAStepIssuesExactlyTheScheduleTheCostModelPrices() throws {
        try checkSchedules(tps: [2, 4], recompute: .none)
    }

    /// The same with `--recompute blocks` (TP 2): the recomputed blocks' forward collectives are
    /// lines of their own under `recompute`, in the ledger and in the schedule alike.
    func testWithRecomputeAStepIssuesExactlyTheScheduleTheCostModelPrices() throws {
        try checkSchedules(tps: [2], recompute: .blocks)
    }

    func checkSchedules(tps: [Int], recompute: Recompute) throws {
        let loraQV = LoRAConfig(rank: 2, alpha: 4, targets: [.q, .v])
        let adapterCases: [(String, Method, LoRAConfig?, AdapterConfig?)] = [
            ("full", .full, nil, nil),
            ("bitfit", .bitfit, nil, nil),
            ("houlsby sharded", .adapterH, nil, AdapterConfig(kind: .houlsby, bottleneck: 4, placement: .sharded)),
            ("houlsby owner", .adapterH, nil, AdapterConfig(kind: .houlsby, bottleneck: 4, placement: .owner)),
            ("lin sharded", .adapterL, nil, AdapterConfig(kind: .lin, bottleneck: 4, placement: .sharded)),
            ("lin replicated", .adapterL, nil, AdapterConfig(kind: .lin, bottleneck: 4, placement: .replicated))
        ]
        let gpt2: [(String, Method, LoRAConfig?, AdapterConfig?)] =
            [
                ("lora q,v", .lora, loraQV, nil),
                ("lora o", .lora, LoRAConfig(rank: 2, alpha: 4, targets: [.o]), nil),
                ("lora mlp_out", .lora, LoRAConfig(rank: 2, alpha: 4, targets: [.mlpOut]), nil)
            ] + adapterCases
        let llama: [(String, Method, LoRAConfig?, AdapterConfig?)] =
            [
                ("llama lora q,v", .lora, loraQV, nil),
                ("llama lora k", .lora, LoRAConfig(rank: 2, alpha: 4, targets: [.k]), nil),
                ("llama lora gate,up", .lora, LoRAConfig(rank: 2, alpha: 4, targets: [.gate, .up]), nil),
                ("llama lora down", .lora, LoRAConfig(rank: 2, alpha: 4, targets: [.down]), nil)
            ] + adapterCases.map { ("llama " + $0.0, $0.1, $0.2, $0.3) }
        for tp in tps {
            for (cfg, cases) in [(Fixtures.tiny, gpt2), (Fixtures.llamaTiny, llama)] {
                for (name, mode, lora, adapters) in cases where !(cfg.family == .llama && tp == 4 && mode.trainsBase) {
                    var o = GridTraining.options(mode)
                    o.steps = 1
                    o.lora = lora ?? loraQV
                    o.recompute = recompute
                    let results = try InProcessCommunicator.run(ranks: 4) {
                        raw -> (recorded: [ScheduledCollective], expected: [ScheduledCollective]) in
                        let ledger = Ledger()
                        let grid = try ProcessGrid(world: RecordingCommunicator(raw, ledger: ledger), tp: tp)
                        let trainable = Fixtures.trainable(mode, lora: lora, adapters: adapters)
                        let model = try Fixtures.randomModel(cfg, grid.tp, trainable: trainable, baseSeed: 1)
                        model.lora?.initialize(seed: 2)
                        model.trainable?.adapters?.initialize(seed: 2)
                        let trainer = try Trainer(grid: grid, ledger: ledger, model: model, options: o)
                        let passes = o.accumulation(dp: grid.dpDegree)
                        let micro = (0..<passes).map { _ in MicroBatch(batch: o.microBatch, seq: o.seq) }
                        for (j, mb) in micro.enumerated() {
                            let r = o.exampleRange(micro: j, replica: grid.replica, dp: grid.dpDegree)
                            GridTraining.fill(mb, step: 0, examples: r)
                        }
                        ledger.reset()
                        _ = try trainer.trainStep(micro, globalTokens: o.globalBatch * (o.seq - 2))
                        let expected = StepSchedule.training(
                            config: cfg, tp: grid.tpDegree, dp: grid.dpDegree,
                            method: mode, lora: lora,
                            adapters: adapters, tokensPerPass: o.microBatch * o.seq, passes: passes,
                            gradientElements: trainer.trainableCount, recompute: recompute)
                        return (StepSchedule.recorded(ledger.entries), expected)
                    }
                    for (rank, r) in results.enumerated() {
                        let key = { (c: ScheduledCollective) in c.description }
                        XCTAssertEqual(
                            r.recorded.map(key).sorted(), r.expected.map(key).sorted(),
                            "\(name), tp \(tp), rank \(rank)")
                    }
                    // The schedule is not empty where the layout communicates.
                    XCTAssertTrue(results[0].expected.contains { $0.site == .attnOut && $0.calls > 0 }, name)
                    // Every method here trains down to block 0: all blocks but the top one are recomputed.
                    let recomputed = results[0].expected.filter { $0.phase == .recompute && $0.site == .mlpOut }
                    XCTAssertEqual(
                        recomputed.map(\.calls),
                        recompute == .blocks ? [o.accumulation(dp: 4 / tp) * (cfg.nLayer - 1)] : [],
                        "\(name) recompute")
                }
            }
        }
    }

    func testTheGridsGroupsAreSplitAtTheirSite() throws {
        let counts = try InProcessCommunicator.run(ranks: 4) { comm -> Int in
            let world = RecordingCommunicator(comm)
            _ = try ProcessGrid(world: world, tp: 2)
            return world.ledger.count(op: .split, site: .split)
        }
        XCTAssertEqual(counts, [2, 2, 2, 2], "the tp and dp groups")
    }

    /// The rule behind the door, checked on the sources themselves.
    func testNoCollectiveIsIssuedOutsideParallelAndComm() throws {
        let sources = Launcher.root.appendingPathComponent("Sources")
        let calls = [
            ".allReduce(", ".broadcast(", ".allGather(", ".barrier()", ".agree {", ".agree(", ".allGatherStrings("
        ]
        var offenders: [String] = []
        let files = FileManager.default.enumerator(atPath: sources.path)!.compactMap { $0 as? String }.filter {
            $0.hasSuffix(".swift")
        }
        XCTAssertGreaterThan(files.count, 50)
        for f in files where !f.hasPrefix("LoRADist/Parallel/") && !f.hasPrefix("LoRADist/Comm/") {
            let text = try String(contentsOfFile: sources.appendingPathComponent(f).path, encoding: .utf8)
            for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                // `Collective.agree(...)` and the like are the door itself.
                let code = line.components(separatedBy: "//")[0].replacingOccurrences(of: "Collective.", with: "")
                // The cost model's `allReduce(bytes:ranks:)` is a formula, not a call.
                for c in calls where code.contains(c) && !code.contains("allReduce(bytes:") {
                    offenders.append("\(f):\(i + 1): \(line)")
                }
            }
        }
        XCTAssertEqual(offenders, [], offenders.joined(separator: "\n"))
    }
}
