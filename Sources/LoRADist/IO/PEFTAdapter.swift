import Foundation

/// PEFT's LoRA format, in and out; GPT-2 here, the Llama family in PEFTLlama.swift. GPT-2: a directory with
/// `adapter_config.json` and `adapter_model.safetensors`, keys
/// `base_model.model.transformer.h.N.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r]; module m adds
/// s_m·x·Aᵀ·Bᵀ to its output with s_m = α_m/r_m (α_m/√r_m with `use_rslora`), r_m and α_m from
/// `rank_pattern`/`alpha_pattern` when a key matches the module, else `r` and `lora_alpha`.
///
/// Modules: `attn.c_proj` is o, `mlp.c_fc` mlp_in, `mlp.c_proj` mlp_out, one to one. PEFT puts one
/// LoRA on the fused `attn.c_attn` (output columns [q | k | v]); lora-dist adapts q, k, v separately:
/// - In: c_attn becomes q, k and v, each with a copy of its A and its third of B's rows. An adapter
///   this file wrote (safetensors metadata `lora_dist.c_attn_blocks`) whose B is still block-shaped
///   splits back into the targets it came from instead.
/// - Out: the n targeted of q, k, v become c_attn with A' = [A_q; A_k; A_v] (rank n·r) and B'
///   [3d, n·r] holding B_t in target t's rows and t's block of columns, zero elsewhere (rows of an
///   untargeted projection are zero), with α' = n·α (√n·α with rsLoRA) so that the scale stays
///   α/r; when other modules keep rank r, `rank_pattern`/`alpha_pattern` {"c_attn": …} say so.
///   If q, k and v are all targeted with bit-identical A's (as imported from PEFT), c_attn keeps
///   rank r and one A. Exact in the function; note PEFT then trains B's zero blocks too.
/// - Per-module ranks and alphas (patterns) load exactly into lora-dist's single r and α: the rank
///   becomes the largest r_m (smaller ones padded with zero rows of A and zero columns of B, which
///   no gradient ever moves), α keeps the default scale, and each B is multiplied by s_m/s.
/// Everything else that changes the function is refused: DoRA, trained biases, modules_to_save,
/// trainable tokens, and LoRA variants whose saved weights are not a plain LoRA (aLoRA, PiSSA, …).
public enum PEFTAdapter {
    public struct Loaded {
        public var config: LoRAConfig
        /// Per "layer.target": A [r, in] and B [out, r] in lora-dist's layout (r the slot's rank).
        public var tensors: [String: (a: [Float], b: [Float])]
    }

    /// GPT-2's LoRA-able modules in PEFT's names, with the lora-dist targets each holds in output order.
    static let modules: [(name: String, targets: [LoRATarget])] = [
        ("attn.c_attn", [.q, .k, .v]), ("attn.c_proj", [.o]), ("mlp.c_fc", [.mlpIn]), ("mlp.c_proj", [.mlpOut])
    ]
    static let prefix = "base_model.model.transformer.h."
    /// Safetensors metadata of an export: the q/k/v targets stacked into c_attn, in rank-block order.
    static let blocksKey = "lora_dist.c_attn_blocks"

    /// One module's LoRA of one layer, as a lora-dist target gets it (before padding to a common rank).
    struct Piece {
        var layer: Int
        var target: LoRATarget
        var a: [Float]
        var b: [Float]
        var rank: Int
        var scale: Double
    }

