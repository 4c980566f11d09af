/// BitFit's trainable parameters (Ben Zaken et al., 2021): every bias of this rank's shard of the
/// base, as BitFit trains them: the four linear layers' (attn.c_attn, attn.c_proj, mlp.c_fc,
/// mlp.c_proj) and the LayerNorms' β (ln_1, ln_2, ln_f). Everything else, LayerNorm γ included,
/// stays frozen.
///
/// The biases are packed into one compact fp32 arena (the optimizer's master copy, what a
/// checkpoint holds) with a gradient arena of the same layout; the base keeps its own copy, which
/// the forward pass reads, and `scatter` writes the masters back into it after every update.
/// Sharding follows the base: c_attn's and c_fc's biases are this rank's columns (column-parallel),
/// c_proj's and the LayerNorms' are whole on every TP rank (added after the AllReduce / replicated),
/// so their gradients are identical across the TP group.
public final class BiasParameters {
    /// One bias tensor: its slot in the base and its offset in the compact arenas.
    public struct Segment: Sendable {
        public let slot: TensorSlot
        public let offset: Int
        public var sharded: Bool { slot.spec != .replicated }
    }

    public let segments: [Segment]
    public let values: FloatArena
    public let grads: FloatArena
    /// Floats this rank holds (the compact arenas' length).
    public let count: Int
    /// Biases of the whole model (all TP ranks together, each counted once).
    public let globalCount: Int
    private let compactOffset: [Int: Int]

    /// Whether `name` (an HF tensor name) is one BitFit trains.
    public static func trains(_ name: String) -> Bool { name.hasSuffix(".bias") }

    public init(shape: BaseLayout) {
        var segs: [Segment] = []
        var n = 0
        var global = 0
        for slot in shape.slots where BiasParameters.trains(slot.name) {
            precondition(slot.offset >= 0, "biases are held in fp32")
            segs.append(Segment(slot: slot, offset: n))
            n += slot.localCount
            global += slot.shape.reduce(1, *)
        }
        segments = segs
        count = n
        globalCount = global
        values = FloatArena(count: n)
        grads = FloatArena(count: n)
        compactOffset = Dictionary(uniqueKeysWithValues: segs.map { ($0.slot.offset, $0.offset) })
    }

    /// BitFit's trainable parameters for a model of this shape (whole model).
    public static func globalCount(of config: GPTConfig) -> Int {
        guard let layout = try? TPLayout(config: config, degree: 1, rank: 0) else { return 0 }
        return BaseLayout(layout: layout).slots.filter { trains($0.name) }.reduce(0) { $0 + $1.shape.reduce(1, *) }
    }

    /// The gradient of the bias stored at `baseOffset` in the base arena.
    public func grad(at baseOffset: Int) -> UnsafeMutablePointer<Float> {
        guard let o = compactOffset[baseOffset] else { preconditionFailure("no bias at base offset \(baseOffset)") }
        return grads.base + o
    }

    /// Copies the base's biases into the masters (after the base is loaded).
    public func gather(from base: BaseWeights) {
        for s in segments { (values.base + s.offset).update(from: base.ptr(s.slot.offset), count: s.slot.localCount) }
    }

    /// Writes the masters into the base, which the forward pass reads.
    public func scatter(into base: BaseWeights) {
        for s in segments { base.ptr(s.slot.offset).update(from: values.base + s.offset, count: s.slot.localCount) }
    }

    /// Σ g² over this rank's gradients of TP-sharded biases and of replicated ones, separately.
    func squaredGradients() -> (sharded: Double, replicated: Double) {
        var sh: Double = 0
        var rep: Double = 0
        for s in segments {
            var acc: Double = 0
            let g = grads.base + s.offset
            for i in 0..<s.slot.localCount { acc += Double(g[i]) * Double(g[i]) }
            if s.sharded { sh += acc } else { rep += acc }
        }
        return (sh, rep)
    }
}
