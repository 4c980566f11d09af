import Foundation

/// The kernels of the Llama-architecture decoders (Llama, Qwen2, Mistral, SmolLM): RMSNorm, rotary
/// position embeddings and the gated SiLU MLP, each forward next to its backward as in Kernels.swift.
extension K {
    // MARK: RMSNorm

    /// y = x · rstd · w per row of x[n, d], rstd = 1/√(mean(x²) + eps); saves rstd for the backward.
    public static func rmsNormForward(
        _ y: UnsafeMutablePointer<Float>, _ rstd: UnsafeMutablePointer<Float>,
        _ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, n: Int, d: Int, eps: Float
    ) {
        for i in 0..<n {
            let xi = x + i * d
            let yi = y + i * d
            let s = 1 / (dot(xi, xi, d) / Float(d) + eps).squareRoot()
            let sv = SIMD8<Float>(repeating: s)
            var j = 0
            while j + 8 <= d {
                store8(load8(xi + j) * sv * load8(w + j), yi + j)
                j += 8
            }
            while j < d {
                yi[j] = xi[j] * s * w[j]
                j += 1
            }
            rstd[i] = s
        }
    }

    /// dx += RMSNorm backward of dy: rstd · (w ⊙ dy − x̂ · mean(w ⊙ dy ⊙ x̂)) with x̂ = x · rstd; dw
    /// accumulates Σ dy ⊙ x̂ over rows when non-nil (a trainable norm).
    public static func rmsNormBackward(
        _ dx: UnsafeMutablePointer<Float>, _ dw: UnsafeMutablePointer<Float>?,
        _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>,
        _ rstd: UnsafePointer<Float>, n: Int, d: Int
    ) {
        for i in 0..<n {
            let xi = x + i * d
            let dyi = dy + i * d
            let dxi = dx + i * d
            let s = rstd[i]
            let sv = SIMD8<Float>(repeating: s)
            var acc = SIMD8<Float>(repeating: 0)
            var j = 0
            while j + 8 <= d {
                acc += load8(w + j) * load8(dyi + j) * load8(xi + j) * sv
                j += 8
            }
            var m = acc.sum()
            while j < d {
                m += w[j] * dyi[j] * xi[j] * s
                j += 1
            }
            m /= Float(d)
            let mv = SIMD8<Float>(repeating: m)
            j = 0
            while j + 8 <= d {
                let norm = load8(xi + j) * sv
                store8(load8(dxi + j) + (load8(w + j) * load8(dyi + j) - norm * mv) * sv, dxi + j)
                j += 8
            }
            while j < d {
                dxi[j] += (w[j] * dyi[j] - xi[j] * s * m) * s
                j += 1
            }
            if let dw {
                j = 0
                while j + 8 <= d {
                    store8(load8(dw + j) + load8(dyi + j) * load8(xi + j) * sv, dw + j)
                    j += 8
                }
                while j < d {
                    dw[j] += dyi[j] * xi[j] * s
                    j += 1
                }
            }
        }
    }

    // MARK: rotary position embeddings (the "rotate half" form of Llama and its kin)

    /// Rotates the heads of `rows` rows in place, row r at position pos0 + r % seq: for each head of
    /// width hd (at head·hd in the row, row stride ld) the pairs (x[i], x[i + hd/2]) turn by the
    /// angle of their frequency, `cos`/`sin` [positions, hd/2]. `inverse` turns back: the backward
    /// (a rotation's transpose is its inverse), and the gradient of a rotated q or k.
    public static func rope(
        _ x: UnsafeMutablePointer<Float>, ld: Int, rows: Int, seq: Int, pos0: Int, heads: Int, hd: Int,
        cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, inverse: Bool = false
    ) {
        let half = hd / 2
        for r in 0..<rows {
            let pos = pos0 + r % seq
            let c = cos + pos * half
            let s = sin + pos * half
            for h in 0..<heads {
                let a = x + r * ld + h * hd
                let b = a + half
                var i = 0
                while i + 8 <= half {
                    let av = load8(a + i)
                    let bv = load8(b + i)
                    let cv = load8(c + i)
                    let sv = inverse ? -load8(s + i) : load8(s + i)
                    store8(av * cv - bv * sv, a + i)
                    store8(bv * cv + av * sv, b + i)
                    i += 8
                }
                while i < half {
                    let av = a[i]
                    let bv = b[i]
                    let sv = inverse ? -s[i] : s[i]
                    a[i] = av * c[i] - bv * sv
                    b[i] = bv * c[i] + av * sv
                    i += 1
                }
            }
        }
    }

    // MARK: gated SiLU (SwiGLU) MLP

