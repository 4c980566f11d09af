import Foundation

/// Base-model checkpoints: lora-dist's own, of GPT-2 or the Llama family (a safetensors file whose
/// `__metadata__.config` holds the shape: GPT-2's six keys or a Llama-family config.json), and
/// Hugging Face GPT-2 directories (model.safetensors + config.json, Conv1D [in, out] weights, tied
/// lm_head), with or without the "transformer." prefix. `LlamaFiles` reads Llama-family directories.
public enum ModelFiles {
    /// The model shape: from the file's metadata, else from config.json beside it.
    public static func config(of f: SafeTensorsFile, dir: String?) throws -> GPTConfig {
        try configAndSource(of: f, dir: dir).0
    }

    /// The model shape and where it was read (for messages).
    static func configAndSource(of f: SafeTensorsFile, dir: String?) throws -> (GPTConfig, String) {
        if let s = f.metadata["config"] {
            let source = f.path + " (__metadata__.config)"
            return (try parse(Data(s.utf8), source: source), source)
        }
        let dirPath = dir ?? URL(fileURLWithPath: f.path).deletingLastPathComponent().path
        let cfg = dirPath + "/config.json"
        guard FileManager.default.fileExists(atPath: cfg) else {
            throw IOError.cannotRead(
                cfg,
                """
                no model shape: the checkpoint has no config metadata and there is no config.json beside it; put the \
                config.json the model was published with in \(dirPath)
                """
            )
        }
        let o = try TextFile.readJSON(
            cfg,
            emptyHint:
                """
                expected the model's Hugging Face GPT-2 configuration (n_layer, n_embd, n_head, vocab_size, n_positions)
                """
        )
        return (try parse(o, source: cfg), cfg)
    }

    /// Upper bounds well beyond any GPT-2 or Llama-family model (the largest real vocabularies have
    /// about 256 K tokens): a larger value is a mistake, refused before anything is allocated.
    public static let limits: [(key: String, max: Int)] = [
        ("n_layer", 4096), ("n_embd", 65536), ("n_head", 4096), ("vocab_size", 1 << 24), ("n_positions", 1 << 20),
        ("num_hidden_layers", 4096), ("hidden_size", 65536), ("num_attention_heads", 4096),
        ("num_key_value_heads", 4096),
        ("intermediate_size", 1 << 20), ("max_position_embeddings", 1 << 22)
    ]

    static func parse(_ d: Data, source: String) throws -> GPTConfig {
        guard let o = try? JSONSerialization.jsonObject(with: d) else {
            throw IOError.corrupt(source, "not valid JSON")
        }
        return try parse(o, source: source)
    }

    /// A JSON value as people see it, for messages.
    static func describe(_ v: Any) -> String {
        if let s = v as? String { return "the string \"\(s)\"" }
        if v is NSNull { return "null" }
        if let n = v as? NSNumber { return isBool(n) ? (n.boolValue ? "true" : "false") : "\(n)" }
        if v is [Any] { return "a list" }
        if v is [String: Any] { return "an object" }
        return "\(v)"
    }

    /// JSON true/false (NSNumber bridges them to and from numbers, so look at the stored type).
    static func isBool(_ n: NSNumber) -> Bool {
        let t = String(cString: n.objCType)
        return t == "c" || t == "B"
    }

