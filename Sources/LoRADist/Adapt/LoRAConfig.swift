import Foundation

/// The weight matrices LoRA can adapt (loralib's names in comments). q, k, v live inside the fused
/// c_attn and are adapted separately, like loralib's MergedLinear.
public enum LoRATarget: String, CaseIterable, Codable, Sendable {
    case q, k, v
    case o                    // attn.c_proj
    case mlpIn = "mlp_in"     // mlp.c_fc
    case mlpOut = "mlp_out"   // mlp.c_proj

    /// Column-parallel targets shard their output (B's rows); row-parallel ones their input (A's columns).
    public var isColumnParallel: Bool {
        switch self {
        case .q, .k, .v, .mlpIn: return true
        case .o, .mlpOut: return false
        }
    }

    public func inDim(_ c: GPTConfig) -> Int { self == .mlpOut ? c.ffn : c.nEmbd }
    public func outDim(_ c: GPTConfig) -> Int { self == .mlpIn ? c.ffn : c.nEmbd }

    /// The HF base weight this target adapts.
    public var baseModule: String {
        switch self {
        case .q, .k, .v: return "attn.c_attn"
        case .o: return "attn.c_proj"
        case .mlpIn: return "mlp.c_fc"
        case .mlpOut: return "mlp.c_proj"
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
