import XCTest

@testable import LoRADist

/// `lora-dist analyze`: φ on subspaces whose answer is known, every SVD-based figure against
/// numpy.linalg (reference/analysis_reference.py) on fixed matrices and on adapters `train` wrote,
/// the random baseline against its expectation, and the heatmap PNGs as a decoder reads them.
/// The command run end to end is in CLI/AnalyzeCommandTests.swift.
final class AnalyzeTests: XCTestCase {
    func tmp() -> String { makeTempDir("analyze") }

    static func gaussian(_ rows: Int, _ cols: Int, _ rng: inout RNG) -> DMatrix {
        DMatrix(rows: rows, cols: cols, data: (0..<(rows * cols)).map { _ in Double(rng.normal()) })
    }

    func testPhiIsOneOnIdenticalSubspaces() throws {
        var rng = RNG(seed: 3)
        let a = Self.gaussian(4, 12, &rng)
        // Q·A has A's singular values and right-singular vectors, so every top-i subspace agrees.
        let q = try SVD(Self.gaussian(4, 4, &rng)).u
        let phi = SubspaceSimilarity.phi(
            try SubspaceSimilarity.rightSingular(a), try SubspaceSimilarity.rightSingular(q * a))
        for i in 0..<4 { XCTAssertEqual(phi[i][i], 1, accuracy: 1e-12, "φ(\(i + 1), \(i + 1))") }
        // Against itself, the whole r × r grid is 1 wherever one subspace contains the other: i ≤ j or j ≤ i, always.
        let u = try SubspaceSimilarity.rightSingular(a)
        for row in SubspaceSimilarity.phi(u, u) { for v in row { XCTAssertEqual(v, 1, accuracy: 1e-12) } }
        let b = Self.gaussian(10, 4, &rng)
        let ub = try SubspaceSimilarity.leftSingular(b)
        XCTAssertEqual(SubspaceSimilarity.phi(ub, try SubspaceSimilarity.leftSingular(2 * b))[3][3], 1, accuracy: 1e-12)
    }

    func testPhiMatchesHandComputedValues() throws {
        func e(_ k: Int, _ n: Int = 5) -> [Double] { (0..<n).map { $0 == k ? 1 : 0 } }
        let h = 0.5.squareRoot()
        // A1's right-singular vectors: e1 (σ 3), e2 (σ 1).
        let a1 = DMatrix(rows: 2, cols: 5, data: e(0).map { 3 * $0 } + e(1))
        // A2: (e1 + e2)/√2 (σ 2), e3 (σ 1). U1ᵀU2 = [[1/√2, 0], [1/√2, 0]]:
        // φ(1,1) = 1/2, φ(1,2) = 1/2, φ(2,1) = (1/2 + 1/2)/1 = 1, φ(2,2) = 1/2.
        let a2 = DMatrix(rows: 2, cols: 5, data: zip(e(0), e(1)).map { 2 * h * ($0 + $1) } + e(2))
        let p = SubspaceSimilarity.phi(
            try SubspaceSimilarity.rightSingular(a1), try SubspaceSimilarity.rightSingular(a2))
        for (got, want) in zip(p.joined(), [0.5, 0.5, 1, 0.5] as [Double]) {
            XCTAssertEqual(got, want, accuracy: 1e-12)
        }
        // A3: e1 (σ 3), (e2 + e3)/√2 (σ 1). U1ᵀU3 = diag(1, 1/√2): φ(2,2) = (1 + 1/2)/2 = 0.75, the rest 1.
        let a3 = DMatrix(rows: 2, cols: 5, data: e(0).map { 3 * $0 } + zip(e(1), e(2)).map { h * ($0 + $1) })
        let q = SubspaceSimilarity.phi(
            try SubspaceSimilarity.rightSingular(a1), try SubspaceSimilarity.rightSingular(a3))
        for (got, want) in zip(q.joined(), [1, 1, 1, 0.75] as [Double]) { XCTAssertEqual(got, want, accuracy: 1e-12) }
        // Orthogonal subspaces: 0. A rank-1 and a rank-2 adapter compare on a 1 × 2 grid.
        let a4 = DMatrix(rows: 1, cols: 5, data: e(4))
        let o = SubspaceSimilarity.phi(
            try SubspaceSimilarity.rightSingular(a4), try SubspaceSimilarity.rightSingular(a1))
        XCTAssertEqual(o.count, 1)
        XCTAssertEqual(o[0].count, 2)
        XCTAssertEqual(o[0][1], 0, accuracy: 1e-12)
    }