    /// Reads a PEFT adapter directory; refuses what does not map exactly (see the type's doc).
    public static func load(dir: String, model: GPTConfig) throws -> Loaded {
        let cfgPath = dir + "/adapter_config.json"
        let wPath = dir + "/adapter_model.safetensors"
        guard FileManager.default.fileExists(atPath: cfgPath) else {
            throw IOError.cannotRead(cfgPath, "no PEFT adapter_config.json")
        }
        guard
            let c = try TextFile.readJSON(cfgPath, emptyHint: "expected PEFT's adapter configuration") as? [String: Any]
        else {
            throw IOError.corrupt(cfgPath, "not a JSON object")
        }
        try refuseUnmappable(c, cfgPath)
        guard let r0 = (c["r"] as? NSNumber)?.intValue, r0 >= 1,
            let alpha0 = (c["lora_alpha"] as? NSNumber)?.doubleValue
        else {
            throw IOError.corrupt(cfgPath, "missing r or lora_alpha")
        }
        let rs = (c["use_rslora"] as? Bool) ?? false
        if model.family != .gpt2 {
            return try loadLlama(c, cfgPath: cfgPath, wPath: wPath, r0: r0, alpha0: alpha0, rs: rs, model: model)
        }
        func scale(_ alpha: Double, _ r: Int) -> Double { rs ? alpha / Double(r).squareRoot() : alpha / Double(r) }
        let rankPattern = try pattern(c, "rank_pattern", cfgPath)
        let alphaPattern = try pattern(c, "alpha_pattern", cfgPath)

        let f = try SafeTensorsFile(path: wPath)
        var present = Set<String>()  // "layer module"
        for name in f.names {
            let rest = name.hasPrefix(prefix) ? name.dropFirst(prefix.count).split(separator: ".") : []
            if rest.count == 5, let l = Int(rest[0]), l >= model.nLayer {
                throw IOError.unsupported(
                    wPath,
                    """
                    tensor \(name) adapts layer \(l) but the base has \(model.nLayer) layers: the adapter was made for \
                    another base
                    """
                )
            }
            guard rest.count == 5, let l = Int(rest[0]), l >= 0, l < model.nLayer, rest[4] == "weight",
                rest[3] == "lora_A" || rest[3] == "lora_B",
                modules.contains(where: { $0.name == "\(rest[1]).\(rest[2])" })
            else {
                throw IOError.unsupported(
                    wPath,
                    """
                    tensor \(name) is not a LoRA weight of a GPT-2 module lora-dist adapts (\(model.nLayer) layers; \
                    attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
                    """
                )
            }
            present.insert("\(l) \(rest[1]).\(rest[2])")
        }
        let blocks = try f.metadata[blocksKey].map { s in
            try s.split(separator: ",").map { t -> LoRATarget in
                guard let x = LoRATarget(rawValue: String(t)), x.baseModule(.gpt2) == "attn.c_attn" else {
                    throw IOError.corrupt(wPath, "\(blocksKey) = \(s)")
                }
                return x
            }
        }

        var pieces: [Piece] = []
        for l in 0..<model.nLayer {
            for (module, targets) in modules where present.contains("\(l) \(module)") {
                let key = prefix + "\(l).\(module)"
                let aInfo = try f.info(key + ".lora_A.weight")
                let bInfo = try f.info(key + ".lora_B.weight")
                let inDim = targets[0].inDim(model)
                let outDim = targets.reduce(0) { $0 + $1.outDim(model) }
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
                let peftName = "transformer.h.\(l).\(module)"
                // Compared as numbers: a rank_pattern value beyond any Int (found by fuzzing) is a mismatch, not a
                // trap.
                let want = try patternValue(rankPattern, peftName, cfgPath) ?? Double(r0)
                guard Double(rm) == want else {
                    throw IOError.corrupt(
                        wPath,
                        """
                        \(key) has rank \(rm) but adapter_config.json gives it \
                        \(want == want.rounded() && abs(want) < 1e15 ? String(Int(want)) : String(want))
                        """
                    )
                }
                let s = scale(try patternValue(alphaPattern, peftName, cfgPath) ?? alpha0, rm)
                let a = try f.floats(key + ".lora_A.weight")
                let b = try f.floats(key + ".lora_B.weight")
                try requireFinite(
                    a, tensor: key + ".lora_A.weight", file: wPath, shape: aInfo.shape, what: "the adapter is damaged")
                try requireFinite(
                    b, tensor: key + ".lora_B.weight", file: wPath, shape: bInfo.shape, what: "the adapter is damaged")
                if let blocks, targets.count == 3,
                    let split = splitBlocks(a: a, b: b, rank: rm, blocks: blocks, layer: l, scale: s, model: model)
                {
                    pieces += split
                    continue
                }
                var row = 0
                for t in targets {  // each target: the whole A, its rows of B
                    let n = t.outDim(model) * rm
                    pieces.append(Piece(layer: l, target: t, a: a, b: Array(b[row..<(row + n)]), rank: rm, scale: s))
                    row += n
                }
            }
        }
        guard !pieces.isEmpty else { throw IOError.corrupt(wPath, "holds no LoRA weights") }

        // One rank and scale for all: pad to the largest rank, keep the default scale, fold each module's into B.
        let rank = pieces.map(\.rank).max()!
        let alpha = rs ? alpha0 * (Double(rank) / Double(r0)).squareRoot() : alpha0 * Double(rank) / Double(r0)
        let s0 = scale(alpha0, r0)
        let initA: LoRAInit = (c["init_lora_weights"] as? String) == "gaussian" ? .gaussian : .kaiming
        let config = LoRAConfig(
            rank: rank, alpha: Float(alpha), targets: pieces.map(\.target),
            dropout: (c["lora_dropout"] as? NSNumber)?.floatValue ?? 0, initA: initA, rsLoRA: rs)
        var tensors: [String: (a: [Float], b: [Float])] = [:]
        for l in 0..<model.nLayer {
            for t in config.targets {  // a target absent from a layer (layers_to_transform) adds nothing there
                tensors["\(l).\(t.rawValue)"] = (
                    [Float](repeating: 0, count: rank * t.inDim(model)),
                    [Float](repeating: 0, count: t.outDim(model) * rank)
                )
            }
        }
        for p in pieces {
            let inDim = p.target.inDim(model)
            let outDim = p.target.outDim(model)
            let k = p.scale == s0 ? 1 : Float(p.scale / s0)
            var (a, b) = tensors["\(p.layer).\(p.target.rawValue)"]!
            for i in 0..<(p.rank * inDim) { a[i] = p.a[i] }  // rows of A: the first p.rank
            for o in 0..<outDim { for j in 0..<p.rank { b[o * rank + j] = k * p.b[o * p.rank + j] } }
            tensors["\(p.layer).\(p.target.rawValue)"] = (a, b)
        }
        return Loaded(config: config, tensors: tensors)
    }