    /// h[i, j] = silu(gate[i, j]) · up[i, j], silu(g) = g · σ(g), for `rows` rows of `cols` columns
    /// (row strides ldh and ldgu: gate and up may be two halves of one fused output).
    public static func swigluForward(
        _ h: UnsafeMutablePointer<Float>, ldh: Int, gate: UnsafePointer<Float>,
        up: UnsafePointer<Float>, ldgu: Int, rows: Int, cols: Int
    ) {
        let one = SIMD8<Float>(repeating: 1)
        for r in 0..<rows {
            let g = gate + r * ldgu
            let u = up + r * ldgu
            let hr = h + r * ldh
            var j = 0
            while j + 8 <= cols {
                let gv = load8(g + j)
                store8(gv / (one + vexp(-gv)) * load8(u + j), hr + j)
                j += 8
            }
            while j < cols {
                hr[j] = g[j] / (1 + sexp(-g[j])) * u[j]
                j += 1
            }
        }
    }

    /// Backward of `swigluForward`: dgate = dh · up · σ(g)(1 + g(1 − σ(g))), dup = dh · silu(g)
    /// (written, not accumulated; they may be the halves of one fused gradient).
    public static func swigluBackward(
        dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>, ldd: Int,
        dh: UnsafePointer<Float>, ldh: Int, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
        ldgu: Int, rows: Int, cols: Int
    ) {
        let one = SIMD8<Float>(repeating: 1)
        for r in 0..<rows {
            let g = gate + r * ldgu
            let u = up + r * ldgu
            let d = dh + r * ldh
            let dg = dgate + r * ldd
            let du = dup + r * ldd
            var j = 0
            while j + 8 <= cols {
                let gv = load8(g + j)
                let dv = load8(d + j)
                let sig = one / (one + vexp(-gv))
                store8(dv * load8(u + j) * sig * (one + gv * (one - sig)), dg + j)
                store8(dv * gv * sig, du + j)
                j += 8
            }
            while j < cols {
                let sig = 1 / (1 + sexp(-g[j]))
                let dv = d[j]
                dg[j] = dv * u[j] * sig * (1 + g[j] * (1 - sig))
                du[j] = dv * g[j] * sig
                j += 1
            }
        }
    }
}

/// The rotary angles of a model: its inverse frequencies (with the rope scaling of its config),
/// and their cos/sin tables [positions, hd/2] as the kernels read them.
public struct RotaryTable {
    public let headDim: Int
    public let positions: Int
    public let inverseFrequencies: [Double]
    public let cos: [Float], sin: [Float]

    /// Llama 3's frequency-dependent scaling (`rope_type` "llama3"): long wavelengths divided by
    /// `factor`, short ones kept, a smooth blend between.
    public struct Llama3Scaling: Equatable, Codable, Sendable {
        public var factor: Double
        public var lowFreqFactor: Double
        public var highFreqFactor: Double
        public var originalMaxPositions: Int
        public init(factor: Double, lowFreqFactor: Double, highFreqFactor: Double, originalMaxPositions: Int) {
            self.factor = factor
            self.lowFreqFactor = lowFreqFactor
            self.highFreqFactor = highFreqFactor
            self.originalMaxPositions = originalMaxPositions
        }
    }

    /// θ_i = theta^(−2i/hd) for i < hd/2, scaled by `llama3` when given.
    public static func inverseFrequencies(headDim hd: Int, theta: Double, llama3: Llama3Scaling? = nil) -> [Double] {
        let plain = (0..<(hd / 2)).map { i in 1 / pow(theta, Double(2 * i) / Double(hd)) }
        guard let s = llama3 else { return plain }
        let old = Double(s.originalMaxPositions)
        let lowWavelen = old / s.lowFreqFactor
        let highWavelen = old / s.highFreqFactor
        return plain.map { f in
            let wavelen = 2 * Double.pi / f
            if wavelen < highWavelen { return f }
            if wavelen > lowWavelen { return f / s.factor }
            let smooth = (old / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor)
            return (1 - smooth) * f / s.factor + smooth * f
        }
    }

    public init(headDim: Int, positions: Int, theta: Double, llama3: Llama3Scaling? = nil) {
        precondition(headDim % 2 == 0, "rotary embeddings need an even head width")
        self.headDim = headDim
        self.positions = positions
        let f = RotaryTable.inverseFrequencies(headDim: headDim, theta: theta, llama3: llama3)
        inverseFrequencies = f
        var c: [Float] = []
        var s: [Float] = []
        c.reserveCapacity(positions * f.count)
        s.reserveCapacity(positions * f.count)
        for p in 0..<positions {
            for fi in f {
                // The angle as transformers forms it: a float32 product of position and frequency.
                let angle = Double(Float(p) * Float(fi))
                c.append(Float(Foundation.cos(angle)))
                s.append(Float(Foundation.sin(angle)))
            }
        }
        cos = c
        sin = s
    }
}
