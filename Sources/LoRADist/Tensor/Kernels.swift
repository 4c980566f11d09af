import Foundation

/// Elementwise and row-wise kernels, each forward next to its backward (llm.c style).
/// All operate on caller-owned buffers; none allocates.
public enum K {
    // MARK: add / bias

    /// y[i] += x[i]
    @inline(__always)
    public static func addInPlace(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
        for i in 0..<n { y[i] += x[i] }
    }

    /// y[i] = a[i] + b[i]
    @inline(__always)
    public static func add(
        _ y: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int
    ) {
        for i in 0..<n { y[i] = a[i] + b[i] }
    }

    /// y[i] *= s
    @inline(__always)
    public static func scale(_ y: UnsafeMutablePointer<Float>, _ s: Float, _ n: Int) {
        for i in 0..<n { y[i] *= s }
    }

    /// Adds bias b[cols] to every row of y[rows, cols] (row stride ld).
    public static func addBias(
        _ y: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int
    ) {
        for r in 0..<rows {
            let row = y + r * ld
            for c in 0..<cols { row[c] += b[c] }
        }
    }

    /// db[cols] += column sums of dy[rows, cols] (row stride ld): the bias gradient.
    public static func biasBackward(
        _ db: UnsafeMutablePointer<Float>, _ dy: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int
    ) {
        for r in 0..<rows {
            let row = dy + r * ld
            for c in 0..<cols { db[c] += row[c] }
        }
    }

    // MARK: row reductions (8 lanes, then a fixed lane order: the same bits on every rank)

