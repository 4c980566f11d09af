import Foundation
import XCTest

@testable import LoRADist

/// Each kernel of Tensor/Kernels.swift alone, as llm.c tests its kernels: the forward against a
/// naive float64 scalar version written here, the backward against central finite differences of
/// that version's L = Σ dy ⊙ y (step 1e-4, error far below the tolerances; GELU's also against its
/// analytic derivative), the elementwise and bias kernels bit for bit against scalar float loops.
/// Widths that are not a multiple of 8 put every vector loop's scalar tail under test. The exp and
/// tanh the kernels call are checked against libm in FastMathTests, the GEMMs in GemmTests, the
/// model's gradients in ModelGradientCheckTests.
final class KernelTests: XCTestCase {
    // MARK: helpers

    static func random(_ n: Int, _ rng: inout RNG, scale: Float = 1, shift: Float = 0) -> [Float] {
        (0..<n).map { _ in shift + scale * rng.normal() }
    }

    /// |got − want| ≤ abs + rel·|want| for every element; the message names the worst element.
    func assertClose(
        _ got: [Float], _ want: [Double], abs tolAbs: Double, rel tolRel: Double, _ label: String,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertEqual(got.count, want.count, label, file: file, line: line)
        var worst = 0.0
        var at = -1
        for i in 0..<min(got.count, want.count) {
            let e = Swift.abs(Double(got[i]) - want[i]) / (tolAbs + tolRel * Swift.abs(want[i]))
            if e > worst {
                worst = e
                at = i
            }
        }
        XCTAssertLessThanOrEqual(
            worst, 1, "\(label): worst at [\(at)]: \(at >= 0 ? got[at] : 0) vs \(at >= 0 ? want[at] : 0)",
            file: file, line: line)
    }

    /// Central differences of f at x (float64), one coordinate at a time.
    static func finiteDifferences(_ x: [Double], h: Double = 1e-4, _ f: ([Double]) -> Double) -> [Double] {
        var x = x
        return (0..<x.count).map { i in
            let saved = x[i]
            x[i] = saved + h
            let fp = f(x)
            x[i] = saved - h
            let fm = f(x)
            x[i] = saved
            return (fp - fm) / (2 * h)
        }
    }

