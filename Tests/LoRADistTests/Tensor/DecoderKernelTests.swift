import Foundation
import XCTest

@testable import LoRADist

/// The kernels of Tensor/DecoderKernels.swift (RMSNorm, rotary embeddings, SwiGLU) and the grouped
/// key/value gradient of attention, as KernelTests checks the GPT-2 ones: each forward against a
/// float64 scalar version written here from the formulas, each backward against central finite
/// differences of that version's L = Σ dy ⊙ y. Widths that are not a multiple of 8 put every
/// vector loop's scalar tail under test.
extension KernelTests {
    // MARK: RMSNorm

    static let rmsEps: Float = 1e-6

    static func rmsNorm(_ x: [Double], _ w: [Double], n: Int, d: Int) -> [Double] {
        var y = [Double](repeating: 0, count: n * d)
        for i in 0..<n {
            let ms = (0..<d).reduce(0.0) { $0 + x[i * d + $1] * x[i * d + $1] } / Double(d)
            let s = 1 / (ms + Double(rmsEps)).squareRoot()
            for j in 0..<d { y[i * d + j] = x[i * d + j] * s * w[j] }
        }
        return y
    }

    func testRMSNormForwardAndBackwardMatchFloat64AndFiniteDifferences() {
        var rng = RNG(seed: 21)
        for d in [8, 37, 64] {
            let n = 4
            let x = Self.random(n * d, &rng, scale: 2, shift: 0.3)
            let w = Self.random(d, &rng, scale: 0.3, shift: 1)
            var y = [Float](repeating: 0, count: n * d)
            var rstd = [Float](repeating: 0, count: n)
            K.rmsNormForward(&y, &rstd, x, w, n: n, d: d, eps: Self.rmsEps)
            let xd = x.map(Double.init)
            let wd = w.map(Double.init)
            assertClose(y, Self.rmsNorm(xd, wd, n: n, d: d), abs: 2e-6, rel: 2e-6, "y d \(d)")

            let dy = Self.random(n * d, &rng)
            let dx0 = Self.random(n * d, &rng)
            let dw0 = Self.random(d, &rng)
            var dx = dx0
            var dw = dw0
            K.rmsNormBackward(&dx, &dw, dy, x, w, rstd, n: n, d: d)
            var dxOnly = dx0
            K.rmsNormBackward(&dxOnly, nil, dy, x, w, rstd, n: n, d: d)
            XCTAssertEqual(dxOnly, dx, "without dw the input gradient is the same")
            let g = dy.map(Double.init)
            let fx = Self.finiteDifferences(xd) { Self.dot(Self.rmsNorm($0, wd, n: n, d: d), g) }
            let fw = Self.finiteDifferences(wd) { Self.dot(Self.rmsNorm(xd, $0, n: n, d: d), g) }
            assertClose(zip(dx, dx0).map { $0 - $1 }, fx, abs: 2e-6, rel: 1e-5, "dx d \(d)")
            assertClose(zip(dw, dw0).map { $0 - $1 }, fw, abs: 2e-6, rel: 1e-5, "dw d \(d)")
            XCTAssertGreaterThan(fx.map(Swift.abs).max()!, 1e-2, "a gradient worth comparing")
        }
    }

    // MARK: rotary embeddings

    /// float64 rotate-half RoPE of rows [rows, heads·hd] (dense), row r at position pos0 + r % seq.
    static func rope(_ x: [Double], rows: Int, seq: Int, pos0: Int, heads: Int, hd: Int, freqs: [Double]) -> [Double] {
        var y = x
        let half = hd / 2
        let w = heads * hd
        for r in 0..<rows {
            let pos = Double(pos0 + r % seq)
            for h in 0..<heads {
                for i in 0..<half {
                    let a = x[r * w + h * hd + i]
                    let b = x[r * w + h * hd + half + i]
                    let angle = pos * freqs[i]
                    y[r * w + h * hd + i] = a * Foundation.cos(angle) - b * Foundation.sin(angle)
                    y[r * w + h * hd + half + i] = b * Foundation.cos(angle) + a * Foundation.sin(angle)
                }
            }
        }
        return y
    }

