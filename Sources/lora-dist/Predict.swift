import ArgumentParser
import Foundation
import LoRADist

/// Calibrates the α–β cost model on measured runs (cluster/scale's CSV), prints predicted vs
/// measured step times, then predicts configurations beyond this machine.
struct BenchPredict: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict",
        abstract: "Cost model: fit on measured runs, check against them, predict larger clusters.")

    @Option(help: "CSV written by cluster/scale.") var measured: String
    @Option(help: "Models to predict beyond this machine.") var models = "gpt2-medium,gpt2-xl"
    @Option(help: "Node counts to predict.") var nodes = "8,64,1024"
    @Option(help: "Link rates (Gb/s) across nodes.") var links = "1,10,100"
    @Option(help: "Ranks per node (TP inside a node).") var tpPerNode = 8
    @Option(
        help:
            """
            Sustained FLOP/s per rank of an accelerator-class node for the second prediction table (1e14: an A100 at \
            about a third of its bf16 peak).
            """
    )
    var acceleratorFlops: Double = 1e14
    @Option(help: "Cores of the machine the measured runs shared (default: this machine's).") var cores = ProcessInfo
        .processInfo.activeProcessorCount

    func run() throws {
        guard let text = try? String(contentsOfFile: measured, encoding: .utf8) else {
            throw ValidationError("cannot read \(measured)")
        }
        let runs = try MeasuredRun.parseCSV(text, source: measured)
        guard !runs.isEmpty else { throw ValidationError("\(measured) has no rows") }
        let cal = Calibration.fit(runs, cores: cores)

        print("calibration (\(runs.count) runs)")
        var ct = TextTable(["link", "α µs", "β ns/B (GB/s)"], left: [0])
        for (rate, l) in cal.links.sorted(by: { $0.key < $1.key }) {
            ct.add([rate, fixed(l.alpha * 1e6, 1), fixed(l.beta * 1e9, 3) + " (" + fixed(1 / l.beta / 1e9, 3) + ")"])
        }
        print(ct.render(), terminator: "")
        for (m, f) in cal.flopsPerCore.sorted(by: { $0.key.modeName < $1.key.modeName }) {
            print(
                "compute \(m.modeName): \(fixed(f / 1e9, 2)) GFLOP/s per core (median of "
                    + "\(cal.computeSamples[m] ?? 0) runs; \(cores) cores shared by the simulated hosts)")
        }

        // In-sample: the calibration saw the case. Held out: fitted on every other case only.
        print("\npredicted vs measured step time (measured: median of the repeats, min–max)")
        let heldOut = Dictionary(
            Calibration.leaveOneCaseOut(runs, cores: cores).map { ($0.run.key, $0.predicted) },
            uniquingKeysWith: { a, _ in a })
        var t = TextTable(
            ["rate", "method", "hosts", "measured s", "range s", "predicted s", "error", "held-out s", "error"],
            left: [0, 1])
        var errIn: [Double] = []
        var errOut: [Double] = []
        func pct(_ e: Double) -> String { (e >= 0 ? "+" : "") + fixed(100 * e, 1) + "%" }
        for c in MeasuredRun.medianByCase(runs) {
            guard let p = cal.model(for: c.run)?.predict().total else { continue }
            let m = c.run.secondsPerStep
            errIn.append(abs(p - m) / m)
            var cells = [
                c.run.rate, c.run.method.modeName, "\(c.run.hosts)×\(c.run.ranksPerHost)", fixed(m, 4),
                fixed(c.min, 3) + "–" + fixed(c.max, 3), fixed(p, 4), pct((p - m) / m)
            ]
            if let h = heldOut[c.run.key] {
                errOut.append(abs(h - m) / m)
                cells += [fixed(h, 4), pct((h - m) / m)]
            } else {
                cells += ["", ""]
            }
            t.add(cells)
        }
        print(t.render(), terminator: "")
        print(
            "median |error|: \(fixed(100 * median(errIn), 1))% in-sample, \(fixed(100 * median(errOut), 1))% held out")

        let cpu = cal.flopsPerCore[.lora] ?? cal.flopsPerCore.values.first ?? 50e9
        predictions(flops: cpu, intraGBps: 20, label: "this machine's calibrated CPU core; shared memory")
        predictions(flops: acceleratorFlops, intraGBps: 200, label: "accelerator class; NVLink-class links")
    }

    /// Beyond this machine: TP inside a node over `intraGBps` (2 µs a message), DP across nodes over
    /// the given links (10 µs a message).
    func predictions(flops: Double, intraGBps: Double, label: String) {
        let intra = LinkModel(alpha: 2e-6, beta: 1 / (intraGBps * 1e9))
        print(
            """
            \npredictions at \(fixed(flops / 1e9, 1)) GFLOP/s per rank (\(label)), \(fixed(intraGBps, 0)) GB/s inside \
            a node: TP \(tpPerNode) inside each node, DP across nodes, seq 1024, 8 sequences per replica, LoRA q,v r 4
            """
        )
        var b = TextTable(
            [
                "model", "nodes", "link Gb/s", "method", "step s", "tokens/s", "efficiency", "comm share",
                "grad-sync share"
            ], left: [0, 3])
        for name in models.split(separator: ",").map(String.init) {
            guard let cfg = GPTConfig.named(name) else { continue }
            for n in nodes.split(separator: ",").compactMap({ Int($0) }) {
                for g in links.split(separator: ",").compactMap({ Double($0) }) {
                    for method in [Method.lora, .full] {
                        let inter = LinkModel.link(gbit: g, latencyMicros: 10)
                        let one = StepCostModel(
                            config: cfg, seq: 1024, batchPerReplica: 8, tp: tpPerNode, dp: 1, method: method,
                            flopsPerRank: flops, intra: intra, inter: inter
                        ).predict()
                        let p = StepCostModel(
                            config: cfg, seq: 1024, batchPerReplica: 8, tp: tpPerNode, dp: n, method: method,
                            flopsPerRank: flops, intra: intra, inter: inter
                        ).predict()
                        b.add([
                            name, String(n), fixed(g, 0), method.rawValue, fixed(p.total, 3),
                            fixed(p.tokensPerSecond, 0),
                            fixed(100 * p.tokensPerSecond / (one.tokensPerSecond * Double(n)), 1) + "%",
                            fixed(100 * p.commShare, 1) + "%", fixed(100 * p.gradSync / p.total, 1) + "%"
                        ])
                    }
                }
            }
        }
        print(b.render(), terminator: "")
    }
}
