import Foundation

/// Typed reads of a config.json object whose messages name the file, the key and what was found.
struct ConfigReader {
    let o: [String: Any]
    let source: String
    /// What an absurd size is beyond, in messages ("any GPT-2").
    var kind = "any GPT-2"

    func present(_ k: String) -> Any? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        return v
    }

    func int(_ k: String) throws -> Int? {
        guard let v = present(k) else { return nil }
        guard let n = v as? NSNumber, !ModelFiles.isBool(n), n.doubleValue.rounded() == n.doubleValue,
            abs(n.doubleValue) < 9e15
        else {
            throw IOError.corrupt(source, "\(k) must be a whole number, got \(ModelFiles.describe(v))")
        }
        return Int(n.doubleValue)
    }

    /// A positive whole number within `ModelFiles.limits`.
    func required(_ k: String) throws -> Int {
        guard let v = try int(k) else { throw IOError.corrupt(source, "missing integer \(k)") }
        return try positive(k, v)
    }

    func positive(_ k: String, _ v: Int) throws -> Int {
        guard v >= 1 else { throw IOError.corrupt(source, "\(k) must be at least 1, got \(v)") }
        if let limit = ModelFiles.limits.first(where: { $0.key == k })?.max, v > limit {
            throw IOError.corrupt(source, "\(k) \(v) is beyond \(kind) (at most \(limit) here); check the file")
        }
        return v
    }

    func string(_ k: String) throws -> String? {
        guard let v = present(k) else { return nil }
        guard let s = v as? String else {
            throw IOError.corrupt(source, "\(k) must be a string, got \(ModelFiles.describe(v))")
        }
        return s
    }

    func bool(_ k: String) throws -> Bool? {
        guard let v = present(k) else { return nil }
        guard let n = v as? NSNumber, ModelFiles.isBool(n) else {
            throw IOError.corrupt(source, "\(k) must be true or false, got \(ModelFiles.describe(v))")
        }
        return n.boolValue
    }

    func number(_ k: String) throws -> Double? {
        guard let v = present(k) else { return nil }
        guard let n = v as? NSNumber, !ModelFiles.isBool(n), n.doubleValue.isFinite else {
            throw IOError.corrupt(source, "\(k) must be a number, got \(ModelFiles.describe(v))")
        }
        return n.doubleValue
    }

    /// A normalisation ε: a small positive number.
    func epsilon(_ k: String) throws -> Float? {
        guard let v = present(k) else { return nil }
        guard let n = v as? NSNumber, !ModelFiles.isBool(n), n.doubleValue > 0, n.doubleValue < 1 else {
            throw IOError.corrupt(source, "\(k) must be a small positive number, got \(ModelFiles.describe(v))")
        }
        return n.floatValue
    }

    /// The object at `k`, read with the same rules (its keys named as "k.key" in messages).
    func object(_ k: String) throws -> ConfigReader? {
        guard let v = present(k) else { return nil }
        guard let d = v as? [String: Any] else {
            throw IOError.corrupt(source, "\(k) must be an object, got \(ModelFiles.describe(v))")
        }
        return ConfigReader(o: d, source: source + " (\(k))", kind: kind)
    }
}

/// The config.json of a Llama-architecture model as transformers writes it (`LlamaConfig`,
/// `Qwen2Config`, `MistralConfig`; the rotary settings either at the top level, as transformers 4
/// wrote them, or in `rope_parameters`, as transformers 5 does). Whatever would make the model
/// compute something else is refused with the key and what to do, never ignored.
enum LlamaConfigFile {
    static let modelTypes = ["llama", "qwen2", "mistral"]

