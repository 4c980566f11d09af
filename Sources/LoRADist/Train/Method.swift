/// What a run fine-tunes: the `--method` of `train` and `bench train`. It knows what the model
/// computes for it (`mode`), which adapter it inserts, which group its gradients are summed over,
/// and whether its trainable state is the same on every rank (so rank 0 alone writes it).
public enum Method: String, CaseIterable, Codable, Sendable {
    /// LoRA's A and B on the chosen targets; the base frozen.
    case lora
    /// Every base parameter.
    case full
    /// The base's biases, LayerNorm β included.
    case bitfit
    /// Houlsby adapters (after attention and after the MLP), or Lin's (after the MLP, with its own LayerNorm).
    case adapterH = "adapter-h", adapterL = "adapter-l"

    /// The method of a run that computes `mode` with `adapters` (their kind decides which adapter method).
    public init(_ mode: TrainMode, adapters: AdapterConfig?) {
        switch mode {
        case .lora: self = .lora
        case .full: self = .full
        case .bitfit: self = .bitfit
        case .adapter: self = adapters?.kind == .lin ? .adapterL : .adapterH
        }
    }

    /// What the model's backward computes.
    public var mode: TrainMode {
        switch self {
        case .lora: return .lora
        case .full: return .full
        case .bitfit: return .bitfit
        case .adapterH, .adapterL: return .adapter
        }
    }

    /// The adapter an adapter method inserts.
    public var adapterKind: AdapterKind? {
        switch self {
        case .adapterH: return .houlsby
        case .adapterL: return .lin
        default: return nil
        }
    }

    /// The adapter configuration of an adapter method (nil for the others).
    public func adapters(bottleneck: Int, placement: AdapterPlacement) -> AdapterConfig? {
        adapterKind.map { AdapterConfig(kind: $0, bottleneck: bottleneck, placement: placement) }
    }

    /// The communicator group its gradients are summed over in the one `grad-sync` AllReduce:
    /// LoRA's A and B are whole on every rank, so TP partial sums and DP replicas add in one call
    /// over the world; the other methods' trainables are TP shards, summed over DP replicas only.
    public var gradientGroup: String { self == .lora ? "world" : "dp" }

    /// Whether every rank holds the same trainable state (rank 0 writes it alone): LoRA, and
    /// adapters placed whole on every rank.
    public func replicatedState(placement: AdapterPlacement?) -> Bool {
        self == .lora || (mode == .adapter && placement == .replicated)
    }

    /// The name reports use: the method, or the adapter's kind.
    public var name: String { rawValue }
}
