import Foundation

extension PEFTAdapter {
    /// PEFT's tensors for `lora` per the mapping in the type's doc (A [r_m, in], B [out, r_m]), the
    /// rank of c_attn, and the q/k/v targets stacked into it (empty when they share one A).
    static func peftTensors(_ lora: LoRAWeights) -> (
        tensors: [(name: String, shape: [Int], data: [Float])], attnRank: Int, blocks: [LoRATarget]
    ) {
        let cfg = lora.config
        let m = lora.model
        let r = cfg.rank
        let d = m.nEmbd
        func a(_ l: Int, _ t: LoRATarget) -> [Float] {
            let s = lora.slot(layer: l, target: t)!
            return Array(UnsafeBufferPointer(start: lora.ptr(s.a), count: r * s.inDim))
        }
        func b(_ l: Int, _ t: LoRATarget) -> [Float] {
            let s = lora.slot(layer: l, target: t)!
            return Array(UnsafeBufferPointer(start: lora.ptr(s.b), count: s.outDim * r))
        }
        let qkv = cfg.targets.filter { $0.baseModule(.gpt2) == "attn.c_attn" }
        let shared = qkv.count == 3 && (0..<m.nLayer).allSatisfy { a($0, .q) == a($0, .k) && a($0, .q) == a($0, .v) }
        let blocks = shared ? [] : qkv
        let attnRank = shared ? r : r * qkv.count
        var out: [(name: String, shape: [Int], data: [Float])] = []
        for l in 0..<m.nLayer {
            for (module, targets) in modules {
                let mine = targets.filter { cfg.targets.contains($0) }
                guard !mine.isEmpty else { continue }
                let key = prefix + "\(l).\(module)"
                if module != "attn.c_attn" {
                    let t = mine[0]
                    out.append((key + ".lora_A.weight", [r, t.inDim(m)], a(l, t)))
                    out.append((key + ".lora_B.weight", [t.outDim(m), r], b(l, t)))
                    continue
                }
                let stackedA = shared ? a(l, .q) : qkv.flatMap { a(l, $0) }
                var fused = [Float](repeating: 0, count: 3 * d * attnRank)
                for (p, t) in targets.enumerated() where mine.contains(t) {
                    let bt = b(l, t)
                    let col = shared ? 0 : qkv.firstIndex(of: t)! * r
                    for o in 0..<d { for j in 0..<r { fused[(p * d + o) * attnRank + col + j] = bt[o * r + j] } }
                }
                out.append((key + ".lora_A.weight", [attnRank, d], stackedA))
                out.append((key + ".lora_B.weight", [3 * d, attnRank], fused))
            }
        }
        return (out, attnRank, blocks)
    }

    /// Writes `lora` as a PEFT adapter directory that `PeftModel.from_pretrained` loads onto the HF
    /// GPT-2 base it was trained on; `baseModel` becomes `base_model_name_or_path`.
    /// A Llama-family model's LoRA goes out as `saveLlama` writes it.
    public static func save(_ lora: LoRAWeights, to dir: String, baseModel: String?) throws {
        if lora.model.family != .gpt2 { return try saveLlama(lora, to: dir, baseModel: baseModel) }
        let cfg = lora.config
        let r = cfg.rank
        guard cfg.rankPattern == nil && cfg.alphaPattern == nil else {
            throw IOError.unsupported(
                dir, "a GPT-2 LoRA with per-module ranks or alphas has no PEFT export (c_attn fuses q, k and v)")
        }
        let (tensors, attnRank, blocks) = peftTensors(lora)
        func alpha(rank: Int) -> Double {  // keeps the scale α/r (α/√r with rsLoRA) at another rank
            cfg.rsLoRA
                ? Double(cfg.alpha) * (Double(rank) / Double(r)).squareRoot()
                : Double(cfg.alpha) * Double(rank) / Double(r)
        }
        var names = modules.filter { md in md.targets.contains { cfg.targets.contains($0) } }.map(\.name)
        let onlyAttn = names == ["attn.c_attn"]
        var rankPattern: [String: Any] = [:]
        var alphaPattern: [String: Any] = [:]
        if !onlyAttn && names.contains("attn.c_attn") && attnRank != r {
            rankPattern["c_attn"] = attnRank
            alphaPattern["c_attn"] = alpha(rank: attnRank)
        }
        names.sort()
        let config: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": baseModel ?? NSNull(),
            "r": onlyAttn ? attnRank : r, "lora_alpha": onlyAttn ? alpha(rank: attnRank) : Double(cfg.alpha),
            "rank_pattern": rankPattern, "alpha_pattern": alphaPattern, "use_rslora": cfg.rsLoRA,
            "target_modules": names, "fan_in_fan_out": true, "bias": "none", "lora_dropout": Double(cfg.dropout),
            "init_lora_weights": cfg.initA == .gaussian ? "gaussian" as Any : true, "use_dora": false,
            "inference_mode": true,
            "modules_to_save": NSNull(), "layers_to_transform": NSNull(), "layers_pattern": NSNull(),
            "revision": NSNull()
        ]
        var meta = ["format": "pt"]
        if !blocks.isEmpty { meta[blocksKey] = blocks.map(\.rawValue).joined(separator: ",") }
        try writeDirectory(dir, tensors: tensors, metadata: meta, config: config)
    }
}
