import Foundation

/// Where one (layer, target) pair's A [r, in] and B [out, r] live in the LoRA arena, with its own
/// rank r and scale (the config's, unless a rank or alpha pattern names the module).
public struct LoRASlot: Sendable {
    public let layer: Int
    public let target: LoRATarget
    public let rank: Int
    public let scale: Float
    public let a: Int  // offset of A [r, in]
    public let b: Int  // offset of B [out, r]
    public let inDim: Int
    public let outDim: Int
}

/// Every LoRA matrix of the model in one flat arena, replicated whole on every rank: A and B are
/// tiny, so each rank keeps all of them and the gradient sync is one AllReduce of this layout.
/// Slots in (layer, target) order, each A then B. Invariant: identical bits on every rank after every step.
public final class LoRAWeights {
    public let config: LoRAConfig
    public let model: GPTConfig
    public let slots: [LoRASlot]
    public let arena: FloatArena
    /// Offset of each (layer, target) slot: index [layer][target.rawValue].
    private let index: [[LoRATarget: Int]]

    public init(config: LoRAConfig, model: GPTConfig) {
        self.config = config
        self.model = model
        var slots: [LoRASlot] = []
        var off = 0
        var index: [[LoRATarget: Int]] = Array(repeating: [:], count: model.nLayer)
        for l in 0..<model.nLayer {
            for t in config.targets {
                let i = t.inDim(model)
                let o = t.outDim(model)
                let (r, scale) = config.slot(layer: l, target: t, family: model.family)
                index[l][t] = slots.count
                slots.append(
                    LoRASlot(layer: l, target: t, rank: r, scale: scale, a: off, b: off + r * i, inDim: i, outDim: o))
                off += r * (i + o)
            }
        }
        self.slots = slots
        self.index = index
        arena = FloatArena(count: off)
    }

    /// Number of trainable LoRA parameters: Σ r·(in + out).
    public var count: Int { arena.count }

    /// The largest slot rank: the width of the per-slot activation buffers.
    public var maxRank: Int { slots.map(\.rank).max() ?? config.rank }

    public func slot(layer: Int, target: LoRATarget) -> LoRASlot? {
        index[layer][target].map { slots[$0] }
    }

    /// Position of (layer, target) in `slots`, if adapted.
    public func slotIndex(layer: Int, target: LoRATarget) -> Int? { index[layer][target] }

    @inline(__always) public func ptr(_ offset: Int) -> UnsafeMutablePointer<Float> { arena.base + offset }

    /// A random per the init scheme, B = 0; depends only on `seed`, so every rank draws the same.
    public func initialize(seed: UInt64) {
        var rng = RNG(seed: seed)
        arena.zero()
        for s in slots {
            let a = ptr(s.a)
            let r = s.rank
            switch config.initA {
            case .gaussian:
                let std = 1 / Float(r)
                for i in 0..<(r * s.inDim) { a[i] = std * rng.normal() }
            case .kaiming:
                let bound = 1 / Float(s.inDim).squareRoot()
                for i in 0..<(r * s.inDim) { a[i] = (2 * rng.uniform() - 1) * bound }
            }
        }
    }

    /// FNV-1a over the raw bits: equal on all ranks iff the replicas are bit-identical.
    public func fingerprint() -> UInt64 {
        var h = FNV1a()
        for i in 0..<count { h.mix(arena.base[i]) }
        return h.value
    }
}
