import Foundation

/// Shape of a GPT-2-architecture model (HF GPT2Config's names in comments).
/// The decoder architectures lora-dist knows.
public enum ModelFamily: String, Codable, Sendable, CaseIterable {
    /// GPT-2: LayerNorm, learned positions, a GELU MLP, every linear with a bias, the head tied to wte.
    case gpt2
    /// Llama and its kin (Qwen2, Mistral, SmolLM): RMSNorm, rotary positions, a gated SiLU MLP
    /// (gate, up, down), grouped-query attention, no biases but optionally on q/k/v, a tied or own head.
    case llama
}

public struct GPTConfig: Equatable, Sendable {
    public var nLayer: Int  // n_layer
    public var nEmbd: Int  // n_embd (d)
    public var nHead: Int  // n_head
    public var vocabSize: Int  // vocab_size (real tokens; padded for sharding, see paddedVocab)
    public var nPositions: Int  // n_positions (context length)
    /// LayerNorm's ε, or RMSNorm's (rms_norm_eps) in the Llama family.
    public var lnEps: Float = 1e-5
    public var family: ModelFamily = .gpt2
    /// Key/value heads (num_key_value_heads): fewer than nHead is grouped-query attention. GPT-2's
    /// follow nHead (and its MLP width 4·d follows nEmbd), whatever the shape is changed to later.
    public var nKVHead: Int {
        get { kvHeads ?? nHead }
        set { kvHeads = newValue }
    }
    /// Width of the MLP's hidden layer: 4·d for GPT-2, intermediate_size in the Llama family.
    public var ffn: Int {
        get { ffnWidth ?? 4 * nEmbd }
        set { ffnWidth = newValue }
    }
    private var kvHeads: Int?, ffnWidth: Int?
    /// Rotary embeddings' base (rope_theta) and Llama 3's frequency scaling, if any.
    public var ropeTheta: Double = 10_000
    public var ropeScaling: RotaryTable.Llama3Scaling?
    /// The LM head is the token embedding (GPT-2; tie_word_embeddings), or a matrix of its own.
    public var tiedHead = true
    /// q, k and v have biases (GPT-2 has every bias; Qwen2 these alone; Llama none).
    public var qkvBias = true

    public init(nLayer: Int, nEmbd: Int, nHead: Int, vocabSize: Int, nPositions: Int, lnEps: Float = 1e-5) {
        self.nLayer = nLayer
        self.nEmbd = nEmbd
        self.nHead = nHead
        self.vocabSize = vocabSize
        self.nPositions = nPositions
        self.lnEps = lnEps
    }

    /// A Llama-family shape.
    public static func llama(
        nLayer: Int, nEmbd: Int, nHead: Int, nKVHead: Int, ffn: Int, vocabSize: Int, nPositions: Int,
        normEps: Float = 1e-5, ropeTheta: Double = 10_000, ropeScaling: RotaryTable.Llama3Scaling? = nil,
        tiedHead: Bool = false, qkvBias: Bool = false
    ) -> GPTConfig {
        var c = GPTConfig(
            nLayer: nLayer, nEmbd: nEmbd, nHead: nHead, vocabSize: vocabSize, nPositions: nPositions, lnEps: normEps)
        c.family = .llama
        c.nKVHead = nKVHead
        c.ffn = ffn
        c.ropeTheta = ropeTheta
        c.ropeScaling = ropeScaling
        c.tiedHead = tiedHead
        c.qkvBias = qkvBias
        return c
    }

    public var headDim: Int { nEmbd / nHead }
    /// The vocabulary rounded up to a multiple of 8, so tensor-parallel degrees 1, 2, 4 and 8 divide it.
    /// Padded rows of the embedding are zero and padded logits never enter the softmax.
    public var paddedVocab: Int { (vocabSize + 7) / 8 * 8 }

