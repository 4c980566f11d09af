import Foundation

/// Base-model checkpoints: lora-dist's own (a safetensors file whose `__metadata__.config` holds
/// the shape) and Hugging Face GPT-2 directories (model.safetensors + config.json, Conv1D [in, out]
/// weights, tied lm_head), with or without the "transformer." prefix.
public enum ModelFiles {
    /// The model shape: from the file's metadata, else from config.json beside it.
    public static func config(of f: SafeTensorsFile, dir: String?) throws -> GPTConfig {
        if let s = f.metadata["config"] { return try parse(Data(s.utf8), source: f.path + " (__metadata__.config)") }
        let dirPath = dir ?? URL(fileURLWithPath: f.path).deletingLastPathComponent().path
        let cfg = dirPath + "/config.json"
        guard let d = FileManager.default.contents(atPath: cfg) else {
            throw IOError.cannotRead(cfg, "no model shape: the checkpoint has no config metadata and there is no config.json beside it")
        }
        return try parse(d, source: cfg)
    }

    static func parse(_ d: Data, source: String) throws -> GPTConfig {
        guard let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any] else { throw IOError.corrupt(source, "not a JSON object") }
        func int(_ k: String) throws -> Int {
            guard let v = (o[k] as? NSNumber)?.intValue else { throw IOError.corrupt(source, "missing integer \(k)") }
            return v
        }
        // GPT-2 variants config.json can ask for that lora-dist does not compute: refuse, rather than run other math.
        if let t = o["model_type"] as? String, t != "gpt2" { throw IOError.unsupported(source, "model_type \(t): lora-dist runs GPT-2 (gpt2)") }
        if let a = o["activation_function"] as? String, !["gelu_new", "gelu_pytorch_tanh", "gelu_fast"].contains(a) {
            throw IOError.unsupported(source, "activation_function \(a): lora-dist computes GPT-2's tanh GELU (gelu_new)")
        }
        if let inner = (o["n_inner"] as? NSNumber)?.intValue, inner != 4 * (try int("n_embd")) {
            throw IOError.unsupported(source, "n_inner \(inner): lora-dist's MLP is 4·n_embd wide")
        }
        for (k, want) in [("scale_attn_weights", true), ("scale_attn_by_inverse_layer_idx", false), ("tie_word_embeddings", true)] {
            if let v = o[k] as? Bool, v != want { throw IOError.unsupported(source, "\(k) = \(v): lora-dist's GPT-2 has \(k) = \(want)") }
        }
        let eps = (o["layer_norm_epsilon"] as? NSNumber)?.floatValue ?? 1e-5
        let c = GPTConfig(nLayer: try int("n_layer"), nEmbd: try int("n_embd"), nHead: try int("n_head"),
                          vocabSize: try int("vocab_size"), nPositions: try int("n_positions"), lnEps: eps)
        try c.validate()
        return c
    }

    /// Maps lora-dist's (HF GPT2LMHeadModel) names to the file's.
    public static func renamer(for f: SafeTensorsFile) -> (String) -> String {
        if f.infos["transformer.wte.weight"] != nil { return { $0 } }
        return { $0.hasPrefix("transformer.") ? String($0.dropFirst("transformer.".count)) : $0 }
    }

    /// HF config.json for a shape (GPT2LMHeadModel, tanh GELU, no dropout at inference).
    public static func hfConfigJSON(_ c: GPTConfig) -> [String: Any] {
        ["model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": c.nLayer, "n_embd": c.nEmbd, "n_head": c.nHead,
         "vocab_size": c.vocabSize, "n_positions": c.nPositions, "n_ctx": c.nPositions, "layer_norm_epsilon": Double(c.lnEps),
         "activation_function": "gelu_new", "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": true]
    }

    /// The files of a Hugging Face model directory besides its weights and config (tokenizer,
    /// generation settings): what a merged model needs to load as the base did.
    public static let hfSideFiles = ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                                     "special_tokens_map.json", "added_tokens.json", "generation_config.json"]

    /// The directory a base lives in: the `--base` directory itself, or the one holding the base
    /// file (where config.json and tokenizer files sit beside it); nil for a random initialisation
    /// or a path that does not exist.
    public static func directory(of spec: BaseSpec) -> String? {
        guard case .file(let path) = spec else { return nil }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return nil }
        return isDir.boolValue ? path : URL(fileURLWithPath: path).deletingLastPathComponent().path
    }

    /// The HF directory a base came from (its directory holds config.json); nil for a lora-dist
    /// file or a random initialisation.
    public static func hfDirectory(of spec: BaseSpec) -> String? {
        directory(of: spec).flatMap { FileManager.default.fileExists(atPath: $0 + "/config.json") ? $0 : nil }
    }

    /// Writes a whole (TP = 1) model: HF names, the shape in `__metadata__.config`, and an HF
    /// config.json beside it when `hfConfig` is set. With `hfBase` (the HF directory the base came
    /// from), config.json keeps the base's other keys (token ids, ...) and the tokenizer and
    /// generation files are copied, so the directory loads in transformers as the base did.
    public static func save(_ w: BaseWeights, to path: String, hfConfig: Bool = false, hfBase: String? = nil) throws {
        let tensors = try w.fullTensors().map { (name: $0.key, shape: $0.value.shape, data: $0.value.data) }
        let c = w.config
        let meta = ["config": String(decoding: try JSONSerialization.data(withJSONObject: [
            "n_layer": c.nLayer, "n_embd": c.nEmbd, "n_head": c.nHead, "vocab_size": c.vocabSize, "n_positions": c.nPositions,
            "layer_norm_epsilon": Double(c.lnEps)], options: [.sortedKeys]), as: UTF8.self), "format": "pt"]
        try SafeTensorsFile.write(path: path, tensors: tensors, metadata: meta)
        if hfConfig {
            let dir = URL(fileURLWithPath: path).deletingLastPathComponent().path
            var config = hfConfigJSON(c)
            if let b = hfBase, let data = FileManager.default.contents(atPath: b + "/config.json"),
               let base = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
                config = base.merging(config) { _, ours in ours }
            }
            try writeFileAtomically(try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys]),
                                    to: dir + "/config.json")
            if let b = hfBase {
                for name in hfSideFiles {
                    guard let data = FileManager.default.contents(atPath: b + "/" + name) else { continue }
                    try writeFileAtomically(data, to: dir + "/" + name)
                }
            }
        }
    }

    /// Where the built-in base model lives: $LORA_DIST_HOME/models, the share directory beside the
    /// installed binary, or the source tree the binary was built in.
    public static func builtinBase() throws -> String {
        let name = "tiny-base.safetensors"
        var candidates: [String] = []
        if let h = ProcessInfo.processInfo.environment["LORA_DIST_HOME"] { candidates.append(h + "/models/" + name) }
        // The running binary's real path (argv[0] may be a bare name found on PATH).
        let exe: URL
        if let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            exe = URL(fileURLWithPath: link)
        } else {
            exe = Bundle.main.executableURL?.resolvingSymlinksInPath() ?? URL(fileURLWithPath: CommandLine.arguments[0])
        }
        candidates.append(exe.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("share/lora-dist/" + name).path)
        var dir = exe.deletingLastPathComponent()
        for _ in 0..<6 {
            candidates.append(dir.appendingPathComponent("models/" + name).path)
            dir = dir.deletingLastPathComponent()
        }
        candidates.append(FileManager.default.currentDirectoryPath + "/models/" + name)
        for c in candidates where FileManager.default.fileExists(atPath: c) { return c }
        var seen = Set<String>()
        let looked = candidates.filter { seen.insert($0).inserted }
        throw IOError.cannotRead(name, "the built-in base model was not found (looked in \(looked.joined(separator: ", "))); run launch/setup, or pass --base")
    }
}
