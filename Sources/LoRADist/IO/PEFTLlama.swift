import Foundation

/// PEFT's LoRA format for the Llama family (Llama, Qwen2, Mistral), in and out: keys
/// `base_model.model.model.layers.L.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight` and
/// `…mlp.{gate,up,down}_proj…`, A [r_m, in] and B [out, r_m] (k and v out = n_kv_head·head_dim),
/// one module to one lora-dist target. Per-module ranks and alphas (`rank_pattern`,
/// `alpha_pattern`) become the LoRA config's own patterns, so every slot keeps its r_m and
/// s_m = α_m/r_m (α_m/√r_m with `use_rslora`) and an export writes them back as they were.
/// Refused besides what GPT-2's reader refuses: a target adapted in some layers only
/// (`layers_to_transform`) and `target_modules` that do not name exactly the modules the file adapts.
extension PEFTAdapter {
    static let llamaPrefix = "base_model.model.model.layers."

    static func llamaKey(_ layer: Int, _ t: LoRATarget) -> String { llamaPrefix + "\(layer).\(t.baseModule(.llama))" }

    /// Whether PEFT's `target_modules` selects the module named `name`: a list of names matches a
    /// module equal to one or ending in "." + one, a string is a regular expression matching the
    /// whole name, and "all-linear" every projection of a block (the LM head excepted).
    static func targetModules(_ spec: Any, select name: String, _ path: String) throws -> Bool {
        if let list = spec as? [String] { return list.contains { name == $0 || name.hasSuffix("." + $0) } }
        guard let s = spec as? String else {
            throw IOError.corrupt(path, "target_modules is neither a list of names nor a string")
        }
        if s == "all-linear" { return true }
        guard let hit = name.wholeMatch(regex: s) else {
            throw IOError.corrupt(path, "target_modules \(s) is not a regular expression")
        }
        return hit
    }

    static func loadLlama(
        _ c: [String: Any], cfgPath: String, wPath: String, r0: Int, alpha0: Double, rs: Bool, model: GPTConfig
    ) throws -> Loaded {
        let f = try SafeTensorsFile(path: wPath)
        let known = LoRATarget.available(in: model.family)
        var layers: [LoRATarget: Set<Int>] = [:]
        for name in f.names {
            let rest = name.hasPrefix(llamaPrefix) ? name.dropFirst(llamaPrefix.count).split(separator: ".") : []
            if rest.count == 5, let l = Int(rest[0]), l >= model.nLayer {
                throw IOError.unsupported(
                    wPath,
                    """
                    tensor \(name) adapts layer \(l) but the base has \(model.nLayer) layers: the adapter was made for \
                    another base
                    """
                )
            }
            guard rest.count == 5, let l = Int(rest[0]), l >= 0, rest[4] == "weight",
                rest[3] == "lora_A" || rest[3] == "lora_B",
                let t = known.first(where: { $0.baseModule(.llama) == "\(rest[1]).\(rest[2])" })
            else {
                throw IOError.unsupported(
                    wPath,
                    """
                    tensor \(name) is not a LoRA weight of a Llama-family module lora-dist adapts (\(model.nLayer) \
                    layers; \(known.map { $0.baseModule(.llama) }.joined(separator: ", ")))
                    """
                )
            }
            layers[t, default: []].insert(l)
        }
        let targets = known.filter { layers[$0] != nil }
        guard !targets.isEmpty else { throw IOError.corrupt(wPath, "holds no LoRA weights") }
        for t in targets where layers[t]!.count < model.nLayer {
            throw IOError.unsupported(
                wPath,
                """
                \(t.baseModule(.llama)) is adapted in layers \(layers[t]!.sorted()) only (layers_to_transform?): \
                lora-dist adapts a target in all \(model.nLayer) layers
                """
            )
        }
        if let spec = c["target_modules"], !(spec is NSNull) {
            for t in known
            where try targetModules(spec, select: t.moduleName(layer: 0, .llama), cfgPath) != targets.contains(t) {
                throw IOError.corrupt(
                    cfgPath,
                    """
                    target_modules \(spec) \(targets.contains(t) ? "does not select" : "selects") \
                    \(t.baseModule(.llama)), but adapter_model.safetensors \
                    \(targets.contains(t) ? "adapts" : "does not adapt") it
                    """
                )
            }
        }
        let rankPattern = try pattern(c, "rank_pattern", cfgPath).mapValues { v -> Int in
            guard v == v.rounded(), v >= 1, v < 1e9 else {
                throw IOError.corrupt(cfgPath, "rank_pattern holds \(v), not a rank")
            }
            return Int(v)
        }
        let config = LoRAConfig(
            rank: r0, alpha: Float(alpha0), targets: targets,
            dropout: (c["lora_dropout"] as? NSNumber)?.floatValue ?? 0,
            initA: (c["init_lora_weights"] as? String) == "gaussian" ? .gaussian : .kaiming, rsLoRA: rs,
            rankPattern: rankPattern, alphaPattern: try pattern(c, "alpha_pattern", cfgPath).mapValues(Float.init))
        do { try config.validate(for: model) } catch { throw IOError.unsupported(cfgPath, "\(error)") }

        var tensors: [String: (a: [Float], b: [Float])] = [:]
        for l in 0..<model.nLayer {
            for t in targets {
                let key = llamaKey(l, t)
                let r = config.slot(layer: l, target: t, family: model.family).rank
                let aInfo = try f.info(key + ".lora_A.weight")
                let bInfo = try f.info(key + ".lora_B.weight")
                let inDim = t.inDim(model)
                let outDim = t.outDim(model)
                let rm = aInfo.shape.first ?? 0
                guard aInfo.shape == [rm, inDim], bInfo.shape == [outDim, rm] else {
                    throw IOError.unsupported(
                        wPath,
                        """
                        \(key): lora_A \(aInfo.shape) / lora_B \(bInfo.shape) do not fit this base model (in \(inDim), \
                        out \(outDim)): it was made for another
                        """
                    )
                }
                guard rm == r else {
                    throw IOError.corrupt(wPath, "\(key) has rank \(rm) but adapter_config.json gives it \(r)")
                }
                let a = try f.floats(key + ".lora_A.weight")
                let b = try f.floats(key + ".lora_B.weight")
                try requireFinite(
                    a, tensor: key + ".lora_A.weight", file: wPath, shape: aInfo.shape, what: "the adapter is damaged")
                try requireFinite(
                    b, tensor: key + ".lora_B.weight", file: wPath, shape: bInfo.shape, what: "the adapter is damaged")
                tensors["\(l).\(t.rawValue)"] = (a, b)
            }
        }
        return Loaded(config: config, tensors: tensors)
    }

