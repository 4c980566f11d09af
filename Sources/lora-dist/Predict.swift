import ArgumentParser
import Foundation
import LoRADist

/// Calibrates the α–β cost model on measured runs (cluster/scale's CSV), prints predicted vs
/// measured step times, then predicts configurations beyond this machine.
struct BenchPredict: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict", abstract: "Cost model: fit on measured runs, check against them, predict larger clusters.")

    @Option(help: "CSV written by cluster/scale.") var measured: String
    @Option(help: "Models to predict beyond this machine.") var models = "gpt2-medium,gpt2-xl"
    @Option(help: "Node counts to predict.") var nodes = "8,64,1024"
    @Option(help: "Link rates (Gb/s) across nodes.") var links = "1,10,100"
    @Option(help: "Ranks per node (TP inside a node).") var tpPerNode = 8
    @Option(help: "Sustained FLOP/s per rank for the predictions (default: the calibrated CPU figure).") var flopsPerRank: Double?
    @Option(help: "Cores of the machine the measured runs shared (default: this machine's).") var cores = ProcessInfo.processInfo.activeProcessorCount

    func run() throws {
        guard let text = try? String(contentsOfFile: measured, encoding: .utf8) else { throw ValidationError("cannot read \(measured)") }
        let lines = text.split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        guard let header = lines.first, lines.count > 1 else { throw ValidationError("\(measured) has no rows") }
        let rows = lines.dropFirst().map { Dictionary(uniqueKeysWithValues: zip(header, $0)) }
        func d(_ r: [String: String], _ k: String) -> Double { Double(r[k] ?? "") ?? 0 }
        // Links: one α–β fit per rate, from the gradient AllReduces the ledger timed.
        var linkFor: [String: LinkModel] = [:]
        for rate in Set(rows.map { $0["rate"] ?? "" }) {
            let samples = rows.filter { $0["rate"] == rate && d($0, "world") > 1 && d($0, "grad_sync_s") > 0 }
                .map { (bytes: d($0, "grad_bytes"), ranks: Int(d($0, "world")), seconds: d($0, "grad_sync_s")) }
            if let fit = LinkModel.fitRingAllReduce(samples) { linkFor[rate] = fit }
        }
        // Compute: FLOP/s of one core, per method (step time minus measured communication). The
        // simulated hosts share this machine's cores, so W ranks each get min(1, cores/W) of one.
        func share(_ world: Double) -> Double { min(1, Double(cores) / max(1, world)) }
        var flopsFor: [String: [Double]] = [:]
        for r in rows {
            guard let cfg = GPTConfig.named(r["model"] ?? "tiny") else { continue }
            let seq = Int(d(r, "seq")), tokens = d(r, "tokens_per_step"), world = d(r, "world")
            let method: TrainMode = r["method"] == "full" ? .full : .lora
            let compute = d(r, "seconds_per_step") - d(r, "grad_sync_s") - d(r, "activation_comm_s")
            let f = FlopCount.trainPerToken(cfg, seq: seq, method: method, loraRank: 4, loraTargets: 2) * tokens / world
            if compute > 0 { flopsFor[r["method"] ?? "", default: []].append(f / compute / share(world)) }
        }
        func median(_ a: [Double]) -> Double { let s = a.sorted(); return s.isEmpty ? 0 : s[s.count / 2] }
        print("calibration")
        var cal = TextTable(["link", "α µs", "β ns/B (GB/s)"], left: [0])
        for (rate, l) in linkFor.sorted(by: { $0.key < $1.key }) {
            cal.add([rate, fixed(l.alpha * 1e6, 1), fixed(l.beta * 1e9, 3) + " (" + fixed(1 / l.beta / 1e9, 3) + ")"])
        }
        print(cal.render(), terminator: "")
        for (m, f) in flopsFor.sorted(by: { $0.key < $1.key }) { print("compute \(m): \(fixed(median(f) / 1e9, 2)) GFLOP/s per core (median of \(f.count) runs; \(cores) cores shared by the simulated hosts)") }

        print("\npredicted vs measured step time")
        var t = TextTable(["rate", "method", "world", "tp", "dp", "measured s", "predicted s", "error"], left: [0, 1])
        var errors: [Double] = []
        for r in rows {
            guard let cfg = GPTConfig.named(r["model"] ?? "tiny"), let link = linkFor[r["rate"] ?? ""] else { continue }
            let method: TrainMode = r["method"] == "full" ? .full : .lora
            let tp = Int(d(r, "tp")), dp = Int(d(r, "dp")), seq = Int(d(r, "seq"))
            let batch = Int(d(r, "tokens_per_step")) / max(1, seq) / max(1, dp)
            let fl = median(flopsFor[r["method"] ?? ""] ?? []) * share(d(r, "world"))
            let p = StepCostModel(config: cfg, seq: seq, batchPerReplica: batch, tp: tp, dp: dp, method: method,
                                  flopsPerRank: fl, intra: link, inter: link).predict()
            let m = d(r, "seconds_per_step")
            let err = (p.total - m) / m
            errors.append(abs(err))
            t.add([r["rate"] ?? "", r["method"] ?? "", String(Int(d(r, "world"))), String(tp), String(dp), fixed(m, 4), fixed(p.total, 4),
                   (err >= 0 ? "+" : "") + fixed(100 * err, 1) + "%"])
        }
        print(t.render(), terminator: "")
        print("median |error| \(fixed(100 * median(errors), 1))%")

        // Beyond this machine: TP inside a node (shared memory: 2 µs, 20 GB/s), DP across nodes.
        let intra = LinkModel(alpha: 2e-6, beta: 1 / 20e9)
        let fl = flopsPerRank ?? median(flopsFor["lora"] ?? flopsFor.values.first ?? [50e9])
        print("\npredictions: TP \(tpPerNode) inside each node, DP across nodes, \(fixed(fl / 1e9, 1)) GFLOP/s per rank, seq 1024, 8 sequences per replica")
        var b = TextTable(["model", "nodes", "link Gb/s", "method", "step s", "tokens/s", "efficiency", "comm share", "grad-sync share"], left: [0, 3])
        for name in models.split(separator: ",").map(String.init) {
            guard let cfg = GPTConfig.named(name) else { continue }
            for n in nodes.split(separator: ",").compactMap({ Int($0) }) {
                for g in links.split(separator: ",").compactMap({ Double($0) }) {
                    for method in [TrainMode.lora, .full] {
                        let inter = LinkModel.link(gbit: g, latencyMicros: 10)
                        let one = StepCostModel(config: cfg, seq: 1024, batchPerReplica: 8, tp: tpPerNode, dp: 1, method: method,
                                                flopsPerRank: fl, intra: intra, inter: inter).predict()
                        let p = StepCostModel(config: cfg, seq: 1024, batchPerReplica: 8, tp: tpPerNode, dp: n, method: method,
                                              flopsPerRank: fl, intra: intra, inter: inter).predict()
                        b.add([name, String(n), fixed(g, 0), method.rawValue, fixed(p.total, 3), fixed(p.tokensPerSecond, 0),
                               fixed(100 * p.tokensPerSecond / (one.tokensPerSecond * Double(n)), 1) + "%",
                               fixed(100 * p.commShare, 1) + "%", fixed(100 * p.gradSync / p.total, 1) + "%"])
                    }
                }
            }
        }
        print(b.render(), terminator: "")
    }
}