    static func parse(_ value: Any, source: String) throws -> GPTConfig {
        guard let o = value as? [String: Any] else { throw IOError.corrupt(source, "not a JSON object") }
        let r = ConfigReader(o: o, source: source)
        if let t = try r.string("model_type"), t != "gpt2" {
            guard LlamaConfigFile.modelTypes.contains(t) else {
                throw IOError.unsupported(
                    source,
                    """
                    model_type \(t): lora-dist runs GPT-2 (gpt2) and the Llama family \
                    (\(LlamaConfigFile.modelTypes.joined(separator: ", ")))
                    """
                )
            }
            return try LlamaConfigFile.parse(r, modelType: t)
        }
        // GPT-2 variants config.json can ask for that lora-dist does not compute: refuse, rather than run other math.
        if let a = try r.string("activation_function"), !["gelu_new", "gelu_pytorch_tanh", "gelu_fast"].contains(a) {
            throw IOError.unsupported(
                source, "activation_function \(a): lora-dist computes GPT-2's tanh GELU (gelu_new)")
        }
        let nLayer = try r.required("n_layer")
        let nEmbd = try r.required("n_embd")
        let nHead = try r.required("n_head")
        let vocab = try r.required("vocab_size")
        let positions = try r.required("n_positions")
        if let inner = try r.int("n_inner"), inner != 4 * nEmbd {
            throw IOError.unsupported(source, "n_inner \(inner): lora-dist's MLP is 4·n_embd wide")
        }
        for (k, want) in [
            ("scale_attn_weights", true), ("scale_attn_by_inverse_layer_idx", false), ("tie_word_embeddings", true)
        ] {
            if let v = try r.bool(k), v != want {
                throw IOError.unsupported(source, "\(k) = \(v): lora-dist's GPT-2 has \(k) = \(want)")
            }
        }
        let eps = try r.epsilon("layer_norm_epsilon") ?? 1e-5
        guard nEmbd % nHead == 0 else {
            throw IOError.corrupt(source, "n_embd \(nEmbd) is not divisible by n_head \(nHead)")
        }
        let c = GPTConfig(
            nLayer: nLayer, nEmbd: nEmbd, nHead: nHead, vocabSize: vocab, nPositions: positions, lnEps: eps)
        try c.validate()
        return c
    }

    /// Checks the shape against the tensors before any weight is allocated, naming the key that
    /// disagrees: vocab_size and n_embd against wte, n_positions against wpe, n_layer against the
    /// blocks present, n_embd against each block's c_attn and c_fc.
    public static func checkShapes(
        _ c: GPTConfig, file f: SafeTensorsFile, rename: (String) -> String, configSource: String
    ) throws {
        let fileName = URL(fileURLWithPath: f.path).lastPathComponent
        func shape(_ name: String) throws -> [Int] {
            guard let i = f.infos[rename(name)] else {
                throw ModelError.missingTensor(
                    "\(f.path): tensor \(rename(name)) is missing (is this a GPT-2 checkpoint?)")
            }
            return i.shape
        }
        func disagree(_ key: String, _ value: Int, _ tensor: String, _ s: [Int], _ what: String) -> IOError {
            .corrupt(
                configSource,
                """
                \(key) is \(value) but tensor \(rename(tensor)) in \(fileName) has shape \(s) (\(what)); the config \
                and the weights belong to different models
                """
            )
        }
        let wte = try shape("transformer.wte.weight")
        let wpe = try shape("transformer.wpe.weight")
        guard wte.count == 2, wpe.count == 2 else {
            throw ModelError.shapeMismatch("\(f.path): wte \(wte) and wpe \(wpe) must be matrices")
        }
        if wte[0] != c.vocabSize {
            throw disagree("vocab_size", c.vocabSize, "transformer.wte.weight", wte, "\(wte[0]) token rows")
        }
        if wte[1] != c.nEmbd { throw disagree("n_embd", c.nEmbd, "transformer.wte.weight", wte, "width \(wte[1])") }
        if wpe[0] != c.nPositions {
            throw disagree("n_positions", c.nPositions, "transformer.wpe.weight", wpe, "\(wpe[0]) positions")
        }
        let blocks = Set(
            f.infos.keys.compactMap { k -> Int? in
                let parts = k.split(separator: ".")
                guard let h = parts.firstIndex(of: "h"), h + 1 < parts.count else { return nil }
                return Int(parts[h + 1])
            })
        if blocks.count != c.nLayer || (blocks.max() ?? -1) != c.nLayer - 1 {
            throw IOError.corrupt(
                configSource,
                """
                n_layer is \(c.nLayer) but \(fileName) holds \(blocks.count) blocks (h.\(blocks.min() ?? 0) … \
                h.\(blocks.max() ?? -1)); the config and the weights belong to different models
                """
            )
        }
        for l in 0..<c.nLayer {
            let attn = "transformer.h.\(l).attn.c_attn.weight"
            let fc = "transformer.h.\(l).mlp.c_fc.weight"
            let a = try shape(attn)
            let m = try shape(fc)
            if a != [c.nEmbd, 3 * c.nEmbd] {
                throw disagree("n_embd", c.nEmbd, attn, a, "needs [\(c.nEmbd), \(3 * c.nEmbd)]")
            }
            if m != [c.nEmbd, 4 * c.nEmbd] {
                throw disagree("n_embd", c.nEmbd, fc, m, "needs [\(c.nEmbd), \(4 * c.nEmbd)]")
            }
        }
    }

