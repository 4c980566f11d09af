import Foundation

/// What ΔW = scale·B·A does to W (the paper's §7.3, Table 7), for one adapted matrix.
/// Orientation: W and ΔW are [out, in] (h = W·x); GPT-2's Conv1D stores W transposed.
public struct DeltaWFigures: Codable, Equatable, Sendable {
    /// Directions used: the adapter's rank r (ΔW has rank at most r).
    public var directions: Int
    /// ‖ΔW‖_F.
    public var deltaNorm: Double
    /// The top-r singular values of ΔW, descending.
    public var singularValues: [Double]
    /// Σ_{i≤k} σ_i² / Σ σ² for k = 1...r: how much of ΔW its top-k directions carry.
    public var energy: [Double]
    /// ‖W‖_F.
    public var weightNorm: Double
    /// ‖Uᵀ W Vᵀ‖_F with U, V the top-r singular directions of ΔW: how much of W lies in ΔW's subspace.
    public var projectionOnDelta: Double
    /// The same for W's own top-r directions: sqrt(Σ_{i≤r} σ_i(W)²).
    public var projectionOnOwnTop: Double
    /// The same for random r-dimensional directions (mean over draws).
    public var projectionOnRandom: Double
    /// ‖ΔW‖_F / ‖Uᵀ W Vᵀ‖_F: how strongly ΔW amplifies the directions of W it picks (nil when
    /// ΔW is zero, as before training, or W has nothing in its subspace).
    public var amplification: Double?
}

public enum DeltaWAnalysis {
    /// The thin SVD of scale·B·A from the SVDs of B [out, r] and A [r, in] and one r × r SVD: exact,
    /// and cheap on a wide matrix whose rank is at most r. U [out, r], s [r], Vt [r, in].
    public static func lowRankSVD(a: DMatrix, b: DMatrix, scale: Double) throws -> SVD {
        let sa = try SVD(a, name: "A")
        let sb = try SVD(b, name: "B")
        // scale·B·A = Ub·(scale·diag(sb)·Vtb·Ua·diag(sa))·Vta
        var core = sb.vt * sa.u
        for i in 0..<core.rows { for j in 0..<core.cols { core[i, j] *= scale * sb.s[i] * sa.s[j] } }
        var c = try SVD(core, name: "the r×r core of B·A")
        c.u = sb.u * c.u
        c.vt = c.vt * sa.vt
        return c
    }

    /// ‖Uᵀ W V‖_F for U [out, k] and V [in, k] with orthonormal columns.
    public static func projectedNorm(_ w: DMatrix, u: DMatrix, v: DMatrix) -> Double {
        (u.transposed * (w * v)).frobenius
    }

    /// k random orthonormal columns in R^n: the left-singular vectors of a Gaussian n × k matrix.
    public static func randomDirections(_ n: Int, _ k: Int, rng: inout RNG) throws -> DMatrix {
        var g = DMatrix(rows: n, cols: k)
        for i in 0..<g.data.count { g.data[i] = Double(rng.normal()) }
        return try SVD(g, name: "a random Gaussian matrix").u
    }

    /// Every figure of Table 7 for one adapted matrix: W [out, in], A [r, in], B [out, r].
    public static func figures(w: DMatrix, a: DMatrix, b: DMatrix, scale: Double, randomDraws: Int, seed: UInt64) throws
        -> DeltaWFigures
    {
        guard w.rows == b.rows && w.cols == a.cols && a.rows == b.cols else {
            throw AnalysisError.input(
                "W is \(w.rows)×\(w.cols) but B·A is \(b.rows)×\(a.cols) (r \(a.rows), \(b.cols))")
        }
        let r = a.rows
        let d = try lowRankSVD(a: a, b: b, scale: scale)
        let total = d.s.reduce(0) { $0 + $1 * $1 }
        var run = 0.0
        let energy = d.s.map { s -> Double in
            run += s * s
            return total > 0 ? run / total : 0
        }
        let deltaNorm = total.squareRoot()
        let onDelta = projectedNorm(w, u: d.u, v: d.vt.transposed)
        let ws = try SVD.values(w, name: "W")
        let own = ws.prefix(r).reduce(0) { $0 + $1 * $1 }.squareRoot()
        var rng = RNG(seed: seed)
        var rand = 0.0
        for _ in 0..<max(1, randomDraws) {
            let u = try randomDirections(w.rows, r, rng: &rng)
            let v = try randomDirections(w.cols, r, rng: &rng)
            rand += projectedNorm(w, u: u, v: v)
        }
        return DeltaWFigures(
            directions: r, deltaNorm: deltaNorm, singularValues: d.s, energy: energy, weightNorm: w.frobenius,
            projectionOnDelta: onDelta, projectionOnOwnTop: own, projectionOnRandom: rand / Double(max(1, randomDraws)),
            amplification: onDelta > 0 && deltaNorm > 0 ? deltaNorm / onDelta : nil)
    }
}
