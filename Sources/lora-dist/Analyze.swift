import ArgumentParser
import Foundation
import LoRADist

struct Analyze: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            """
            What LoRA learned (the paper's §7): ΔW against W, its singular spectrum, and the subspace similarity of \
            two adapters.
            """,
        discussion: """
            One process, offline. With one --adapter: for each adapted matrix, ‖ΔW‖_F of ΔW = (α/r)·B·A, its singular \
            values, ‖UᵀWVᵀ‖_F on ΔW's top-r directions against W's own top-r and random directions, and the \
            amplification ‖ΔW‖_F / ‖UᵀWVᵀ‖_F. With two (e.g. r 8 and r 64, or two seeds): also \
            φ(i, j) = ‖U1,iᵀ U2,j‖²_F / min(i, j) of A's right- and B's left-singular vectors per layer and target, \
            as JSON and heatmap PNGs.
            """)

    @OptionGroup var modelOptions: ModelOptions
    @Option(name: .customLong("adapter"), help: "Adapter file written by train (give one or two).") var adapters:
        [String] = []
    @Option(help: "Output directory (analysis.json, phi-*.png).") var out = "runs/analyze"
    @Option(help: "Random r-dimensional direction pairs averaged for the random baseline.") var randomDraws = 5
    @Option(help: "Seed of the random directions.") var seed: UInt64 = 1

    func validate() throws {
        guard (1...2).contains(adapters.count) else {
            throw ValidationError("give one or two --adapter files (got \(adapters.count))")
        }
        guard randomDraws >= 1 else { throw ValidationError("--random-draws must be at least 1") }
    }

    func run() throws {
        let spec = try modelOptions.spec()
        let base = try BaseFiles.open(spec)
        let (cfg, source, id) = (base.config, base.weights, base.identity)
        let mats = try adapters.map { try AdapterMatrices(path: $0) }
        for m in mats { try AdapterFile.check(m.path, trainedOn: m.base, against: id) }
        let report = try AdapterAnalysis.run(
            adapters: mats, source: source, config: cfg, baseName: id.source,
            randomDraws: randomDraws, seed: seed)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try writeFileAtomically(try encodeJSON(report), to: out + "/analysis.json")
        let pngs = try Heatmap.write(report, to: out)
        print(Self.summary(report), terminator: "")
        print(
            "wrote \(out)/analysis.json"
                + (pngs.isEmpty
                    ? ""
                    : """
                     and \(pngs.count) heatmaps \
                    (\(pngs.map { URL(fileURLWithPath: $0).lastPathComponent }.joined(separator: ", ")))
                    """)
        )
    }

    static func summary(_ r: AnalysisReport) -> String {
        var s = ""
        for (k, a) in r.adapters.enumerated() {
            s +=
                """
                adapter \(k + 1): \(a.path) (r \(a.rank), α \(fixed(Double(a.alpha), 1)), targets \
                \(a.targets.joined(separator: ",")))\n
                """
            var t = TextTable(
                [
                    "layer", "target", "‖ΔW‖F", "σ1²/Σσ²", "σ1-2²/Σσ²", "‖UᵀWVᵀ‖ ΔW", "W top-r", "random", "‖W‖F",
                    "amplif."
                ], left: [1])
            for e in r.deltaW where e.adapter == k {
                let f = e.figures
                t.add([
                    "\(e.layer)", e.target, sci(f.deltaNorm), fixed(f.energy.first ?? 0, 3),
                    fixed(f.energy.count > 1 ? f.energy[1] : 1, 3),
                    sci(f.projectionOnDelta), sci(f.projectionOnOwnTop), sci(f.projectionOnRandom), sci(f.weightNorm),
                    f.amplification.map { fixed($0, 2) } ?? "-"
                ])
            }
            s += t.render()
        }
        if !r.similarity.isEmpty {
            s +=
                """
                subspace similarity φ(i, j), adapter 1 (i ≤ \(r.adapters[0].rank)) vs adapter 2 (j ≤ \
                \(r.adapters[1].rank)):\n
                """
            var t = TextTable(["layer", "target", "matrix", "φ(1,1)", "φ(1,r2)", "φ(r1,r2)", "mean φ"], left: [1, 2])
            for e in r.similarity {
                let n = Double(e.phi.count * (e.phi.first?.count ?? 0))
                t.add([
                    "\(e.layer)", e.target, e.matrix, fixed(e.phi[0][0], 3), fixed(e.phi[0].last!, 3),
                    fixed(e.phi.last!.last!, 3),
                    fixed(e.phi.flatMap { $0 }.reduce(0, +) / max(1, n), 3)
                ])
            }
            s += t.render()
        }
        return s
    }

    static func sci(_ v: Double) -> String {
        v == 0 ? "0" : (abs(v) >= 0.01 && abs(v) < 1000 ? fixed(v, abs(v) < 1 ? 4 : 3) : String(format: "%.3e", v))
    }
}