    /// c_attn as an export stacked it: rank blocks in `blocks` order, B zero outside its target's
    /// rows × block. Nil when B no longer has that shape (e.g. PEFT trained it further).
    static func splitBlocks(
        a: [Float], b: [Float], rank rm: Int, blocks: [LoRATarget], layer: Int, scale: Double, model: GPTConfig
    ) -> [Piece]? {
        guard !blocks.isEmpty, rm % blocks.count == 0 else { return nil }
        let r = rm / blocks.count
        let d = model.nEmbd
        let inDim = d
        for (p, t) in [LoRATarget.q, .k, .v].enumerated() {
            let own = blocks.firstIndex(of: t)
            for row in (p * d)..<((p + 1) * d) {
                for j in 0..<rm where j / r != own && b[row * rm + j] != 0 { return nil }
            }
        }
        return blocks.enumerated().map { i, t in
            let p = [LoRATarget.q, .k, .v].firstIndex(of: t)!
            var bt = [Float](repeating: 0, count: d * r)
            for o in 0..<d { for j in 0..<r { bt[o * r + j] = b[(p * d + o) * rm + i * r + j] } }
            return Piece(
                layer: layer, target: t, a: Array(a[(i * r * inDim)..<((i + 1) * r * inDim)]), b: bt, rank: r,
                scale: scale)
        }
    }