    /// Writes a Llama-family `lora` as a PEFT adapter directory for `PeftModel.from_pretrained` on
    /// the HF checkpoint: one module per target under HF's names, each slot's A and B as they are,
    /// the config's r, α and patterns (PEFT resolves them to the same per-module r and α).
    static func saveLlama(_ lora: LoRAWeights, to dir: String, baseModel: String?) throws {
        let cfg = lora.config
        var tensors: [(name: String, shape: [Int], data: [Float])] = []
        for s in lora.slots {
            let key = llamaKey(s.layer, s.target)
            tensors.append(
                (
                    key + ".lora_A.weight", [s.rank, s.inDim],
                    Array(UnsafeBufferPointer(start: lora.ptr(s.a), count: s.rank * s.inDim))
                ))
            tensors.append(
                (
                    key + ".lora_B.weight", [s.outDim, s.rank],
                    Array(UnsafeBufferPointer(start: lora.ptr(s.b), count: s.outDim * s.rank))
                ))
        }
        let names = cfg.targets.map { String($0.baseModule(.llama).split(separator: ".").last!) }.sorted()
        let config: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": baseModel ?? NSNull(),
            "r": cfg.rank, "lora_alpha": Double(cfg.alpha),
            "rank_pattern": cfg.rankPattern ?? [:], "alpha_pattern": (cfg.alphaPattern ?? [:]).mapValues(Double.init),
            "use_rslora": cfg.rsLoRA,
            "target_modules": names, "fan_in_fan_out": false, "bias": "none", "lora_dropout": Double(cfg.dropout),
            "init_lora_weights": cfg.initA == .gaussian ? "gaussian" as Any : true, "use_dora": false,
            "inference_mode": true,
            "modules_to_save": NSNull(), "layers_to_transform": NSNull(), "layers_pattern": NSNull(),
            "revision": NSNull()
        ]
        try writeDirectory(dir, tensors: tensors, metadata: ["format": "pt"], config: config)
    }

    /// adapter_model.safetensors and adapter_config.json (written last, atomically) in `dir`.
    static func writeDirectory(
        _ dir: String, tensors: [(name: String, shape: [Int], data: [Float])], metadata: [String: String],
        config: [String: Any]
    ) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try SafeTensorsFile.write(path: dir + "/adapter_model.safetensors", tensors: tensors, metadata: metadata)
        try writeFileAtomically(
            try JSONSerialization.data(
                withJSONObject: config, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]),
            to: dir + "/adapter_config.json")
    }
}