    /// A base of two layers (d 16) holding only the matrices LoRA adapts, and two adapters on all six
    /// targets with random A and B: rank 3 (α/r) and rank 5 (rsLoRA, α/√r).
    func writeFixture(_ dir: String) throws -> (base: String, adapters: [String], config: GPTConfig) {
        let cfg = GPTConfig(nLayer: 2, nEmbd: 16, nHead: 2, vocabSize: 40, nPositions: 16)
        var rng = RNG(seed: 11)
        var tensors: [(name: String, shape: [Int], data: [Float])] = []
        for l in 0..<cfg.nLayer {
            for (n, shape) in [
                ("attn.c_attn.weight", [16, 48]), ("attn.c_proj.weight", [16, 16]), ("mlp.c_fc.weight", [16, 64]),
                ("mlp.c_proj.weight", [64, 16])
            ] {
                tensors.append(
                    ("transformer.h.\(l).\(n)", shape, (0..<(shape[0] * shape[1])).map { _ in 0.3 * rng.normal() }))
            }
        }
        let base = dir + "/base.safetensors"
        try SafeTensorsFile.write(path: base, tensors: tensors)
        let id = BaseIdentity(config: cfg, fingerprint: "fixture", source: "base.safetensors")
        var paths: [String] = []
        for (k, lc) in [
            LoRAConfig(rank: 3, alpha: 8, targets: LoRATarget.available(in: .gpt2)),
            LoRAConfig(rank: 5, alpha: 8, targets: LoRATarget.available(in: .gpt2), rsLoRA: true)
        ].enumerated() {
            let w = LoRAWeights(config: lc, model: cfg)
            for i in 0..<w.count { w.arena.base[i] = 0.1 * rng.normal() }
            let p = dir + "/adapter\(k).safetensors"
            try AdapterFile.save(w, base: id, to: p)
            paths.append(p)
        }
        return (base, paths, cfg)
    }