    /// Settings that change what the saved weights compute, beyond a plain LoRA on Linear-like modules.
    static func refuseUnmappable(_ c: [String: Any], _ path: String) throws {
        guard (c["peft_type"] as? String) == "LORA" else {
            throw IOError.unsupported(path, "peft_type is \(c["peft_type"] ?? "missing"), not LORA")
        }
        if (c["use_dora"] as? Bool) == true {
            throw IOError.unsupported(path, "use_dora: DoRA adapters do not map onto LoRA")
        }
        if let b = c["bias"] as? String, b != "none" {
            throw IOError.unsupported(path, "bias = \(b): lora-dist trains no biases (only bias = none maps)")
        }
        if (c["lora_bias"] as? Bool) == true {
            throw IOError.unsupported(path, "lora_bias: a bias on lora_B does not map onto LoRA")
        }
        if (c["use_qalora"] as? Bool) == true {
            throw IOError.unsupported(path, "use_qalora: QA-LoRA pools its input, not a plain LoRA")
        }
        for k in [
            "modules_to_save", "trainable_token_indices", "target_parameters", "layer_replication",
            "alora_invocation_tokens",
            "arrow_config", "use_bdlora", "kasa_config", "monteclora_config", "velora_config"
        ] {
            if let v = c[k], !(v is NSNull), !(((v as? [Any])?.isEmpty) ?? false),
                !(((v as? [String: Any])?.isEmpty) ?? false)
            {
                throw IOError.unsupported(path, "\(k) is set: lora-dist loads plain LoRA weights only")
            }
        }
        if let i = c["init_lora_weights"] as? String,
            ["pissa", "olora", "loftq", "corda", "lora_ga"].contains(where: { i.lowercased().hasPrefix($0) })
        {
            throw IOError.unsupported(
                path, "init_lora_weights = \(i): such an adapter is relative to a modified base model")
        }
    }

    static func pattern(_ c: [String: Any], _ key: String, _ path: String) throws -> [String: Double] {
        guard let v = c[key], !(v is NSNull) else { return [:] }
        guard let d = v as? [String: Any] else { throw IOError.corrupt(path, "\(key) is not an object") }
        return try d.mapValues { x in
            guard let n = (x as? NSNumber)?.doubleValue else {
                throw IOError.corrupt(path, "\(key) holds \(x), not a number")
            }
            return n
        }
    }

    /// PEFT's rule (get_pattern_key): key K applies to module N when `(.*\.)?(K)$` matches N from
    /// its start. PEFT takes the first matching key in file order, which JSON objects do not keep
    /// here: keys that match one module with different values are refused.
    static func patternValue(_ p: [String: Double], _ module: String, _ path: String) throws -> Double? {
        do { return try LoRAConfig.patternValue(p, module) } catch { throw IOError.unsupported(path, "\(error)") }
    }

    /// Copies a loaded PEFT adapter into the model's LoRA weights (same config).
    public static func apply(_ p: Loaded, to lora: LoRAWeights) throws {
        guard p.config.rank == lora.config.rank, Set(p.config.targets) == Set(lora.config.targets),
            p.config.rankPattern == lora.config.rankPattern, p.config.alphaPattern == lora.config.alphaPattern
        else {
            throw IOError.corrupt("PEFT adapter", "its targets/ranks/alphas do not match the model's LoRA")
        }
        for s in lora.slots {
            guard let t = p.tensors["\(s.layer).\(s.target.rawValue)"] else { continue }
            guard t.a.count == s.rank * s.inDim, t.b.count == s.outDim * s.rank else {
                throw IOError.corrupt(
                    "PEFT adapter",
                    """
                    layer \(s.layer) \(s.target.rawValue) has rank \(t.a.count / max(1, s.inDim)), the model's LoRA \
                    \(s.rank)
                    """
                )
            }
            lora.ptr(s.a).update(from: t.a, count: t.a.count)
            lora.ptr(s.b).update(from: t.b, count: t.b.count)
        }
    }
}