    @inline(__always) static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }
    @inline(__always) static func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
    }

    /// Σ x[j] over j < n.
    @inline(__always)
    public static func sum(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>(repeating: 0)
        var j = 0
        while j + 8 <= n {
            acc += load8(x + j)
            j += 8
        }
        var s = acc.sum()
        while j < n {
            s += x[j]
            j += 1
        }
        return s
    }

    /// Σ a[j]·b[j] over j < n.
    @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>(repeating: 0)
        var j = 0
        while j + 8 <= n {
            acc += load8(a + j) * load8(b + j)
            j += 8
        }
        var s = acc.sum()
        while j < n {
            s += a[j] * b[j]
            j += 1
        }
        return s
    }

    /// max x[j] over j < n (−∞ for n = 0).
    @inline(__always)
    public static func maximum(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>(repeating: -.infinity)
        var j = 0
        while j + 8 <= n {
            let v = load8(x + j)
            acc = select(v .> acc, v, acc)
            j += 8
        }
        var m = acc.max()
        while j < n {
            m = max(m, x[j])
            j += 1
        }
        return m
    }

    // MARK: LayerNorm

    /// y = (x − mean) · rstd · w + b per row of x[n, d]; saves mean and rstd for the backward.
    public static func layerNormForward(
        _ y: UnsafeMutablePointer<Float>, _ mean: UnsafeMutablePointer<Float>,
        _ rstd: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>,
        _ w: UnsafePointer<Float>, _ b: UnsafePointer<Float>, n: Int, d: Int, eps: Float
    ) {
        for i in 0..<n {
            let xi = x + i * d
            let yi = y + i * d
            let m = sum(xi, d) / Float(d)
            var acc = SIMD8<Float>(repeating: 0)
            var j = 0
            let mv = SIMD8<Float>(repeating: m)
            while j + 8 <= d {
                let t = load8(xi + j) - mv
                acc += t * t
                j += 8
            }
            var v = acc.sum()
            while j < d {
                let t = xi[j] - m
                v += t * t
                j += 1
            }
            v /= Float(d)
            let s = 1 / (v + eps).squareRoot()
            let sv = SIMD8<Float>(repeating: s)
            j = 0
            while j + 8 <= d {
                store8((load8(xi + j) - mv) * sv * load8(w + j) + load8(b + j), yi + j)
                j += 8
            }
            while j < d {
                yi[j] = (xi[j] - m) * s * w[j] + b[j]
                j += 1
            }
            mean[i] = m
            rstd[i] = s
        }
    }

    /// dx += LayerNorm backward of dy; dw, db accumulate if non-nil (trainable LayerNorm).
    public static func layerNormBackward(
        _ dx: UnsafeMutablePointer<Float>, _ dw: UnsafeMutablePointer<Float>?,
        _ db: UnsafeMutablePointer<Float>?, _ dy: UnsafePointer<Float>,
        _ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>,
        _ mean: UnsafePointer<Float>, _ rstd: UnsafePointer<Float>, n: Int, d: Int
    ) {
        for i in 0..<n {
            let xi = x + i * d
            let dyi = dy + i * d
            let dxi = dx + i * d
            let m = mean[i]
            let s = rstd[i]
            let mv = SIMD8<Float>(repeating: m)
            let sv = SIMD8<Float>(repeating: s)
            // dn = w ⊙ dy; the two row means the gradient subtracts: mean(dn) and mean(dn ⊙ x̂).
            var a1 = SIMD8<Float>(repeating: 0)
            var a2 = SIMD8<Float>(repeating: 0)
            var j = 0
            while j + 8 <= d {
                let norm = (load8(xi + j) - mv) * sv
                let dn = load8(w + j) * load8(dyi + j)
                a1 += dn
                a2 += dn * norm
                j += 8
            }
            var dnMean = a1.sum()
            var dnNormMean = a2.sum()
            while j < d {
                let norm = (xi[j] - m) * s
                let dn = w[j] * dyi[j]
                dnMean += dn
                dnNormMean += dn * norm
                j += 1
            }
            dnMean /= Float(d)
            dnNormMean /= Float(d)
            let am = SIMD8<Float>(repeating: dnMean)
            let anm = SIMD8<Float>(repeating: dnNormMean)
            j = 0
            while j + 8 <= d {
                let norm = (load8(xi + j) - mv) * sv
                let dn = load8(w + j) * load8(dyi + j)
                store8(load8(dxi + j) + (dn - am - norm * anm) * sv, dxi + j)
                j += 8
            }
            while j < d {
                let norm = (xi[j] - m) * s
                let dn = w[j] * dyi[j]
                dxi[j] += (dn - dnMean - norm * dnNormMean) * s
                j += 1
            }
            if let dw, let db {
                j = 0
                while j + 8 <= d {
                    let g = load8(dyi + j)
                    store8(load8(dw + j) + g * (load8(xi + j) - mv) * sv, dw + j)
                    store8(load8(db + j) + g, db + j)
                    j += 8
                }
                while j < d {
                    dw[j] += dyi[j] * (xi[j] - m) * s
                    db[j] += dyi[j]
                    j += 1
                }
            }
        }
    }

    // MARK: GELU (tanh approximation, as GPT-2)

    static let geluC: Float = (2 / Float.pi).squareRoot()

    public static func geluForward(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
        let c = SIMD8<Float>(repeating: geluC)
        let k = SIMD8<Float>(repeating: 0.044715)
        var i = 0
        while i + 8 <= n {
            let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
            let t = vtanh(c * (v + k * v * v * v))
            UnsafeMutableRawPointer(y + i).storeBytes(of: 0.5 * v * (1 + t), as: SIMD8<Float>.self)
            i += 8
        }
        while i < n {
            let v = x[i]
            let t = vtanh(SIMD8<Float>(repeating: geluC * (v + 0.044715 * v * v * v)))[0]
            y[i] = 0.5 * v * (1 + t)
            i += 1
        }
    }

    /// dx = dy · gelu'(x) (overwrites dx; dx may alias dy).
    public static func geluBackward(
        _ dx: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ n: Int
    ) {
        let c = SIMD8<Float>(repeating: geluC)
        let k = SIMD8<Float>(repeating: 0.044715)
        let k3 = SIMD8<Float>(repeating: 3 * 0.044715)
        var i = 0
        while i + 8 <= n {
            let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
            let g = UnsafeRawPointer(dy + i).loadUnaligned(as: SIMD8<Float>.self)
            let v2: SIMD8<Float> = v * v
            let t: SIMD8<Float> = vtanh(c * (v + k * v2 * v))
            let half = SIMD8<Float>(repeating: 0.5)
            let one = SIMD8<Float>(repeating: 1)
            let sech2: SIMD8<Float> = one - t * t
            let inner: SIMD8<Float> = c * (one + k3 * v2)
            let d: SIMD8<Float> = half * (one + t) + half * v * sech2 * inner
            UnsafeMutableRawPointer(dx + i).storeBytes(of: g * d, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n {
            let v = x[i]
            let t = vtanh(SIMD8<Float>(repeating: geluC * (v + 0.044715 * v * v * v)))[0]
            let d = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * geluC * (1 + 3 * 0.044715 * v * v)
            dx[i] = dy[i] * d
            i += 1
        }
    }

    /// Σ_j exp(row[j] − m) over j < n (row unchanged).
    @inline(__always)
    public static func sumExpShift(_ row: UnsafePointer<Float>, _ n: Int, _ m: Float) -> Float {
        expShift(row, n, m, storingInto: nil)
    }

    /// Σ_j exp(row[j] − m) over j < n, each term also written to `out[j]` when `out` is given
    /// (`out` may be `row` itself).
    @inline(__always)
    static func expShift(
        _ row: UnsafePointer<Float>, _ n: Int, _ m: Float, storingInto out: UnsafeMutablePointer<Float>?
    ) -> Float {
        var acc = SIMD8<Float>(repeating: 0)
        let mv = SIMD8<Float>(repeating: m)
        var j = 0
        while j + 8 <= n {
            let e = vexp(UnsafeRawPointer(row + j).loadUnaligned(as: SIMD8<Float>.self) - mv)
            if let out { UnsafeMutableRawPointer(out + j).storeBytes(of: e, as: SIMD8<Float>.self) }
            acc += e
            j += 8
        }
        var s = acc.sum()
        while j < n {
            let e = sexp(row[j] - m)
            out?[j] = e
            s += e
            j += 1
        }
        return s
    }

    /// row[j] = a·exp(row[j] − m) − b for j < n (the cross-entropy gradient of one row).
    @inline(__always)
    public static func scaledExpShift(_ row: UnsafeMutablePointer<Float>, _ n: Int, _ m: Float, _ a: Float, _ b: Float)
    {
        let mv = SIMD8<Float>(repeating: m)
        let av = SIMD8<Float>(repeating: a)
        let bv = SIMD8<Float>(repeating: b)
        var j = 0
        while j + 8 <= n {
            let e = vexp(UnsafeRawPointer(row + j).loadUnaligned(as: SIMD8<Float>.self) - mv)
            UnsafeMutableRawPointer(row + j).storeBytes(of: av * e - bv, as: SIMD8<Float>.self)
            j += 8
        }
        while j < n {
            row[j] = a * sexp(row[j] - m) - b
            j += 1
        }
    }

    /// row[j] = exp(row[j] − m) for j < n; returns the sum.
    @inline(__always)
    public static func expShiftSum(_ row: UnsafeMutablePointer<Float>, _ n: Int, _ m: Float) -> Float {
        expShift(row, n, m, storingInto: row)
    }

    // MARK: causal softmax attention for one (batch, head)

    /// o[tq, hd] = softmax(scale · q kᵀ, causal) v, for queries at absolute positions pos0 ..< pos0+tq
    /// over keys 0 ..< tk. Rows of q, k, v, o are strided (ldq, ldk, ldv, ldo). p[tq, tk] receives
    /// the probabilities (zero where masked).
    public static func attentionForward(
        o: UnsafeMutablePointer<Float>, ldo: Int, p: UnsafeMutablePointer<Float>,
        q: UnsafePointer<Float>, ldq: Int, k: UnsafePointer<Float>, ldk: Int,
        v: UnsafePointer<Float>, ldv: Int, tq: Int, tk: Int, pos0: Int, hd: Int
    ) {
        let scale = 1 / Float(hd).squareRoot()
        matmul(Mat(p, tq, tk), Mat(q, tq, hd, ld: ldq), Mat(k, tk, hd, ld: ldk).T, alpha: scale)
        for i in 0..<tq {
            let row = p + i * tk
            let last = min(pos0 + i, tk - 1)
            let m = maximum(row, last + 1)
            let inv = 1 / expShiftSum(row, last + 1, m)
            K.scale(row, inv, last + 1)
            if last + 1 < tk { (row + last + 1).update(repeating: 0, count: tk - last - 1) }
        }
        matmul(Mat(o, tq, hd, ld: ldo), Mat(p, tq, tk), Mat(v, tk, hd, ld: ldv))
    }

    /// Backward of `attentionForward` for the training case (pos0 = 0, tq = tk = t). Writes dq; writes
    /// dk and dv, or adds to them with `accumulateKV` (grouped-query attention: the query heads of a
    /// group share one key/value head and sum their gradients into it). `dp` is scratch of t·t floats.
    public static func attentionBackward(
        dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
        dv: UnsafeMutablePointer<Float>, ldd: Int, dp: UnsafeMutablePointer<Float>,
        dout: UnsafePointer<Float>, lddo: Int, p: UnsafePointer<Float>,
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
        ld: Int, t: Int, hd: Int, accumulateKV: Bool = false
    ) {
        let scale = 1 / Float(hd).squareRoot()
        let kvBeta: Float = accumulateKV ? 1 : 0
        let probs = Mat(p, t, t)
        let dO = Mat(dout, t, hd, ld: lddo)
        let ds = Mat(dp, t, t)
        matmul(Mat(dv, t, hd, ld: ldd), probs.T, dO, beta: kvBeta)  // dv (+)= pᵀ · dout
        matmul(ds, dO, Mat(v, t, hd, ld: ld).T)  // dp = dout · vᵀ
        // ds = p ⊙ (dp − rowsum(dp ⊙ p)); masked entries have p = 0.
        for i in 0..<t {
            let pr = p + i * t
            let dr = dp + i * t
            let s = dot(pr, dr, i + 1)
            for j in 0...i { dr[j] = pr[j] * (dr[j] - s) }
            if i + 1 < t { (dr + i + 1).update(repeating: 0, count: t - i - 1) }
        }
        // dq = scale · ds · k ; dk = scale · dsᵀ · q
        matmul(Mat(dq, t, hd, ld: ldd), ds, Mat(k, t, hd, ld: ld), alpha: scale)
        matmul(Mat(dk, t, hd, ld: ldd), ds.T, Mat(q, t, hd, ld: ld), alpha: scale, beta: kvBeta)
    }
}