    func testRotaryEmbeddingsMatchFloat64AndTheirInverseIsTheBackward() {
        var rng = RNG(seed: 22)
        // hd 20: a half of 10 runs one vector and a scalar tail; pos0 > 0 is a decoding step.
        for (hd, pos0) in [(20, 0), (16, 5)] {
            let rows = 6
            let seq = 3
            let heads = 2
            let ld = heads * hd + 3
            let table = RotaryTable(headDim: hd, positions: 16, theta: 500_000)
            let x0 = Self.random(rows * ld, &rng)
            var x = x0
            K.rope(&x, ld: ld, rows: rows, seq: seq, pos0: pos0, heads: heads, hd: hd, cos: table.cos, sin: table.sin)
            let dense = { (a: [Float]) in
                (0..<(rows * heads * hd)).map { a[($0 / (heads * hd)) * ld + $0 % (heads * hd)] }
            }
            let want = Self.rope(
                dense(x0).map(Double.init), rows: rows, seq: seq, pos0: pos0, heads: heads, hd: hd,
                freqs: table.inverseFrequencies)
            // The tables hold float32 angles (position × frequency, as transformers forms them): ~1e-6 off.
            assertClose(dense(x), want, abs: 1e-5, rel: 2e-6, "rope hd \(hd) pos0 \(pos0)")
            for r in 0..<rows {
                XCTAssertEqual(x[r * ld + heads * hd], x0[r * ld + heads * hd], "row padding untouched")
            }
            // The backward: ∂(Σ dy ⊙ rope(x))/∂x by finite differences equals the inverse rotation of dy.
            let dy = Self.random(rows * heads * hd, &rng).map(Double.init)
            let fx = Self.finiteDifferences(dense(x0).map(Double.init)) {
                Self.dot(
                    Self.rope(
                        $0, rows: rows, seq: seq, pos0: pos0, heads: heads, hd: hd, freqs: table.inverseFrequencies), dy
                )
            }
            var g = [Float](repeating: 0, count: rows * ld)
            for i in 0..<dy.count { g[(i / (heads * hd)) * ld + i % (heads * hd)] = Float(dy[i]) }
            K.rope(
                &g, ld: ld, rows: rows, seq: seq, pos0: pos0, heads: heads, hd: hd, cos: table.cos, sin: table.sin,
                inverse: true)
            assertClose(dense(g), fx, abs: 1e-5, rel: 1e-5, "rope backward hd \(hd)")
            // Turning back restores x.
            K.rope(
                &x, ld: ld, rows: rows, seq: seq, pos0: pos0, heads: heads, hd: hd, cos: table.cos, sin: table.sin,
                inverse: true)
            assertClose(x, x0.map(Double.init), abs: 2e-6, rel: 2e-6, "inverse")
        }
    }

    /// Llama 3's rope scaling, against values written from its definition: wavelengths shorter than
    /// old/high_freq_factor keep their frequency, longer than old/low_freq_factor are divided by the
    /// factor, and the band between blends the two linearly in old/wavelength.
    func testLlama3RopeScalingKeepsShortWavelengthsDividesLongOnesAndBlendsBetween() {
        let s = RotaryTable.Llama3Scaling(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 64)
        let hd = 32
        let theta = 10_000.0
        let plain = RotaryTable.inverseFrequencies(headDim: hd, theta: theta)
        let scaled = RotaryTable.inverseFrequencies(headDim: hd, theta: theta, llama3: s)
        XCTAssertEqual(plain[1], 1 / pow(theta, 2.0 / 32), accuracy: 1e-15)
        var kept = 0
        var divided = 0
        var blended = 0
        for (f, g) in zip(plain, scaled) {
            let wavelen = 2 * Double.pi / f
            if wavelen < 16 {
                XCTAssertEqual(g, f)
                kept += 1
            } else if wavelen > 64 {
                XCTAssertEqual(g, f / 8, accuracy: 1e-15 * f)
                divided += 1
            } else {
                let smooth = (64 / wavelen - 1) / 3
                XCTAssertEqual(g, (1 - smooth) * f / 8 + smooth * f, accuracy: 1e-15 * f)
                XCTAssertTrue(g > f / 8 && g < f)
                blended += 1
            }
        }
        XCTAssertTrue(kept > 0 && divided > 0 && blended > 0, "all three bands present: \(kept) \(divided) \(blended)")
    }

    // MARK: SwiGLU

    static func swiglu(_ g: [Double], _ u: [Double]) -> [Double] {
        zip(g, u).map { $0 / (1 + Foundation.exp(-$0)) * $1 }
    }

