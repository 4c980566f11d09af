/// LoRA's forward and backward on one rank's slice of a (possibly sharded) weight, side by side:
/// y += s · (x·A'ᵀ) · B'ᵀ, where A' [r, inLocal] is A restricted to this rank's input columns and
/// B' [outLocal, r] is B restricted to this rank's output rows (`s` = α/r, r and α the slot's). One formula serves both
/// tensor-parallel kinds:
/// - column-parallel W0 (output sharded): A' = A, B' = B's rows for this rank's columns. Backward
///   gives local rows of dB, partial dA and partial dx (the latter summed by the f AllReduce);
/// - row-parallel W0 (input sharded): A' = A's columns for this rank's inputs, B' = B. The partial
///   output rides inside the g AllReduce that is there anyway; backward gives local dA columns,
///   partial dB.
/// Gradient views share the weights' offsets, so the one fused gradient AllReduce sums the partials.
public struct LoRASlice {
    public let a: Mat, b: Mat
    public let da: Mat?, db: Mat?
    public let scale: Float

    /// The slot's rank r (A' is [r, inLocal]).
    public var rank: Int { a.rows }

    /// u [n, r] = x·A'ᵀ (saved for backward); y [n, outLocal] += s·u·B'ᵀ.
    public func forward(x: Mat, y: Mat, u: Mat) {
        matmul(u, x, a.T)
        matmul(y, u, b.T, alpha: scale, beta: 1)
    }

    /// dB' += s·dyᵀ·u; du = s·dy·B'; dA' += duᵀ·x; dx += du·A' (when given). `du` is scratch [n, r].
    public func backward(x: Mat, dy: Mat, u: Mat, du: Mat, dx: Mat?) {
        if let db { matmul(db, dy.T, u, alpha: scale, beta: 1) }
        matmul(du, dy, b, alpha: scale)
        if let da { matmul(da, du.T, x, beta: 1) }
        if let dx { matmul(dx, du, a, beta: 1) }
    }

    /// op(W') [inLocal, outLocal] ± s·A'ᵀ·B'ᵀ: merge (sign +1) or unmerge (−1) into this rank's
    /// weight; a weight stored [out, in] (read transposed) takes ± s·B'·A'.
    public func merge(into w: Mat, sign: Float) {
        if w.transposed {
            matmul(w.T, b, a, alpha: sign * scale, beta: 1)
        } else {
            matmul(w, a.T, b.T, alpha: sign * scale, beta: 1)
        }
    }
}
