import Foundation

/// AdamW (Loshchilov & Hutter) with bias correction and decoupled weight decay. State exists only
/// for the parameters it is given (A and B in LoRA training), in two arenas shaped like them.
public final class AdamW {
    public let count: Int
    public var beta1: Float, beta2: Float, eps: Float, weightDecay: Float
    public let m: FloatArena, v: FloatArena
    /// Number of updates applied so far.
    public var t: Int = 0

    public init(count: Int, beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0.01) {
        self.count = count
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        m = FloatArena(count: count)
        v = FloatArena(count: count)
    }

    /// p ← p − lr·(m̂/(√v̂ + eps) + wd·p) over all `count` parameters.
    public func step(params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>, lr: Float) {
        t += 1
        let b1 = beta1
        let b2 = beta2
        let c1 = 1 / (1 - powf(b1, Float(t)))
        let c2 = 1 / (1 - powf(b2, Float(t)))
        let mm = m.base
        let vv = v.base
        let wd = weightDecay
        let e = eps
        for i in 0..<count {
            let g = grads[i]
            let mi = b1 * mm[i] + (1 - b1) * g
            let vi = b2 * vv[i] + (1 - b2) * g * g
            mm[i] = mi
            vv[i] = vi
            let update = (mi * c1) / ((vi * c2).squareRoot() + e)
            params[i] -= lr * (update + wd * params[i])
        }
    }
}

/// Learning rate per step: linear warm-up to `peak`, then linear or cosine decay to `peak·minRatio`
/// at `total` steps (or constant).
public struct LRSchedule: Codable, Equatable, Sendable {
    public enum Decay: String, Codable, Sendable, CaseIterable { case linear, cosine, constant }
    public var peak: Float
    public var warmup: Int
    public var total: Int
    public var decay: Decay
    public var minRatio: Float

    public init(peak: Float, warmup: Int, total: Int, decay: Decay = .linear, minRatio: Float = 0) {
        self.peak = peak
        self.warmup = warmup
        self.total = total
        self.decay = decay
        self.minRatio = minRatio
    }

    /// The rate for step `s` (0-based).
    public func rate(at s: Int) -> Float {
        if s < warmup { return peak * Float(s + 1) / Float(warmup) }
        let span = max(1, total - warmup)
        let f = min(1, Float(s - warmup) / Float(span))
        let floor = peak * minRatio
        switch decay {
        case .constant: return peak
        case .linear: return floor + (peak - floor) * (1 - f)
        case .cosine: return floor + (peak - floor) * 0.5 * (1 + cosf(Float.pi * f))
        }
    }
}