    /// Compares a report with the numpy reference's JSON: every figure but the random baseline.
    func assertMatchesNumpy(
        _ report: AnalysisReport, base: String, adapters: [String], file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let out = try PythonReference.check("analysis_reference.py", ["analyze", base] + adapters, timeout: 120)
        let ref = try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any]
        let deltas = ref["deltaW"] as! [[String: Any]]
        let sims = ref["similarity"] as! [[String: Any]]
        XCTAssertEqual(deltas.count, report.deltaW.count, file: file, line: line)
        XCTAssertEqual(sims.count, report.similarity.count, file: file, line: line)
        func close(_ a: Double, _ b: Double, _ what: String) {
            XCTAssertEqual(a, b, accuracy: 1e-9 * max(1, abs(b)), what, file: file, line: line)
        }
        for (r, e) in zip(deltas, report.deltaW) {
            XCTAssertEqual(r["layer"] as? Int, e.layer)
            XCTAssertEqual(r["target"] as? String, e.target)
            let f = r["figures"] as! [String: Any]
            let g = e.figures
            let what = "adapter \(e.adapter) layer \(e.layer) \(e.target)"
            close(g.deltaNorm, f["deltaNorm"] as! Double, what + " ‖ΔW‖")
            close(g.weightNorm, f["weightNorm"] as! Double, what + " ‖W‖")
            close(g.projectionOnDelta, f["projectionOnDelta"] as! Double, what + " ‖UᵀWVᵀ‖")
            close(g.projectionOnOwnTop, f["projectionOnOwnTop"] as! Double, what + " W top-r")
            close(g.amplification ?? .nan, f["amplification"] as! Double, what + " amplification")
            for (x, y) in zip(g.singularValues, f["singularValues"] as! [Double]) { close(x, y, what + " σ") }
            for (x, y) in zip(g.energy, f["energy"] as! [Double]) { close(x, y, what + " energy") }
            XCTAssertEqual(g.singularValues.count, (f["singularValues"] as! [Double]).count)
        }
        for (r, e) in zip(sims, report.similarity) {
            XCTAssertEqual(r["layer"] as? Int, e.layer)
            XCTAssertEqual(r["matrix"] as? String, e.matrix)
            let phi = r["phi"] as! [[Double]]
            XCTAssertEqual(phi.count, e.phi.count)
            XCTAssertEqual(phi[0].count, e.phi[0].count)
            for (x, y) in zip(e.phi.flatMap { $0 }, phi.flatMap { $0 }) {
                XCTAssertEqual(x, y, accuracy: 1e-10, "φ layer \(e.layer) \(e.target) \(e.matrix)")
            }
        }
    }

    func testEveryFigureMatchesNumpyOnFixedMatrices() throws {
        let d = tmp()
        let fx = try writeFixture(d)
        let f = try SafeTensorsFile(path: fx.base)
        let report = try AdapterAnalysis.run(
            adapters: try fx.adapters.map { try AdapterMatrices(path: $0) },
            source: SafeTensorsWeightSource(file: f), config: fx.config, baseName: "fixture")
        XCTAssertEqual(report.deltaW.count, 2 * 2 * 6)
        XCTAssertEqual(report.similarity.count, 2 * 6 * 2)
        XCTAssertEqual(report.similarity[0].phi.count, 3)
        XCTAssertEqual(report.similarity[0].phi[0].count, 5)
        XCTAssertEqual(report.deltaW[0].figures.singularValues.count, 3)
        try assertMatchesNumpy(report, base: fx.base, adapters: fx.adapters)
    }

    /// For uniformly random r-dimensional subspaces, E‖UᵀWV‖²_F = (r/m)(r/n)‖W‖²_F.
    func testRandomDirectionsAreOrthonormalAndMeetTheirExpectation() throws {
        var rng = RNG(seed: 5)
        let w = Self.gaussian(20, 30, &rng)
        let r = 3
        var sum = 0.0
        let draws = 2000
        for _ in 0..<draws {
            let u = try DeltaWAnalysis.randomDirections(20, r, rng: &rng)
            let v = try DeltaWAnalysis.randomDirections(30, r, rng: &rng)
            let p = DeltaWAnalysis.projectedNorm(w, u: u, v: v)
            sum += p * p
        }
        let u = try DeltaWAnalysis.randomDirections(20, r, rng: &rng)
        let g = u.transposed * u
        for i in 0..<r { for j in 0..<r { XCTAssertEqual(g[i, j], i == j ? 1 : 0, accuracy: 1e-12) } }
        let want = Double(r * r) / Double(20 * 30) * pow(w.frobenius, 2)
        XCTAssertEqual(sum / Double(draws), want, accuracy: 0.05 * want)
    }

    func testHeatmapPNGDecodesToTheSamePixels() throws {
        // Two panels of 3 × 40 cells: over 65535 bytes of image data, so several stored deflate blocks.
        let phi = (0..<3).map { i in (0..<40).map { j in Double(i * 40 + j) / 119 } }
        let canvas = Heatmap.render(
            title: "phi(i,j) of a, q: r=3 (i) vs r=40 (j)", panels: [("layer 0", phi), ("layer 1", phi.reversed())])
        XCTAssertGreaterThan(canvas.rgb.count, 65535)
        let p = tmp() + "/h.png"
        try Data(canvas.png()).write(to: URL(fileURLWithPath: p))
        let out = try PythonReference.check("analysis_reference.py", ["png", p], timeout: 60)
        let dec = try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any]
        XCTAssertEqual(dec["width"] as? Int, canvas.width)
        XCTAssertEqual(dec["height"] as? Int, canvas.height)
        XCTAssertEqual((dec["rgb"] as! [Int]).map(UInt8.init), canvas.rgb)
        // The colour scale's ends are viridis's.
        XCTAssertTrue(Heatmap.color(0) == (68, 1, 84) && Heatmap.color(1) == (253, 231, 37))
    }
}
