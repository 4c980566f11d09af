import Foundation

/// The paper's normalised subspace similarity (§7.2): for orthonormal columns U1 [n, r1] and
/// U2 [n, r2], φ(i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F / min(i, j), in [0, 1]; 1 when one top
/// subspace contains the other, 0 when they are orthogonal.
public enum SubspaceSimilarity {
    /// φ for every i in 1...r1 and j in 1...r2: element [i-1][j-1].
    public static func phi(_ u1: DMatrix, _ u2: DMatrix) -> [[Double]] {
        precondition(u1.rows == u2.rows, "subspaces of R^\(u1.rows) and R^\(u2.rows) do not compare")
        let g = u1.transposed * u2  // [r1, r2] inner products of the basis vectors
        // Prefix sums of squared inner products over the leading i × j block.
        var acc = [[Double]](repeating: [Double](repeating: 0, count: g.cols + 1), count: g.rows + 1)
        for i in 1...g.rows {
            for j in 1...g.cols {
                let x = g[i - 1, j - 1]
                acc[i][j] = x * x + acc[i - 1][j] + acc[i][j - 1] - acc[i - 1][j - 1]
            }
        }
        return (1...g.rows).map { i in (1...g.cols).map { j in acc[i][j] / Double(min(i, j)) } }
    }

    /// The right-singular vectors of A [r, in] as columns [in, r] (A's row space, by singular value).
    public static func rightSingular(_ a: DMatrix, name: String = "A") throws -> DMatrix {
        try SVD(a, name: name).vt.transposed
    }

    /// The left-singular vectors of B [out, r] as columns [out, r] (B's column space, by singular value).
    public static func leftSingular(_ b: DMatrix, name: String = "B") throws -> DMatrix {
        try SVD(b, name: name).u
    }
}