    func testSwiGLUForwardAndBackwardMatchFloat64AndFiniteDifferences() {
        var rng = RNG(seed: 23)
        for cols in [8, 21] {
            let rows = 3
            let ldgu = 2 * cols + 1
            let ldh = cols + 2
            // gate | up as the two halves of one fused row, as the fused gate/up projection writes them.
            let gu = Self.random(rows * ldgu, &rng, scale: 3)
            var h = [Float](repeating: 9, count: rows * ldh)
            gu.withUnsafeBufferPointer { p in
                K.swigluForward(
                    &h, ldh: ldh, gate: p.baseAddress!, up: p.baseAddress! + cols, ldgu: ldgu, rows: rows, cols: cols)
            }
            let pick = { (a: [Float], off: Int, ld: Int) in
                (0..<(rows * cols)).map { Double(a[($0 / cols) * ld + off + $0 % cols]) }
            }
            let g = pick(gu, 0, ldgu)
            let u = pick(gu, cols, ldgu)
            assertClose(pick(h, 0, ldh).map(Float.init), Self.swiglu(g, u), abs: 1e-6, rel: 2e-6, "h cols \(cols)")
            XCTAssertEqual(h[cols], 9, "h's row padding untouched")

            let dh = Self.random(rows * ldh, &rng)
            var dgu = [Float](repeating: 5, count: rows * ldgu)
            gu.withUnsafeBufferPointer { p in
                dgu.withUnsafeMutableBufferPointer { d in
                    K.swigluBackward(
                        dgate: d.baseAddress!, dup: d.baseAddress! + cols, ldd: ldgu, dh: dh, ldh: ldh,
                        gate: p.baseAddress!, up: p.baseAddress! + cols, ldgu: ldgu, rows: rows, cols: cols)
                }
            }
            let dy = pick(dh, 0, ldh)
            let fg = Self.finiteDifferences(g) { Self.dot(Self.swiglu($0, u), dy) }
            let fu = Self.finiteDifferences(u) { Self.dot(Self.swiglu(g, $0), dy) }
            assertClose(pick(dgu, 0, ldgu).map(Float.init), fg, abs: 2e-6, rel: 1e-5, "dgate cols \(cols)")
            assertClose(pick(dgu, cols, ldgu).map(Float.init), fu, abs: 2e-6, rel: 1e-5, "dup cols \(cols)")
        }
    }

    // MARK: grouped-query attention

    /// Two query heads sharing one key/value head: the shared dk, dv are the sums of what each query
    /// head's backward gives alone (accumulateKV adds the second onto the first).
    func testAttentionBackwardAccumulatesTheSharedKeyValueGradientOfAGroup() {
        var rng = RNG(seed: 24)
        let hd = 8
        let t = 5
        let ld = 4 * hd  // q0 | q1 | k | v
        let x = Self.random(t * ld, &rng)
        let douts = [Self.random(t * hd, &rng), Self.random(t * hd, &rng)]
        var p = [[Float]](repeating: [Float](repeating: 0, count: t * t), count: 2)
        var o = [Float](repeating: 0, count: t * hd)
        x.withUnsafeBufferPointer { xb in
            let b = xb.baseAddress!
            for h in 0..<2 {
                K.attentionForward(
                    o: &o, ldo: hd, p: &p[h], q: b + h * hd, ldq: ld, k: b + 2 * hd, ldk: ld, v: b + 3 * hd, ldv: ld,
                    tq: t, tk: t, pos0: 0, hd: hd)
            }
        }
        var scratch = [Float](repeating: 0, count: t * t)
        func backward(_ heads: [Int], into d: inout [Float]) {
            x.withUnsafeBufferPointer { xb in
                let b = xb.baseAddress!
                d.withUnsafeMutableBufferPointer { db in
                    for (i, h) in heads.enumerated() {
                        K.attentionBackward(
                            dq: db.baseAddress! + h * hd, dk: db.baseAddress! + 2 * hd, dv: db.baseAddress! + 3 * hd,
                            ldd: ld, dp: &scratch, dout: douts[h], lddo: hd, p: p[h], q: b + h * hd,
                            k: b + 2 * hd, v: b + 3 * hd, ld: ld, t: t, hd: hd, accumulateKV: i > 0)
                    }
                }
            }
        }
        var both = [Float](repeating: 3, count: t * ld)
        var first = both
        var second = both
        backward([0, 1], into: &both)
        backward([0], into: &first)
        backward([1], into: &second)
        for r in 0..<t {
            for c in 0..<hd {
                XCTAssertEqual(both[r * ld + c], first[r * ld + c], "dq of head 0")
                XCTAssertEqual(both[r * ld + hd + c], second[r * ld + hd + c], "dq of head 1")
                for kv in [2, 3] {
                    let i = r * ld + kv * hd + c
                    XCTAssertEqual(
                        both[i], first[i] + second[i], accuracy: 1e-6 * (1 + Swift.abs(both[i])), "shared dk/dv")
                }
            }
        }
        XCTAssertGreaterThan(second.map(Swift.abs).max()!, 1e-3, "a gradient worth comparing")
    }
}
