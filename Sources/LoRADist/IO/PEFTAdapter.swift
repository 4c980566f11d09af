import Foundation

/// PEFT's LoRA format for GPT-2 (`adapter_config.json` + `adapter_model.safetensors`, keys
/// `base_model.model.transformer.h.N.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r]),
/// mapped exactly onto lora-dist's targets: PEFT's one LoRA on the fused `attn.c_attn` is q, k and v
/// sharing its A, each with its rows of B; `attn.c_proj` is o, `mlp.c_fc` mlp_in, `mlp.c_proj` mlp_out.
public enum PEFTAdapter {
    public struct Loaded {
        public var config: LoRAConfig
        /// Per (layer, target): A [r, in] and B [out, r] in lora-dist's layout.
        public var tensors: [String: (a: [Float], b: [Float])]
    }

    /// Reads a PEFT adapter directory; refuses what does not map exactly (DoRA, rank/alpha patterns,
    /// unknown modules, bias training).
    public static func load(dir: String, model: GPTConfig) throws -> Loaded {
        let cfgPath = dir + "/adapter_config.json", wPath = dir + "/adapter_model.safetensors"
        guard let data = FileManager.default.contents(atPath: cfgPath),
              let c = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw IOError.cannotRead(cfgPath, "no PEFT adapter_config.json")
        }
        guard (c["peft_type"] as? String) == "LORA" else { throw IOError.corrupt(cfgPath, "peft_type is not LORA") }
        if (c["use_dora"] as? Bool) == true { throw IOError.corrupt(cfgPath, "DoRA adapters do not map onto LoRA") }
        for k in ["rank_pattern", "alpha_pattern"] where !((c[k] as? [String: Any]) ?? [:]).isEmpty {
            throw IOError.corrupt(cfgPath, "\(k) is not supported (one r and alpha for every module)")
        }
        if let b = c["bias"] as? String, b != "none" { throw IOError.corrupt(cfgPath, "bias = \(b): only bias = none maps onto LoRA") }
        guard let r = (c["r"] as? NSNumber)?.intValue, let alpha = (c["lora_alpha"] as? NSNumber)?.floatValue else {
            throw IOError.corrupt(cfgPath, "missing r or lora_alpha")
        }
        let f = try SafeTensorsFile(path: wPath)
        let prefix = "base_model.model.transformer.h."
        var modules = Set<String>()
        for name in f.names {
            guard name.hasPrefix(prefix), name.hasSuffix(".lora_A.weight") || name.hasSuffix(".lora_B.weight") else {
                throw IOError.corrupt(wPath, "tensor \(name) is not a GPT-2 LoRA weight lora-dist knows")
            }
            let rest = name.dropFirst(prefix.count).split(separator: ".")
            guard rest.count == 5 else { throw IOError.corrupt(wPath, "unexpected key \(name)") }
            modules.insert("\(rest[1]).\(rest[2])")
        }
        let map: [String: [LoRATarget]] = ["attn.c_attn": [.q, .k, .v], "attn.c_proj": [.o], "mlp.c_fc": [.mlpIn], "mlp.c_proj": [.mlpOut]]
        for m in modules where map[m] == nil { throw IOError.corrupt(wPath, "module \(m) has no lora-dist target") }
        let targets = modules.flatMap { map[$0]! }
        let initA: LoRAInit = .kaiming
        let config = LoRAConfig(rank: r, alpha: alpha, targets: targets, initA: initA, rsLoRA: (c["use_rslora"] as? Bool) ?? false)
        var tensors: [String: (a: [Float], b: [Float])] = [:]
        let d = model.nEmbd
        for l in 0..<model.nLayer {
            for m in modules {
                let key = prefix + "\(l).\(m)"
                let aInfo = try f.info(key + ".lora_A.weight"), bInfo = try f.info(key + ".lora_B.weight")
                let a = try f.floats(key + ".lora_A.weight"), b = try f.floats(key + ".lora_B.weight")
                let targetsOf = map[m]!
                let inDim = targetsOf[0].inDim(model)
                let outAll = targetsOf.count == 3 ? 3 * d : targetsOf[0].outDim(model)
                guard aInfo.shape == [r, inDim], bInfo.shape == [outAll, r] else {
                    throw IOError.corrupt(wPath, "\(key): lora_A \(aInfo.shape) / lora_B \(bInfo.shape) do not fit r \(r) and the model")
                }
                for (i, t) in targetsOf.enumerated() {
                    let rows = t.outDim(model)
                    tensors["\(l).\(t.rawValue)"] = (a, Array(b[(i * rows * r)..<((i + 1) * rows * r)]))
                }
            }
        }
        return Loaded(config: config, tensors: tensors)
    }

    /// Copies a loaded PEFT adapter into the model's LoRA weights (same config).
    public static func apply(_ p: Loaded, to lora: LoRAWeights) throws {
        guard p.config.rank == lora.config.rank, Set(p.config.targets) == Set(lora.config.targets) else {
            throw IOError.corrupt("PEFT adapter", "its targets/rank do not match the model's LoRA")
        }
        for s in lora.slots {
            guard let t = p.tensors["\(s.layer).\(s.target.rawValue)"] else { continue }
            lora.ptr(s.a).update(from: t.a, count: t.a.count)
            lora.ptr(s.b).update(from: t.b, count: t.b.count)
        }
    }
}
