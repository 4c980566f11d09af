/// What a run fine-tunes: the `--method` of `train` and `bench train`, and what a model is built
/// to train (`Trainable`). It knows which adapter it inserts, which group its gradients are summed
/// over, and whether its trainable state is the same on every rank (so rank 0 alone writes it).
public enum Method: String, CaseIterable, Codable, Sendable {
    /// LoRA's A and B on the chosen targets; the base frozen.
    case lora
    /// Every base parameter (the paper's FT baseline; also how the built-in base is pretrained).
    case full
    /// The base's biases, LayerNorm β included (BitFit; see `BiasParameters`).
    case bitfit
    /// Houlsby adapters (after attention and after the MLP), or Lin's (after the MLP, with its own LayerNorm).
    case adapterH = "adapter-h"
    case adapterL = "adapter-l"

    /// The method of adapters of `kind`.
    public init(adapters kind: AdapterKind) { self = kind == .lin ? .adapterL : .adapterH }

    /// The method named `modeName` (`modeName`'s values; "adapter" is Houlsby's).
    public init?(modeName: String) {
        if modeName == "adapter" {
            self = .adapterH
            return
        }
        guard let m = Method(rawValue: modeName), m.adapterKind == nil else { return nil }
        self = m
    }

    /// The method with both adapter kinds as one, "adapter": what a run's fingerprint (so the
    /// checkpoints of earlier runs still resume), the `train` banner and the cost model's CSV of
    /// measured runs name.
    public var modeName: String { adapterKind == nil ? rawValue : "adapter" }

    /// The adapter an adapter method inserts.
    public var adapterKind: AdapterKind? {
        switch self {
        case .adapterH: return .houlsby
        case .adapterL: return .lin
        default: return nil
        }
    }

    /// Whether what trains is part of the base (full fine-tuning, BitFit) rather than added to it.
    public var trainsBase: Bool { self == .full || self == .bitfit }

    /// The adapter configuration of an adapter method (nil for the others).
    public func adapters(bottleneck: Int, placement: AdapterPlacement) -> AdapterConfig? {
        adapterKind.map { AdapterConfig(kind: $0, bottleneck: bottleneck, placement: placement) }
    }

    /// The group its gradients are summed over in the one `grad-sync` AllReduce: LoRA's A and B
    /// are whole on every rank, so TP partial sums and DP replicas add in one call over the world;
    /// the other methods' trainables are TP shards, summed over DP replicas only.
    public var gradientGroup: GradientGroup { self == .lora ? .world : .dp }

    /// Whether every rank holds the same trainable state (rank 0 writes it alone): LoRA, and
    /// adapters placed whole on every rank.
    public func replicatedState(placement: AdapterPlacement?) -> Bool {
        self == .lora || (adapterKind != nil && placement == .replicated)
    }

    /// The name reports use: the method, or the adapter's kind.
    public var name: String { rawValue }
}

/// The communicator group a method's gradients are summed over (`Method.gradientGroup`); the raw
/// values are the groups' names in the ledger.
public enum GradientGroup: String, Sendable {
    /// Every rank: TP partial sums and DP replicas in one AllReduce (LoRA).
    case world
    /// The data-parallel replicas of one TP shard (full fine-tuning, BitFit, adapters).
    case dp
}
