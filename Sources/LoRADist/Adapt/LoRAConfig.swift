import Foundation

/// The weight matrices LoRA can adapt. GPT-2 (loralib's names in comments): q, k, v live inside
/// the fused c_attn and are adapted separately, like loralib's MergedLinear. The Llama family: q,
/// k, v, o (q_proj … o_proj) and the MLP's gate, up and down projections, under HF's names.
public enum LoRATarget: String, CaseIterable, Codable, Sendable {
    case q, k, v
    case o  // attn.c_proj; o_proj
    case mlpIn = "mlp_in"  // mlp.c_fc (GPT-2)
    case mlpOut = "mlp_out"  // mlp.c_proj (GPT-2)
    case gate, up, down  // mlp.gate_proj, mlp.up_proj, mlp.down_proj (Llama family)

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

    /// The module PEFT names this target by in `layer` (what its patterns match): HF's full name.
    public func moduleName(layer: Int, _ family: ModelFamily) -> String {
        (family == .gpt2 ? "transformer.h." : "model.layers.") + "\(layer)." + baseModule(family)
    }

    /// The HF base weight this target adapts, within a block (GPT-2's `transformer.h.L.`, the Llama family's
    /// `model.layers.L.`).
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

/// LoRA's hyper-parameters: h = W0·x + s·B·A·x with s = α/r (or α/√r with rsLoRA). As PEFT has
/// them, `rankPattern` and `alphaPattern` give some modules their own r and α: a key K applies to
/// the module named N (HF's full name, `model.layers.0.self_attn.q_proj`, GPT-2's
/// `transformer.h.0.attn.c_attn`) when the regular expression `(.*\.)?(K)$` matches N from its
/// start (PEFT's get_pattern_key). PEFT takes the first matching key in the file's order, which
/// JSON objects do not keep here, so keys matching one module with different values are refused.
/// Without patterns (nil, never empty) every slot has `rank` and `scale`.
public struct LoRAConfig: Codable, Equatable, Sendable {
    public var rank: Int = 4
    public var alpha: Float = 32
    public var targets: [LoRATarget] = [.q, .v]
    public var dropout: Float = 0
    public var initA: LoRAInit = .gaussian
    public var rsLoRA = false
    public var rankPattern: [String: Int]?
    public var alphaPattern: [String: Float]?

    public init(
        rank: Int = 4, alpha: Float = 32, targets: [LoRATarget] = [.q, .v], dropout: Float = 0,
        initA: LoRAInit = .gaussian, rsLoRA: Bool = false, rankPattern: [String: Int]? = nil,
        alphaPattern: [String: Float]? = nil
    ) {
        self.rank = rank
        self.alpha = alpha
        self.targets = LoRATarget.allCases.filter { targets.contains($0) }  // canonical order
        self.dropout = dropout
        self.initA = initA
        self.rsLoRA = rsLoRA
        self.rankPattern = rankPattern?.isEmpty == false ? rankPattern : nil
        self.alphaPattern = alphaPattern?.isEmpty == false ? alphaPattern : nil
    }

    public var scale: Float { scale(alpha: alpha, rank: rank) }

    func scale(alpha: Float, rank: Int) -> Float { rsLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank) }

    /// The rank and scale of `target` in `layer`: `rank` and `scale` unless a pattern names its module.
    public func slot(layer: Int, target: LoRATarget, family: ModelFamily) -> (rank: Int, scale: Float) {
        guard rankPattern != nil || alphaPattern != nil else { return (rank, scale) }
        let name = target.moduleName(layer: layer, family)
        let r = (try? Self.patternValue(rankPattern ?? [:], name)) ?? rank
        let a = (try? Self.patternValue(alphaPattern ?? [:], name)) ?? alpha
        return (r, scale(alpha: a, rank: r))
    }

    /// The largest rank of any slot (the width of the per-slot activation buffers).
    public func maxRank(for c: GPTConfig) -> Int {
        guard rankPattern != nil else { return rank }
        return (0..<c.nLayer).flatMap { l in targets.map { slot(layer: l, target: $0, family: c.family).rank } }.max()
            ?? rank
    }

