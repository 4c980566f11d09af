import Foundation

/// The weight matrices LoRA can adapt. GPT-2 (loralib's names in comments): q, k, v live inside
/// the fused c_attn and are adapted separately, like loralib's MergedLinear. The Llama family: q,
/// k, v, o (q_proj … o_proj) and the MLP's gate, up and down projections, under HF's names.
public enum LoRATarget: String, CaseIterable, Codable, Sendable {
    case q, k, v
    case o                    // attn.c_proj; o_proj
    case mlpIn = "mlp_in"     // mlp.c_fc (GPT-2)
    case mlpOut = "mlp_out"   // mlp.c_proj (GPT-2)
    case gate, up, down       // mlp.gate_proj, mlp.up_proj, mlp.down_proj (Llama family)

    /// The targets a model family has, in canonical order.
    public static func available(in family: ModelFamily) -> [LoRATarget] {
        family == .gpt2 ? [.q, .k, .v, .o, .mlpIn, .mlpOut] : [.q, .k, .v, .o, .gate, .up, .down]
    }

    /// Column-parallel targets shard their output (B's rows); row-parallel ones their input (A's columns).
    public var isColumnParallel: Bool {
        switch self {
        case .q, .k, .v, .mlpIn, .gate, .up: return true
        case .o, .mlpOut, .down: return false
        }
    }

    /// Whether the target projects the MLP's hidden layer (input width ffn) or into it (output width ffn).
    private var readsHidden: Bool { self == .mlpOut || self == .down }
    private var writesHidden: Bool { self == .mlpIn || self == .gate || self == .up }

    public func inDim(_ c: GPTConfig) -> Int { readsHidden ? c.ffn : c.nEmbd }
    /// k and v project to the key/value heads (fewer than the query heads under grouped-query attention).
    public func outDim(_ c: GPTConfig) -> Int {
        if writesHidden { return c.ffn }
        return self == .k || self == .v ? c.nKVHead * c.headDim : c.nEmbd
    }

    /// The HF base weight this target adapts, within a block (GPT-2's `transformer.h.L.`, the Llama family's `model.layers.L.`).
    public func baseModule(_ family: ModelFamily) -> String {
        switch (self, family) {
        case (.q, .gpt2), (.k, .gpt2), (.v, .gpt2): return "attn.c_attn"
        case (.o, .gpt2): return "attn.c_proj"
        case (.q, _): return "self_attn.q_proj"
        case (.k, _): return "self_attn.k_proj"
        case (.v, _): return "self_attn.v_proj"
        case (.o, _): return "self_attn.o_proj"
        case (.mlpIn, _): return "mlp.c_fc"
        case (.mlpOut, _): return "mlp.c_proj"
        case (.gate, _): return "mlp.gate_proj"
        case (.up, _): return "mlp.up_proj"
        case (.down, _): return "mlp.down_proj"
        }
    }
}

/// How A is initialised (B always starts at zero).
public enum LoRAInit: String, Codable, Sendable, CaseIterable {
    /// N(0, 1/r²), as the paper's "random Gaussian" (PEFT's `gaussian`).
    case gaussian
    /// U(−1/√in, 1/√in): loralib's and PEFT's default kaiming_uniform(a = √5).
    case kaiming
}

/// LoRA's hyper-parameters: h = W0·x + scale·B·A·x with scale = α/r (or α/√r with rsLoRA).
public struct LoRAConfig: Codable, Equatable, Sendable {
    public var rank: Int = 4
    public var alpha: Float = 32
    public var targets: [LoRATarget] = [.q, .v]
    public var dropout: Float = 0
    public var initA: LoRAInit = .gaussian
    public var rsLoRA = false

    public init(rank: Int = 4, alpha: Float = 32, targets: [LoRATarget] = [.q, .v], dropout: Float = 0,
                initA: LoRAInit = .gaussian, rsLoRA: Bool = false) {
        self.rank = rank
        self.alpha = alpha
        self.targets = LoRATarget.allCases.filter { targets.contains($0) }  // canonical order
        self.dropout = dropout
        self.initA = initA
        self.rsLoRA = rsLoRA
    }

    public var scale: Float { rsLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank) }

    /// A and B elements over the whole model: r·(in + out) per target and layer.
    public func parameterCount(for c: GPTConfig) -> Int {
        c.nLayer * targets.reduce(0) { $0 + rank * ($1.inDim(c) + $1.outDim(c)) }
    }

    public func validate(for c: GPTConfig) throws {
        guard rank >= 1 else { throw ModelError.invalidConfig("--lora-rank must be at least 1 (got \(rank))") }
        guard !targets.isEmpty else { throw ModelError.invalidConfig("--lora-targets names no target") }
        let known = LoRATarget.available(in: c.family)
        if let t = targets.first(where: { !known.contains($0) }) {
            throw ModelError.invalidConfig("--lora-targets \(t.rawValue) is not a projection of a \(c.family.rawValue)-family model; it has \(known.map(\.rawValue).joined(separator: ", "))")
        }
        for t in targets {
            let m = min(t.inDim(c), t.outDim(c))
            guard rank <= m else {
                throw ModelError.invalidConfig("--lora-rank \(rank) exceeds min(in, out) = \(m) of target \(t.rawValue)")
            }
        }
        guard alpha > 0, alpha.isFinite else { throw ModelError.invalidConfig("--lora-alpha must be positive (got \(alpha))") }
        guard dropout >= 0 && dropout < 1 else { throw ModelError.invalidConfig("--lora-dropout must be in [0, 1) (got \(dropout))") }
    }
}
