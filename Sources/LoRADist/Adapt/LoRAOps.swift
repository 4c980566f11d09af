/// LoRA's forward and backward on one sharded weight, side by side. `s` is α/r; A [r, in] and
/// B [out, r] are the full replicated matrices; the slices used follow the TP layout:
/// - column-parallel W0 (output sharded): y_t += s · (x·Aᵀ) · B_tᵀ with B_t = B's rows `outRange`;
///   backward gives local rows of dB, partial dA and partial dx (the latter summed by the f AllReduce).
/// - row-parallel W0 (input sharded): y_partial += s · (x_t·A_tᵀ) · Bᵀ with A_t = A's columns
///   `inRange`; the term rides inside the g AllReduce. Backward gives local dA columns, partial dB.
public struct LoRAOps {
    public let rank: Int
    public let scale: Float

    /// Column-parallel forward. x [n, in] (ld ldx, already dropped out), y [n, w] (ld ldy), u [n, r] saved.
    public func columnForward(a: UnsafePointer<Float>, b: UnsafePointer<Float>, inDim: Int, outRange: Range<Int>,
                              x: UnsafePointer<Float>, ldx: Int, y: UnsafeMutablePointer<Float>, ldy: Int,
                              u: UnsafeMutablePointer<Float>, n: Int) {
        let r = rank
        sgemm(false, true, n, r, inDim, 1, x, ldx, a, inDim, 0, u, r)
        sgemm(false, true, n, outRange.count, r, scale, u, r, b + outRange.lowerBound * r, r, 1, y, ldy)
    }

    /// Column-parallel backward. dy [n, w]; accumulates dA (partial) and dB's rows `outRange`;
    /// if `dx` is given, adds du·A into it (partial). `du` is scratch [n, r].
    public func columnBackward(a: UnsafePointer<Float>, b: UnsafePointer<Float>, da: UnsafeMutablePointer<Float>,
                               db: UnsafeMutablePointer<Float>, inDim: Int, outRange: Range<Int>,
                               x: UnsafePointer<Float>, ldx: Int, dy: UnsafePointer<Float>, ldy: Int,
                               u: UnsafePointer<Float>, du: UnsafeMutablePointer<Float>,
                               dx: UnsafeMutablePointer<Float>?, lddx: Int, n: Int) {
        let r = rank, w = outRange.count, lo = outRange.lowerBound * r
        sgemm(true, false, w, r, n, scale, dy, ldy, u, r, 1, db + lo, r)
        sgemm(false, false, n, r, w, scale, dy, ldy, b + lo, r, 0, du, r)
        sgemm(true, false, r, inDim, n, 1, du, r, x, ldx, 1, da, inDim)
        if let dx { sgemm(false, false, n, inDim, r, 1, du, r, a, inDim, 1, dx, lddx) }
    }

    /// Row-parallel forward. x_t [n, inRange.count] (ld ldx, dropped out), y [n, out] partial (ld ldy).
    public func rowForward(a: UnsafePointer<Float>, b: UnsafePointer<Float>, inDim: Int, inRange: Range<Int>, outDim: Int,
                           x: UnsafePointer<Float>, ldx: Int, y: UnsafeMutablePointer<Float>, ldy: Int,
                           u: UnsafeMutablePointer<Float>, n: Int) {
        let r = rank
        sgemm(false, true, n, r, inRange.count, 1, x, ldx, a + inRange.lowerBound, inDim, 0, u, r)
        sgemm(false, true, n, outDim, r, scale, u, r, b, r, 1, y, ldy)
    }

    /// Row-parallel backward. dy [n, out] replicated; accumulates dA's columns `inRange` and dB
    /// (partial); if `dx` is given, adds du·A_t into it (local).
    public func rowBackward(a: UnsafePointer<Float>, b: UnsafePointer<Float>, da: UnsafeMutablePointer<Float>,
                            db: UnsafeMutablePointer<Float>, inDim: Int, inRange: Range<Int>, outDim: Int,
                            x: UnsafePointer<Float>, ldx: Int, dy: UnsafePointer<Float>, ldy: Int,
                            u: UnsafePointer<Float>, du: UnsafeMutablePointer<Float>,
                            dx: UnsafeMutablePointer<Float>?, lddx: Int, n: Int) {
        let r = rank, lo = inRange.lowerBound
        sgemm(true, false, outDim, r, n, scale, dy, ldy, u, r, 1, db, r)
        sgemm(false, false, n, r, outDim, scale, dy, ldy, b, r, 0, du, r)
        sgemm(true, false, r, inRange.count, n, 1, du, r, x, ldx, 1, da + lo, inDim)
        if let dx { sgemm(false, false, n, inRange.count, r, 1, du, r, a + lo, inDim, 1, dx, lddx) }
    }

    /// Merge (sign +1) or unmerge (−1) into a column-parallel W_t [in, ldw]: its columns starting at
    /// `colOffset` get ± s·Aᵀ·B_tᵀ.
    public func mergeColumn(sign: Float, a: UnsafePointer<Float>, b: UnsafePointer<Float>, inDim: Int, outRange: Range<Int>,
                            w: UnsafeMutablePointer<Float>, ldw: Int, colOffset: Int) {
        sgemm(true, true, inDim, outRange.count, rank, sign * scale, a, inDim, b + outRange.lowerBound * rank, rank,
              1, w + colOffset, ldw)
    }

    /// Merge (+1) or unmerge (−1) into a row-parallel W_t [inRange.count, out]: ± s·A_tᵀ·Bᵀ.
    public func mergeRow(sign: Float, a: UnsafePointer<Float>, b: UnsafePointer<Float>, inDim: Int, inRange: Range<Int>,
                         outDim: Int, w: UnsafeMutablePointer<Float>) {
        sgemm(true, true, inRange.count, outDim, rank, sign * scale, a + inRange.lowerBound, inDim, b, rank, 1, w, outDim)
    }
}