    static func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }

    // MARK: add, scale, bias

    func testAddScaleAndBiasKernelsEqualTheScalarLoopsBitForBit() {
        var rng = RNG(seed: 1)
        let n = 29
        let a = Self.random(n, &rng)
        let b = Self.random(n, &rng)
        var y = [Float](repeating: 0, count: n)
        K.add(&y, a, b, n)
        XCTAssertEqual(y, (0..<n).map { a[$0] + b[$0] })
        var acc = a
        K.addInPlace(&acc, b, n)
        XCTAssertEqual(acc, y)
        K.scale(&acc, 0.375, n)
        XCTAssertEqual(acc, y.map { $0 * 0.375 })

        // A strided [rows, cols] block (ld > cols): only the block changes.
        let rows = 5
        let cols = 11
        let ld = 13
        let m = Self.random(rows * ld, &rng)
        let bias = Self.random(cols, &rng)
        let dy = Self.random(rows * ld, &rng)
        var withBias = m
        K.addBias(&withBias, bias, rows: rows, cols: cols, ld: ld)
        var db = Self.random(cols, &rng)
        var dbWant = db
        K.biasBackward(&db, dy, rows: rows, cols: cols, ld: ld)
        for r in 0..<rows {
            for c in 0..<ld {
                XCTAssertEqual(
                    withBias[r * ld + c], c < cols ? m[r * ld + c] + bias[c] : m[r * ld + c], "addBias [\(r), \(c)]")
            }
        }
        for r in 0..<rows { for c in 0..<cols { dbWant[c] += dy[r * ld + c] } }
        XCTAssertEqual(db, dbWant, "biasBackward accumulates the column sums onto db")
    }

    // MARK: row reductions

    func testSumDotAndMaximumMatchFloat64OnEveryLengthThroughTwoVectors() {
        var rng = RNG(seed: 2)
        for n in 0...19 {
            let a = Self.random(n, &rng, shift: 0.3)
            let b = Self.random(n, &rng)
            let absSum = a.reduce(0) { $0 + Double(Swift.abs($1)) }
            let absDot = zip(a, b).reduce(0) { $0 + Double(Swift.abs($1.0 * $1.1)) }
            let sumWant = a.reduce(0) { $0 + Double($1) }
            let dotWant = zip(a, b).reduce(0) { $0 + Double($1.0) * Double($1.1) }
            // Float32 summation: at most n·2⁻²⁴ of the sum of magnitudes.
            XCTAssertEqual(Double(K.sum(a, n)), sumWant, accuracy: Double(n + 1) * 6e-8 * absSum + 1e-12, "sum n \(n)")
            XCTAssertEqual(
                Double(K.dot(a, b, n)), dotWant, accuracy: Double(n + 1) * 1.2e-7 * absDot + 1e-12, "dot n \(n)")
            XCTAssertEqual(K.maximum(a, n), n == 0 ? -.infinity : a.max()!, "maximum n \(n)")
        }
        // The maximum in every lane position and in the tail.
        for at in 0..<19 {
            var v = [Float](repeating: -3, count: 19)
            v[at] = 2.5
            XCTAssertEqual(K.maximum(v, 19), 2.5, "maximum at \(at)")
        }
    }

    // MARK: LayerNorm

    static let lnEps: Float = 1e-5

    /// float64 LayerNorm of x[n, d]: y, mean and 1/σ per row.
    static func layerNorm(_ x: [Double], _ w: [Double], _ b: [Double], n: Int, d: Int) -> (
        y: [Double], mean: [Double], rstd: [Double]
    ) {
        var y = [Double](repeating: 0, count: n * d)
        var mean: [Double] = []
        var rstd: [Double] = []
        for i in 0..<n {
            let row = x[(i * d)..<((i + 1) * d)]
            let m = row.reduce(0, +) / Double(d)
            let v = row.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(d)
            let s = 1 / (v + Double(lnEps)).squareRoot()
            for j in 0..<d { y[i * d + j] = (x[i * d + j] - m) * s * w[j] + b[j] }
            mean.append(m)
            rstd.append(s)
        }
        return (y, mean, rstd)
    }

    func testLayerNormForwardMatchesFloat64() {
        var rng = RNG(seed: 3)
        for d in [8, 37, 64] {
            let n = 5
            let x = Self.random(n * d, &rng, scale: 2, shift: 0.7)
            let w = Self.random(d, &rng, scale: 0.3, shift: 1)
            let b = Self.random(d, &rng, scale: 0.2)
            var y = [Float](repeating: 0, count: n * d)
            var mean = [Float](repeating: 0, count: n)
            var rstd = mean
            K.layerNormForward(&y, &mean, &rstd, x, w, b, n: n, d: d, eps: Self.lnEps)
            let want = Self.layerNorm(x.map(Double.init), w.map(Double.init), b.map(Double.init), n: n, d: d)
            assertClose(y, want.y, abs: 2e-6, rel: 2e-6, "y d \(d)")
            assertClose(mean, want.mean, abs: 1e-6, rel: 1e-6, "mean d \(d)")
            assertClose(rstd, want.rstd, abs: 0, rel: 2e-6, "rstd d \(d)")
        }
    }

    func testLayerNormBackwardMatchesFiniteDifferencesAndAccumulates() {
        var rng = RNG(seed: 4)
        for d in [8, 37] {
            let n = 3
            let x = Self.random(n * d, &rng, scale: 2, shift: 0.7)
            let w = Self.random(d, &rng, scale: 0.3, shift: 1)
            let b = Self.random(d, &rng, scale: 0.2)
            let dy = Self.random(n * d, &rng)
            var y = [Float](repeating: 0, count: n * d)
            var mean = [Float](repeating: 0, count: n)
            var rstd = mean
            K.layerNormForward(&y, &mean, &rstd, x, w, b, n: n, d: d, eps: Self.lnEps)
            // Start from non-zero gradients: the kernel adds to dx, dw and db.
            let dx0 = Self.random(n * d, &rng)
            let dw0 = Self.random(d, &rng)
            let db0 = Self.random(d, &rng)
            var dx = dx0
            var dw = dw0
            var db = db0
            K.layerNormBackward(&dx, &dw, &db, dy, x, w, mean, rstd, n: n, d: d)
            var dxOnly = dx0
            K.layerNormBackward(&dxOnly, nil, nil, dy, x, w, mean, rstd, n: n, d: d)
            XCTAssertEqual(dxOnly, dx, "without dw, db the input gradient is the same")

            let xd = x.map(Double.init)
            let wd = w.map(Double.init)
            let bd = b.map(Double.init)
            let g = dy.map(Double.init)
            let fx = Self.finiteDifferences(xd) { Self.dot(Self.layerNorm($0, wd, bd, n: n, d: d).y, g) }
            let fw = Self.finiteDifferences(wd) { Self.dot(Self.layerNorm(xd, $0, bd, n: n, d: d).y, g) }
            let fb = Self.finiteDifferences(bd) { Self.dot(Self.layerNorm(xd, wd, $0, n: n, d: d).y, g) }
            assertClose(zip(dx, dx0).map { $0 - $1 }, fx, abs: 2e-6, rel: 1e-5, "dx d \(d)")
            assertClose(zip(dw, dw0).map { $0 - $1 }, fw, abs: 2e-6, rel: 1e-5, "dw d \(d)")
            assertClose(zip(db, db0).map { $0 - $1 }, fb, abs: 2e-6, rel: 1e-5, "db d \(d)")
            XCTAssertGreaterThan(fx.map(Swift.abs).max()!, 1e-2, "a gradient worth comparing")
        }
    }

    // MARK: GELU

    static let geluC = (2 / Double.pi).squareRoot()
    static func gelu(_ x: Double) -> Double { 0.5 * x * (1 + Foundation.tanh(geluC * (x + 0.044715 * x * x * x))) }
    static func geluDerivative(_ x: Double) -> Double {
        let t = Foundation.tanh(geluC * (x + 0.044715 * x * x * x))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * geluC * (1 + 3 * 0.044715 * x * x)
    }

    func testGELUForwardAndBackwardMatchFloat64AndFiniteDifferences() {
        // −6 … 6 in uneven steps (the count, 61, is not a multiple of 8), plus 0.
        var x = [Float](repeating: 0, count: 62)
        for i in 0..<61 { x[i] = -6 + 0.2 * Float(i) + 0.013 * Float(i % 7) }
        let n = x.count
        var rng = RNG(seed: 5)
        let dy = Self.random(n, &rng)
        var y = [Float](repeating: 0, count: n)
        K.geluForward(&y, x, n)
        // vtanh's absolute error is ≤ 2e-7, scaled by x/2 (|x| ≤ 6).
        assertClose(y, x.map { Self.gelu(Double($0)) }, abs: 1e-6, rel: 1e-6, "gelu")
        XCTAssertEqual(y[n - 1], 0)

        var dx = [Float](repeating: 0, count: n)
        K.geluBackward(&dx, x, dy, n)
        let want = (0..<n).map { Double(dy[$0]) * Self.geluDerivative(Double(x[$0])) }
        let fd = (0..<n).map { i -> Double in
            let v = Double(x[i])
            let h = 1e-4
            return Double(dy[i]) * (Self.gelu(v + h) - Self.gelu(v - h)) / (2 * h)
        }
        assertClose(dx, want, abs: 1e-5, rel: 1e-5, "gelu backward vs analytic")
        assertClose(dx, fd, abs: 1e-5, rel: 1e-5, "gelu backward vs finite differences")

        // dx may alias dy.
        var inPlace = dy
        inPlace.withUnsafeMutableBufferPointer { K.geluBackward($0.baseAddress!, x, $0.baseAddress!, n) }
        XCTAssertEqual(inPlace, dx, "dx aliasing dy")
    }

    // MARK: softmax and the cross-entropy pieces

    func testExpShiftKernelsMatchFloat64() {
        var rng = RNG(seed: 6)
        for n in [1, 7, 8, 61] {
            let z = Self.random(n, &rng, scale: 3)
            let m = K.maximum(z, n)
            // exp of the float32 difference the kernels form (z − m rounds; vexp then adds ≤ 2 ulp).
            let e = z.map { Foundation.exp(Double($0 - m)) }
            let total = e.reduce(0, +)
            XCTAssertEqual(Double(K.sumExpShift(z, n, m)), total, accuracy: 4e-7 * total, "sumExpShift n \(n)")
            var row = z
            let s = K.expShiftSum(&row, n, m)
            XCTAssertEqual(Double(s), total, accuracy: 4e-7 * total, "expShiftSum's sum n \(n)")
            assertClose(row, e, abs: 0, rel: 3e-7, "expShiftSum's row n \(n)")
            var scaled = z
            K.scaledExpShift(&scaled, n, m, 0.25, 0.125)
            assertClose(scaled, e.map { 0.25 * $0 - 0.125 }, abs: 1e-7, rel: 1e-6, "scaledExpShift n \(n)")
        }
    }

    /// The loss the model forms from the pieces (GPTForward's rowLosses and lossGradient), for one
    /// row of logits with label smoothing ε: logZ = m + log Σexp(z − m),
    /// loss = (1 − ε)(logZ − z_t) + ε(logZ − Σz/V), gradient = exp(z − m)/Σ − ε/V − (1 − ε)·[j = t].
    static func crossEntropy(_ z: [Double], target t: Int, eps: Double) -> Double {
        let m = z.max()!
        let logZ = m + Foundation.log(z.reduce(0) { $0 + Foundation.exp($1 - m) })
        return (1 - eps) * (logZ - z[t]) + eps * (logZ - z.reduce(0, +) / Double(z.count))
    }

    func testCrossEntropyFromTheKernelsMatchesFiniteDifferences() {
        var rng = RNG(seed: 7)
        for (n, eps) in [(61, Float(0)), (61, Float(0.1)), (13, Float(0.2))] {
            let z = Self.random(n, &rng, scale: 2)
            let t = rng.below(n)
            let m = K.maximum(z, n)
            let s = K.sumExpShift(z, n, m)
            let sz = K.sum(z, n)
            let logZ = m + logf(s)
            let invV = 1 / Float(n)
            let loss = (1 - eps) * (logZ - z[t]) + eps * (logZ - sz * invV)
            var grad = z
            K.scaledExpShift(&grad, n, m, 1 / s, eps * invV)
            grad[t] -= 1 - eps
            let zd = z.map(Double.init)
            XCTAssertEqual(
                Double(loss), Self.crossEntropy(zd, target: t, eps: Double(eps)), accuracy: 2e-6, "loss n \(n) ε \(eps)"
            )
            assertClose(
                grad, Self.finiteDifferences(zd) { Self.crossEntropy($0, target: t, eps: Double(eps)) },
                abs: 2e-7, rel: 2e-6, "gradient n \(n) ε \(eps)")
            XCTAssertEqual(Double(grad.reduce(0, +)), 0, accuracy: 1e-6, "the gradient of a softmax loss sums to zero")
        }
    }

    // MARK: causal attention

    /// float64 causal attention of queries at positions pos0 ..< pos0+tq over keys 0 ..< tk:
    /// o = softmax(q kᵀ/√hd, masked) v. q, k, v dense [·, hd].
    static func attention(_ q: [Double], _ k: [Double], _ v: [Double], tq: Int, tk: Int, pos0: Int, hd: Int) -> (
        o: [Double], p: [Double]
    ) {
        let scale = 1 / Double(hd).squareRoot()
        var o = [Double](repeating: 0, count: tq * hd)
        var p = [Double](repeating: 0, count: tq * tk)
        for i in 0..<tq {
            let last = min(pos0 + i, tk - 1)
            var s = (0...last).map { j in scale * (0..<hd).reduce(0) { $0 + q[i * hd + $1] * k[j * hd + $1] } }
            let m = s.max()!
            s = s.map { Foundation.exp($0 - m) }
            let total = s.reduce(0, +)
            for j in 0...last {
                p[i * tk + j] = s[j] / total
                for c in 0..<hd { o[i * hd + c] += p[i * tk + j] * v[j * hd + c] }
            }
        }
        return (o, p)
    }

    /// Dense [rows, hd] from a strided layout, and back.
    static func dense(_ a: [Float], rows: Int, hd: Int, ld: Int) -> [Float] {
        (0..<(rows * hd)).map { a[($0 / hd) * ld + $0 % hd] }
    }

    func testAttentionForwardMatchesFloat64ForTrainingAndDecoding() {
        var rng = RNG(seed: 8)
        let hd = 8
        let tk = 7
        let ld = 3 * hd + 5  // q, k, v rows strided as in the fused qkv activations
        let q = Self.random(tk * ld, &rng)
        let k = Self.random(tk * ld, &rng)
        let v = Self.random(tk * ld, &rng)
        // (tq, pos0): the training pass, a prefill continuing a cache, and one decoded token.
        for (tq, pos0) in [(tk, 0), (3, tk - 3), (1, tk - 1)] {
            let ldo = hd + 3
            var o = [Float](repeating: 7, count: tq * ldo)
            var p = [Float](repeating: 7, count: tq * tk)
            let q0 = (tk - tq) * ld  // the queries are the last tq positions
            q.withUnsafeBufferPointer { qb in
                K.attentionForward(
                    o: &o, ldo: ldo, p: &p, q: qb.baseAddress! + q0, ldq: ld, k: k, ldk: ld, v: v, ldv: ld,
                    tq: tq, tk: tk, pos0: pos0, hd: hd)
            }
            let qd = Self.dense(Array(q[q0...]), rows: tq, hd: hd, ld: ld).map(Double.init)
            let want = Self.attention(
                qd, Self.dense(k, rows: tk, hd: hd, ld: ld).map(Double.init),
                Self.dense(v, rows: tk, hd: hd, ld: ld).map(Double.init), tq: tq, tk: tk, pos0: pos0, hd: hd)
            assertClose(
                Self.dense(o, rows: tq, hd: hd, ld: ldo), want.o, abs: 1e-6, rel: 1e-5, "o tq \(tq) pos0 \(pos0)")
            assertClose(p, want.p, abs: 1e-7, rel: 1e-5, "p tq \(tq) pos0 \(pos0)")
            for i in 0..<tq {
                for j in (pos0 + i + 1)..<max(tk, pos0 + i + 1) {
                    XCTAssertEqual(p[i * tk + j], 0, "masked p[\(i), \(j)]")
                }
                XCTAssertEqual(o[i * ldo + hd], 7, "o's row padding untouched")
            }
        }
    }

    func testAttentionBackwardMatchesFiniteDifferences() {
        var rng = RNG(seed: 9)
        let hd = 8
        let t = 6
        let ld = 3 * hd
        let ldd = 3 * hd + 2
        let lddo = hd + 1
        let q = Self.random(t * ld, &rng)
        let k = Self.random(t * ld, &rng)
        let v = Self.random(t * ld, &rng)
        let dout = Self.random(t * lddo, &rng)
        var o = [Float](repeating: 0, count: t * hd)
        var p = [Float](repeating: 0, count: t * t)
        K.attentionForward(
            o: &o, ldo: hd, p: &p, q: q, ldq: ld, k: k, ldk: ld, v: v, ldv: ld, tq: t, tk: t, pos0: 0, hd: hd)
        var dq = [Float](repeating: 0, count: t * ldd)
        var dk = dq
        var dv = dq
        var dp = [Float](repeating: 0, count: t * t)
        K.attentionBackward(
            dq: &dq, dk: &dk, dv: &dv, ldd: ldd, dp: &dp, dout: dout, lddo: lddo, p: p, q: q, k: k, v: v,
            ld: ld, t: t, hd: hd)
        let qd = Self.dense(q, rows: t, hd: hd, ld: ld).map(Double.init)
        let kd = Self.dense(k, rows: t, hd: hd, ld: ld).map(Double.init)
        let vd = Self.dense(v, rows: t, hd: hd, ld: ld).map(Double.init)
        let g = Self.dense(dout, rows: t, hd: hd, ld: lddo).map(Double.init)
        func loss(_ q: [Double], _ k: [Double], _ v: [Double]) -> Double {
            Self.dot(Self.attention(q, k, v, tq: t, tk: t, pos0: 0, hd: hd).o, g)
        }
        let fq = Self.finiteDifferences(qd) { loss($0, kd, vd) }
        let fk = Self.finiteDifferences(kd) { loss(qd, $0, vd) }
        let fv = Self.finiteDifferences(vd) { loss(qd, kd, $0) }
        assertClose(Self.dense(dq, rows: t, hd: hd, ld: ldd), fq, abs: 2e-6, rel: 2e-5, "dq")
        assertClose(Self.dense(dk, rows: t, hd: hd, ld: ldd), fk, abs: 2e-6, rel: 2e-5, "dk")
        assertClose(Self.dense(dv, rows: t, hd: hd, ld: ldd), fv, abs: 2e-6, rel: 2e-5, "dv")
        XCTAssertGreaterThan(fq.map(Swift.abs).max()!, 1e-2, "a gradient worth comparing")
    }
}