    /// PEFT's get_pattern_key as a value: the value of the keys matching `module` (nil when none
    /// does); throws for a key that is no regular expression or keys that match with different values.
    public static func patternValue<V: Hashable>(_ p: [String: V], _ module: String) throws -> V? {
        var hits = Set<V>()
        for (k, v) in p {
            guard let hit = module.wholeMatch(regex: "(.*\\.)?(\(k))") else {
                throw ModelError.invalidConfig(
                    "pattern key \(k) (rank_pattern, alpha_pattern) is not a regular expression")
            }
            if hit { hits.insert(v) }
        }
        guard hits.count <= 1 else {
            throw ModelError.invalidConfig(
                "several pattern keys (rank_pattern, alpha_pattern) with different values match \(module)")
        }
        return hits.first
    }

    /// A and B elements over the whole model: r·(in + out) per target and layer (each slot's own r).
    public func parameterCount(for c: GPTConfig) -> Int {
        (0..<c.nLayer).reduce(0) { n, l in
            n
                + targets.reduce(0) {
                    $0 + slot(layer: l, target: $1, family: c.family).rank * ($1.inDim(c) + $1.outDim(c))
                }
        }
    }

    public func validate(for c: GPTConfig) throws {
        guard rank >= 1 else { throw ModelError.invalidConfig("--lora-rank must be at least 1 (got \(rank))") }
        guard !targets.isEmpty else { throw ModelError.invalidConfig("--lora-targets names no target") }
        let known = LoRATarget.available(in: c.family)
        if let t = targets.first(where: { !known.contains($0) }) {
            throw ModelError.invalidConfig(
                """
                --lora-targets \(t.rawValue) is not a projection of a \(c.family.rawValue)-family model; it has \
                \(known.map(\.rawValue).joined(separator: ", "))
                """
            )
        }
        if let e = rankPattern?.first(where: { $0.value < 1 }) {
            throw ModelError.invalidConfig("rank_pattern gives \(e.key) rank \(e.value): at least 1")
        }
        if let e = alphaPattern?.first(where: { !($0.value > 0 && $0.value.isFinite) }) {
            throw ModelError.invalidConfig("alpha_pattern gives \(e.key) alpha \(e.value): it must be positive")
        }
        for l in 0..<c.nLayer {
            for t in targets {
                let name = t.moduleName(layer: l, c.family)
                _ = try Self.patternValue(rankPattern ?? [:], name)
                _ = try Self.patternValue(alphaPattern ?? [:], name)
                let r = slot(layer: l, target: t, family: c.family).rank
                let m = min(t.inDim(c), t.outDim(c))
                guard r <= m else {
                    throw ModelError.invalidConfig(
                        r == rank && rankPattern == nil
                            ? "--lora-rank \(rank) exceeds min(in, out) = \(m) of target \(t.rawValue)"
                            : "LoRA rank \(r) of \(name) exceeds min(in, out) = \(m)")
                }
            }
        }
        guard alpha > 0, alpha.isFinite else {
            throw ModelError.invalidConfig("--lora-alpha must be positive (got \(alpha))")
        }
        guard dropout >= 0 && dropout < 1 else {
            throw ModelError.invalidConfig("--lora-dropout must be in [0, 1) (got \(dropout))")
        }
    }
}

/// The run fingerprint (and any log) prints a config as Swift prints a struct; the patterns appear
/// only when set, so a config without them prints as it did before they existed (and checkpoints
/// of such runs still resume).
extension LoRAConfig: CustomReflectable {
    public var customMirror: Mirror {
        var children: [(label: String?, value: Any)] = [
            ("rank", rank), ("alpha", alpha), ("targets", targets), ("dropout", dropout),
            ("initA", initA), ("rsLoRA", rsLoRA)
        ]
        if let rankPattern { children.append(("rankPattern", rankPattern)) }
        if let alphaPattern { children.append(("alphaPattern", alphaPattern)) }
        return Mirror(self, children: children, displayStyle: .struct)
    }
}

extension String {
    /// Whether the regular expression `regex` (as Python's `re` writes one, from a user's file)
    /// matches all of this string; nil when it is no regular expression. Swift's own Regex:
    /// Foundation's NSRegularExpression leaks what it allocated for a pattern it then refuses
    /// (found by fuzzing PEFT's target_modules).
    func wholeMatch(regex: String) -> Bool? {
        guard let re = try? Regex(regex) else { return nil }
        return wholeMatch(of: re) != nil
    }
}
