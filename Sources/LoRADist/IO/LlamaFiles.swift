import Foundation

/// A Llama-family checkpoint directory as transformers writes it: config.json (`LlamaConfigFile`)
/// and the weights in one or several safetensors files (`SafeTensorsDirectorySource`), bf16 or
/// fp32, named as LlamaForCausalLM and Qwen2ForCausalLM name them ("model.layers.0...",
/// "lm_head.weight"), or without the "model." prefix, as a bare LlamaModel saves them. With a tied
/// head an lm_head tensor in the files is not read (transformers ties it to the embedding too).
public enum LlamaFiles {
    /// The shape (config.json) and the weights of `path` (the directory, or a hub cache entry),
    /// checked against each other before anything is allocated.
    public static func open(_ path: String) throws -> (config: GPTConfig, source: SafeTensorsDirectorySource) {
        let dir = try ModelFiles.snapshot(path) ?? path
        let configPath = dir + "/config.json"
        guard FileManager.default.fileExists(atPath: configPath) else {
            throw IOError.cannotRead(
                configPath,
                "no such file: a Hugging Face model directory has the config.json the model was published with")
        }
        let c = try ModelFiles.parse(
            try TextFile.readJSON(configPath, emptyHint: "expected the model's Hugging Face configuration"),
            source: configPath)
        guard c.family == .llama else {
            throw IOError.unsupported(
                configPath,
                """
                model_type gpt2: this reads Llama-family checkpoints \
                (\(LlamaConfigFile.modelTypes.joined(separator: ", ")))
                """
            )
        }
        var source = try SafeTensorsDirectorySource(dir: dir)
        source.rename = renamer(for: source.names)
        try checkShapes(c, source: source, configSource: configPath)
        return (c, source)
    }

    /// The checkpoint directory of `path` when its config.json names a model_type other than
    /// GPT-2's (`open` then reads it, or refuses a model type or setting it does not compute); nil
    /// for a file, a GPT-2 directory, or a directory without a readable config.json.
    public static func directory(_ path: String) throws -> String? {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else { return nil }
        let dir = try ModelFiles.snapshot(path) ?? path
        guard let data = FileManager.default.contents(atPath: dir + "/config.json"),
            let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let type = o["model_type"] as? String, type != "gpt2"
        else { return nil }
        return dir
    }

    /// The identity of a checkpoint (adapters and checkpoints are tied to it): config.json's bytes
    /// and every weight file's.
    public static func fingerprint(configPath: String?, source: SafeTensorsDirectorySource) throws -> String {
        var h = FNV1a()
        let parts = try (configPath.map { [$0] } ?? []).map(fileFingerprint) + source.paths.map(fileFingerprint)
        for b in parts.joined(separator: "|").utf8 { h.mix(UInt64(b)) }
        return h.hex
    }

    /// Maps the model's (LlamaForCausalLM's) names to the files': the same, or without "model.".
    public static func renamer(for names: Set<String>) -> (String) -> String {
        guard !names.contains("model.embed_tokens.weight"), names.contains("embed_tokens.weight") else { return { $0 } }
        return { $0.hasPrefix("model.") ? String($0.dropFirst("model.".count)) : $0 }
    }

    /// The config.json key each dimension of tensor `name` comes from, with its value.
    static func keys(of name: String, _ c: GPTConfig) -> [(key: String, value: Int)] {
        let d = ("hidden_size", c.nEmbd)
        let kv = ("num_key_value_heads", c.nKVHead)
        let ffn = ("intermediate_size", c.ffn)
        if name.hasSuffix("embed_tokens.weight") || name == "lm_head.weight" { return [("vocab_size", c.vocabSize), d] }
        if name.contains("k_proj.") || name.contains("v_proj.") { return [kv, d] }
        if name.contains("gate_proj.") || name.contains("up_proj.") { return [ffn, d] }
        if name.contains("down_proj.") { return [d, ffn] }
        return [d, d]
    }

    /// Checks the shape against the tensors, naming the config.json key that disagrees:
    /// num_hidden_layers against the layers present, tie_word_embeddings against lm_head, the
    /// q/k/v biases against the config's, then every tensor the model reads (vocab_size and
    /// hidden_size for the embedding, num_key_value_heads for k and v, intermediate_size for the MLP).
    public static func checkShapes(_ c: GPTConfig, source: SafeTensorsDirectorySource, configSource: String) throws {
        let names = source.names
        let embed = "model.embed_tokens.weight"
        guard names.contains(source.rename(embed)) else {
            throw ModelError.missingTensor(
                "\(source.dir): tensor \(source.rename(embed)) is missing (is this a Llama-family checkpoint?)")
        }
        func disagree(_ key: String, _ value: Int, _ tensor: String, _ s: [Int], _ what: String) throws -> IOError {
            let file = URL(fileURLWithPath: try source.location(of: tensor).path).lastPathComponent
            return .corrupt(
                configSource,
                """
                \(key) is \(value) but tensor \(source.rename(tensor)) in \(file) has shape \(s), \(what); the config \
                and the weights belong to different models
                """
            )
        }
        let layers = Set(
            names.compactMap { k -> Int? in
                let parts = k.split(separator: ".")
                guard let i = parts.firstIndex(of: "layers"), i + 1 < parts.count else { return nil }
                return Int(parts[i + 1])
            })
        if layers.count != c.nLayer || (layers.max() ?? -1) != c.nLayer - 1 {
            throw IOError.corrupt(
                configSource,
                """
                num_hidden_layers is \(c.nLayer) but the checkpoint in \(source.dir) holds \(layers.count) layers \
                (layers.\(layers.min() ?? 0) … layers.\(layers.max() ?? -1)); the config and the weights belong to \
                different models
                """
            )
        }
        if !c.tiedHead, !names.contains(source.rename("lm_head.weight")) {
            throw IOError.corrupt(
                configSource,
                """
                tie_word_embeddings is false (or absent, which means false for this model type) but \(source.dir) has \
                no lm_head.weight; if the head is the embedding, set \"tie_word_embeddings\": true
                """
            )
        }
        let qBias = source.rename("model.layers.0.self_attn.q_proj.bias")
        if !c.qkvBias, names.contains(qBias) {
            throw IOError.corrupt(
                configSource,
                """
                the checkpoint has \(qBias) but the config gives q, k and v no biases (attention_bias false, \
                model_type not qwen2); the config and the weights belong to different models
                """
            )
        }
        for slot in BaseLayout(layout: try TPLayout(config: c, degree: 1, rank: 0)).slots {
            let s = try source.shape(of: slot.name)
            guard s != slot.shape else { continue }
            let dim = s.count == slot.shape.count ? (0..<s.count).first { s[$0] != slot.shape[$0] }! : 0
            let k = keys(of: slot.name, c)[dim]
            throw try disagree(k.key, k.value, slot.name, s, "it needs \(slot.shape)")
        }
    }
}