    static func parse(_ top: ConfigReader, modelType: String) throws -> GPTConfig {
        var r = top
        r.kind = "any Llama-family model"
        let source = r.source
        func refuse(_ why: String) -> IOError { .unsupported(source, why) }
        if let act = try r.string("hidden_act"), act != "silu" {
            throw refuse("hidden_act \(act): lora-dist's Llama-family MLP is SwiGLU with SiLU (silu)")
        }
        let d = try r.required("hidden_size")
        let heads = try r.required("num_attention_heads")
        let layers = try r.required("num_hidden_layers")
        let ffn = try r.required("intermediate_size")
        let kv = try r.int("num_key_value_heads").map { try r.positive("num_key_value_heads", $0) } ?? heads
        let vocab = try r.required("vocab_size")
        var positions = try r.required("max_position_embeddings")
        guard d % heads == 0 else {
            throw IOError.corrupt(source, "hidden_size \(d) is not divisible by num_attention_heads \(heads)")
        }
        if let hd = try r.int("head_dim"), hd != d / heads {
            throw refuse(
                """
                head_dim \(hd) differs from hidden_size / num_attention_heads = \(d / heads); lora-dist supports \
                head_dim = hidden_size / num_attention_heads
                """
            )
        }
        if try r.bool("mlp_bias") == true {
            throw refuse("mlp_bias = true: lora-dist's Llama-family MLP has no biases")
        }
        // Biases: Qwen2 always has them on q, k and v; Llama's attention_bias would put one on o_proj too.
        var qkvBias = modelType == "qwen2"
        if try r.bool("attention_bias") == true {
            guard modelType == "qwen2" else {
                throw refuse(
                    """
                    attention_bias = true (biases on q, k, v and o_proj): lora-dist supports biases on q, k and v only \
                    (Qwen2)
                    """
                )
            }
            qkvBias = true
        }
        // A sliding window computes the same as full attention on sequences no longer than it.
        let sliding = modelType == "mistral" ? true : (try r.bool("use_sliding_window") ?? false)
        if sliding, let w = try r.int("sliding_window") {
            positions = min(positions, try r.positive("sliding_window", w))
        }
        let (theta, scaling) = try rope(r, source: source)
        let c = GPTConfig.llama(
            nLayer: layers, nEmbd: d, nHead: heads, nKVHead: kv, ffn: ffn, vocabSize: vocab, nPositions: positions,
            normEps: try r.epsilon("rms_norm_eps") ?? 1e-6, ropeTheta: theta, ropeScaling: scaling,
            tiedHead: try r.bool("tie_word_embeddings") ?? false, qkvBias: qkvBias)
        do { try c.validate() } catch { throw IOError.corrupt(source, "\(error)") }
        return c
    }

    /// rope_theta and the scaling: `rope_parameters` (transformers 5) or `rope_theta` and
    /// `rope_scaling` (transformers 4). Plain and Llama 3's scaling are computed; others refused.
    static func rope(_ r: ConfigReader, source: String) throws -> (Double, RotaryTable.Llama3Scaling?) {
        let params = try r.object("rope_parameters")
        let theta = try params?.number("rope_theta") ?? r.number("rope_theta") ?? 10_000
        guard theta > 0 else { throw IOError.corrupt(source, "rope_theta must be positive, got \(theta)") }
        guard let s = try params ?? r.object("rope_scaling") else { return (theta, nil) }
        let type = try s.string("rope_type") ?? s.string("type") ?? "default"
        switch type {
        case "default":
            return (theta, nil)
        case "llama3":
            func need(_ k: String) throws -> Double {
                guard let v = try s.number(k) else { throw IOError.corrupt(s.source, "rope type llama3 needs \(k)") }
                guard v > 0 else { throw IOError.corrupt(s.source, "\(k) must be positive, got \(v)") }
                return v
            }
            let low = try need("low_freq_factor")
            let high = try need("high_freq_factor")
            guard high > low else {
                throw IOError.corrupt(s.source, "high_freq_factor \(high) must exceed low_freq_factor \(low)")
            }
            guard let old = try s.int("original_max_position_embeddings") else {
                throw IOError.corrupt(s.source, "rope type llama3 needs original_max_position_embeddings")
            }
            return (
                theta,
                RotaryTable.Llama3Scaling(
                    factor: try need("factor"), lowFreqFactor: low, highFreqFactor: high,
                    originalMaxPositions: try s.positive("original_max_position_embeddings", old))
            )
        default:
            throw IOError.unsupported(
                source,
                "rope type \(type): lora-dist computes plain rotary embeddings (default) and Llama 3's scaling (llama3)"
            )
        }
    }
}