    /// The weights file (and the directory its config.json and tokenizer sit in) for `--base PATH`:
    /// a safetensors file, a directory with model.safetensors, or a Hugging Face hub cache entry
    /// (models--ORG--NAME, whose refs/main names the snapshot). A directory holding only PyTorch or
    /// sharded weights says how to convert them.
    public static func locate(_ path: String) throws -> (file: String, dir: String?) {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw IOError.cannotRead(path, "no such file or directory (--base)")
        }
        guard isDir.boolValue else { return (path, nil) }
        let dir = try snapshot(path) ?? path
        let fm = FileManager.default
        if fm.fileExists(atPath: dir + "/model.safetensors") { return (dir + "/model.safetensors", dir) }
        let convert =
            """
            python3 -c \"from transformers import GPT2LMHeadModel as M; \
            M.from_pretrained('\(dir)').save_pretrained('\(dir)', max_shard_size='100GB')\"
            """
        if fm.fileExists(atPath: dir + "/model.safetensors.index.json") {
            throw IOError.unsupported(
                dir,
                """
                its weights are sharded (model.safetensors.index.json); lora-dist reads one model.safetensors. Write \
                one with: \(convert)
                """
            )
        }
        for pt in ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "tf_model.h5", "flax_model.msgpack"]
        where fm.fileExists(atPath: dir + "/" + pt) {
            throw IOError.unsupported(
                dir,
                """
                it holds \(pt) but no model.safetensors; lora-dist reads safetensors only (never pickled weights). \
                Convert once with: \(convert)
                """
            )
        }
        throw IOError.cannotRead(
            dir + "/model.safetensors",
            """
            no such file: --base takes a safetensors file or a Hugging Face GPT-2 directory (model.safetensors + \
            config.json)
            """
        )
    }

    /// The snapshot directory of a hub cache entry (refs/main, else its only snapshot); nil when
    /// `dir` is not one.
    static func snapshot(_ dir: String) throws -> String? {
        let fm = FileManager.default
        let snaps = dir + "/snapshots"
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: snaps, isDirectory: &isDir), isDir.boolValue,
            !fm.fileExists(atPath: dir + "/config.json")
        else { return nil }
        if let ref = try? String(contentsOfFile: dir + "/refs/main", encoding: .utf8) {
            let s = snaps + "/" + ref.trimmingCharacters(in: .whitespacesAndNewlines)
            if fm.fileExists(atPath: s) { return s }
        }
        let all = ((try? fm.contentsOfDirectory(atPath: snaps)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
        guard all.count == 1 else {
            throw IOError.cannotRead(
                dir,
                all.isEmpty
                    ? "a hub cache entry without snapshots (download the model again)"
                    : """
                    a hub cache entry with \(all.count) snapshots and no refs/main; pass one of \
                    \(all.map { snaps + "/" + $0 }.joined(separator: ", "))
                    """
            )
        }
        return snaps + "/" + all[0]
    }

    /// Maps lora-dist's (HF GPT2LMHeadModel) names to the file's.
    public static func renamer(for f: SafeTensorsFile) -> (String) -> String {
        if f.infos["transformer.wte.weight"] != nil { return { $0 } }
        return { $0.hasPrefix("transformer.") ? String($0.dropFirst("transformer.".count)) : $0 }
    }

    /// HF config.json for a shape: GPT2LMHeadModel (tanh GELU, no dropout at inference), or
    /// LlamaForCausalLM (Qwen2ForCausalLM when q, k and v have biases).
    public static func hfConfigJSON(_ c: GPTConfig) -> [String: Any] {
        guard c.family == .llama else {
            return [
                "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": c.nLayer, "n_embd": c.nEmbd,
                "n_head": c.nHead,
                "vocab_size": c.vocabSize, "n_positions": c.nPositions, "n_ctx": c.nPositions,
                "layer_norm_epsilon": Double(c.lnEps),
                "activation_function": "gelu_new", "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "tie_word_embeddings": true
            ]
        }
        let qwen = c.qkvBias
        var o: [String: Any] = [
            "model_type": qwen ? "qwen2" : "llama", "architectures": [qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM"],
            "num_hidden_layers": c.nLayer, "hidden_size": c.nEmbd, "num_attention_heads": c.nHead,
            "num_key_value_heads": c.nKVHead,
            "head_dim": c.headDim, "intermediate_size": c.ffn, "vocab_size": c.vocabSize,
            "max_position_embeddings": c.nPositions,
            "rms_norm_eps": Double(c.lnEps), "rope_theta": c.ropeTheta, "hidden_act": "silu",
            "tie_word_embeddings": c.tiedHead,
            "attention_dropout": 0.0
        ]
        if !qwen {
            o["attention_bias"] = false
            o["mlp_bias"] = false
        }
        if let s = c.ropeScaling {
            o["rope_scaling"] = [
                "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.lowFreqFactor,
                "high_freq_factor": s.highFreqFactor, "original_max_position_embeddings": s.originalMaxPositions
            ]
        }
        return o
    }

    /// The files of a Hugging Face model directory besides its weights and config (tokenizer,
    /// generation settings): what a merged model needs to load as the base did.
    public static let hfSideFiles = [
        "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
        "special_tokens_map.json", "added_tokens.json", "generation_config.json"
    ]

    /// The directory a base lives in: the `--base` directory itself, or the one holding the base
    /// file (where config.json and tokenizer files sit beside it); nil for a random initialisation
    /// or a path that does not exist.
    public static func directory(of spec: BaseSpec) -> String? {
        guard case .file(let path) = spec else { return nil }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return nil }
        return isDir.boolValue
            ? ((try? snapshot(path)) ?? path) : URL(fileURLWithPath: path).deletingLastPathComponent().path
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
        try save(tensors: try w.fullTensors(), config: w.config, to: path, hfConfig: hfConfig, hfBase: hfBase)
    }

    /// Writes a whole model given as HF-named full tensors (`BaseWeights.fullTensors`, or
    /// `gatherFullTensors` at any TP degree), as `save(_:to:)` does.
    public static func save(
        tensors full: [String: (shape: [Int], data: [Float])], config c: GPTConfig, to path: String,
        hfConfig: Bool = false, hfBase: String? = nil
    ) throws {
        let tensors = full.sorted { $0.key < $1.key }.map { (name: $0.key, shape: $0.value.shape, data: $0.value.data) }
        // The shape, so the file alone loads again: GPT-2's six keys, or a Llama-family config.json.
        let shape: [String: Any] =
            c.family == .gpt2
            ? [
                "n_layer": c.nLayer, "n_embd": c.nEmbd, "n_head": c.nHead, "vocab_size": c.vocabSize,
                "n_positions": c.nPositions,
                "layer_norm_epsilon": Double(c.lnEps)
            ] : hfConfigJSON(c)
        let meta = [
            "config": String(
                decoding: try JSONSerialization.data(withJSONObject: shape, options: [.sortedKeys]), as: UTF8.self),
            "format": "pt"
        ]
        try SafeTensorsFile.write(path: path, tensors: tensors, metadata: meta)
        if hfConfig {
            let dir = URL(fileURLWithPath: path).deletingLastPathComponent().path
            let baseConfig = hfBase.flatMap { FileManager.default.contents(atPath: $0 + "/config.json") }
            if c.family == .llama, let data = baseConfig {
                // The base's config.json as it is: the merged weights have its shape and names.
                try writeFileAtomically(data, to: dir + "/config.json")
            } else {
                var config = hfConfigJSON(c)
                if let data = baseConfig, let base = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
                    config = base.merging(config) { _, ours in ours }
                }
                try writeFileAtomically(
                    try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys]),
                    to: dir + "/config.json")
            }
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
        candidates.append(
            exe.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent(
                "share/lora-dist/" + name
            ).path)
        var dir = exe.deletingLastPathComponent()
        for _ in 0..<6 {
            candidates.append(dir.appendingPathComponent("models/" + name).path)
            dir = dir.deletingLastPathComponent()
        }
        candidates.append(FileManager.default.currentDirectoryPath + "/models/" + name)
        for c in candidates where FileManager.default.fileExists(atPath: c) { return c }
        var seen = Set<String>()
        let looked = candidates.filter { seen.insert($0).inserted }
        throw IOError.cannotRead(
            name,
            """
            the built-in base model was not found (looked in \(looked.joined(separator: ", "))); run launch/setup, or \
            pass --base
            """
        )
    }
}