    /// Parameters as the model defines them (real vocabulary, tied head counted once).
    public var parameterCount: Int {
        let d = nEmbd
        switch family {
        case .gpt2:
            let perLayer = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
            return vocabSize * d + nPositions * d + nLayer * perLayer + 2 * d
        case .llama:
            let q = nHead * headDim
            let kv = nKVHead * headDim
            let attention = d * (q + 2 * kv) + (qkvBias ? q + 2 * kv : 0) + q * d
            let perLayer = 2 * d + attention + 3 * d * ffn
            return vocabSize * d * (tiedHead ? 1 : 2) + nLayer * perLayer + d
        }
    }

    /// Named shapes: `tiny` (the built-in model), `gpt2` (124M), `gpt2-medium` (355M), and larger ones
    /// for cost predictions.
    public static func named(_ name: String) -> GPTConfig? {
        switch name {
        case "tiny": return GPTConfig(nLayer: 4, nEmbd: 128, nHead: 4, vocabSize: 257, nPositions: 192)
        case "gpt2": return GPTConfig(nLayer: 12, nEmbd: 768, nHead: 12, vocabSize: 50257, nPositions: 1024)
        case "gpt2-medium": return GPTConfig(nLayer: 24, nEmbd: 1024, nHead: 16, vocabSize: 50257, nPositions: 1024)
        case "gpt2-large": return GPTConfig(nLayer: 36, nEmbd: 1280, nHead: 20, vocabSize: 50257, nPositions: 1024)
        case "gpt2-xl": return GPTConfig(nLayer: 48, nEmbd: 1600, nHead: 25, vocabSize: 50257, nPositions: 1024)
        // Llama-family shapes (random initialisation only, for tests and benchmarks): a small one on
        // the byte vocabulary, and the shapes of SmolLM2-135M and Qwen2.5-0.5B as published.
        case "llama-tiny":
            return .llama(
                nLayer: 4, nEmbd: 128, nHead: 4, nKVHead: 2, ffn: 352, vocabSize: 257, nPositions: 192, normEps: 1e-5)
        case "smollm2-135m":
            return .llama(
                nLayer: 30, nEmbd: 576, nHead: 9, nKVHead: 3, ffn: 1536, vocabSize: 49152, nPositions: 8192,
                normEps: 1e-5, ropeTheta: 100_000, tiedHead: true)
        case "qwen2.5-0.5b":
            return .llama(
                nLayer: 24, nEmbd: 896, nHead: 14, nKVHead: 2, ffn: 4864, vocabSize: 151_936, nPositions: 32768,
                normEps: 1e-6, ropeTheta: 1_000_000, tiedHead: true, qkvBias: true)
        default: return nil
        }
    }
    /// The shapes the commands offer.
    public static let names = [
        "tiny", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama-tiny", "smollm2-135m", "qwen2.5-0.5b"
    ]

    /// Checks the shape itself (independent of parallelism).
    public func validate() throws {
        func bad(_ m: String) -> ModelError { .invalidConfig(m) }
        guard nLayer >= 1 else { throw bad("--layers must be at least 1 (got \(nLayer))") }
        guard nEmbd >= 1, nHead >= 1 else { throw bad("--dim and --heads must be positive") }
        guard nEmbd % nHead == 0 else { throw bad("--dim \(nEmbd) is not divisible by --heads \(nHead)") }
        guard vocabSize >= 2 else { throw bad("--vocab must be at least 2 (got \(vocabSize))") }
        guard nPositions >= 2 else { throw bad("--context must be at least 2 (got \(nPositions))") }
        guard family == .llama else { return }
        guard nKVHead >= 1, nHead % nKVHead == 0 else {
            throw bad(
                """
                the \(nHead) query heads do not form groups over \(nKVHead) key/value heads (num_key_value_heads must \
                divide num_attention_heads)
                """
            )
        }
        guard ffn >= 1 else { throw bad("the MLP width (intermediate_size) must be positive (got \(ffn))") }
        guard headDim % 2 == 0 else { throw bad("rotary embeddings need an even head width; d / heads = \(headDim)") }
        guard ropeTheta > 0, ropeTheta.isFinite else { throw bad("rope_theta must be positive (got \(ropeTheta))") }
    }
}

extension GPTConfig: Codable, CustomStringConvertible {
    enum CodingKeys: String, CodingKey {
        case nLayer, nEmbd, nHead, vocabSize, nPositions, lnEps, family, nKVHead, ffn, ropeTheta, ropeScaling, tiedHead,
            qkvBias
    }

    /// A GPT-2 shape is written with its six fields alone, as before the Llama family existed, so
    /// adapter files and run fingerprints of GPT-2 models keep their bytes.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(nLayer, forKey: .nLayer)
        try c.encode(nEmbd, forKey: .nEmbd)
        try c.encode(nHead, forKey: .nHead)
        try c.encode(vocabSize, forKey: .vocabSize)
        try c.encode(nPositions, forKey: .nPositions)
        try c.encode(lnEps, forKey: .lnEps)
        guard family != .gpt2 else { return }
        try c.encode(family, forKey: .family)
        try c.encode(nKVHead, forKey: .nKVHead)
        try c.encode(ffn, forKey: .ffn)
        try c.encode(ropeTheta, forKey: .ropeTheta)
        try c.encodeIfPresent(ropeScaling, forKey: .ropeScaling)
        try c.encode(tiedHead, forKey: .tiedHead)
        try c.encode(qkvBias, forKey: .qkvBias)
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            nLayer: try c.decode(Int.self, forKey: .nLayer), nEmbd: try c.decode(Int.self, forKey: .nEmbd),
            nHead: try c.decode(Int.self, forKey: .nHead), vocabSize: try c.decode(Int.self, forKey: .vocabSize),
            nPositions: try c.decode(Int.self, forKey: .nPositions),
            lnEps: try c.decodeIfPresent(Float.self, forKey: .lnEps) ?? 1e-5)
        guard let f = try c.decodeIfPresent(ModelFamily.self, forKey: .family), f != .gpt2 else { return }
        family = f
        nKVHead = try c.decode(Int.self, forKey: .nKVHead)
        ffn = try c.decode(Int.self, forKey: .ffn)
        ropeTheta = try c.decode(Double.self, forKey: .ropeTheta)
        ropeScaling = try c.decodeIfPresent(RotaryTable.Llama3Scaling.self, forKey: .ropeScaling)
        tiedHead = try c.decode(Bool.self, forKey: .tiedHead)
        qkvBias = try c.decode(Bool.self, forKey: .qkvBias)
    }

    /// GPT-2 shapes print as they always have (a run's fingerprint holds this text, so checkpoints
    /// of earlier versions still resume); Llama-family shapes add their own fields.
    public var description: String {
        let gpt2 =
            """
            nLayer: \(nLayer), nEmbd: \(nEmbd), nHead: \(nHead), vocabSize: \(vocabSize), nPositions: \(nPositions), \
            lnEps: \(lnEps)
            """
        guard family != .gpt2 else { return "GPTConfig(\(gpt2))" }
        let scaling =
            ropeScaling.map {
                """
                llama3(factor \($0.factor), low \($0.lowFreqFactor), high \($0.highFreqFactor), original \
                \($0.originalMaxPositions))
                """
            } ?? "none"
        return
            """
            GPTConfig(\(gpt2), family: \(family.rawValue), nKVHead: \(nKVHead), ffn: \(ffn), ropeTheta: \(ropeTheta), \
            ropeScaling: \(scaling), tiedHead: \(tiedHead), qkvBias: \(qkvBias))
            """
    }
}

/// Errors of model construction and loading; messages name the option or file at fault.
public enum ModelError: Error, CustomStringConvertible {
    case invalidConfig(String)
    case invalidParallel(String)
    case shapeMismatch(String)
    case missingTensor(String)

    public var description: String {
        switch self {
        case .invalidConfig(let m), .invalidParallel(let m), .shapeMismatch(let m), .missingTensor(let m): return m
        }
    }
}
