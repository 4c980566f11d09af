/// GPT-2's table: LayerNorm, a GELU MLP over c_fc, learned positions (wpe), Conv1D weights used
/// as stored ([in, out]), and its tensors under HF GPT2LMHeadModel's names.
enum GPT2Family: DecoderFamily {
    static var orientation: WeightOrientation { .inOut }
    static var activation: any MLPActivation { GELU() }

    static func norm(_ c: GPTConfig) -> any Norm { LayerNorm(d: c.nEmbd, eps: c.lnEps) }

    static func positions(_ layout: TPLayout, base: BaseWeights) -> any Positions {
        LearnedPositions(table: base.ptr(base.shape.wpe), d: layout.config.nEmbd)
    }

    static func placeTensors(_ plan: inout SlotPlanner, _ t: TPLayout) -> TopOffsets { plan.gpt2(t) }

    static func mlpWidthName(_ c: GPTConfig) -> String { "4·d = \(c.ffn)" }
}

extension SlotPlanner {
    /// GPT-2 (HF GPT2LMHeadModel names, Conv1D [in, out]).
    mutating func gpt2(_ t: TPLayout) -> TopOffsets {
        let c = t.config
        let d = c.nEmbd
        let dl = t.localDim
        let fl = t.localFFN
        var top = TopOffsets()
        top.wte = weight(
            "transformer.wte.weight", [c.vocabSize, d], .rows(t.vocabRange, valid: c.vocabSize),
            t.localVocab * d)
        top.wpe = add("transformer.wpe.weight", [c.nPositions, d], .replicated, c.nPositions * d)
        for l in 0..<c.nLayer {
            let p = "transformer.h.\(l)."
            var b = BlockOffsets()
            b.ln1w = add(p + "ln_1.weight", [d], .replicated, d)
            b.ln1b = add(p + "ln_1.bias", [d], .replicated, d)
            b.attnW = weight(p + "attn.c_attn.weight", [d, 3 * d], .qkv(t.dimRange, d: d), d * 3 * dl)
            b.attnB = add(p + "attn.c_attn.bias", [3 * d], .qkv(t.dimRange, d: d), 3 * dl)
            b.projW = weight(p + "attn.c_proj.weight", [d, d], .rows(t.dimRange, valid: d), dl * d, residual: true)
            b.projB = add(p + "attn.c_proj.bias", [d], .replicated, d)
            b.ln2w = add(p + "ln_2.weight", [d], .replicated, d)
            b.ln2b = add(p + "ln_2.bias", [d], .replicated, d)
            b.fcW = weight(p + "mlp.c_fc.weight", [d, 4 * d], .cols(t.ffnRange), d * fl)
            b.fcB = add(p + "mlp.c_fc.bias", [4 * d], .cols(t.ffnRange), fl)
            b.fcProjW = weight(
                p + "mlp.c_proj.weight", [4 * d, d], .rows(t.ffnRange, valid: 4 * d), fl * d,
                residual: true)
            b.fcProjB = add(p + "mlp.c_proj.bias", [d], .replicated, d)
            top.blocks.append(b)
        }
        top.lnfw = add("transformer.ln_f.weight", [d], .replicated, d)
        top.lnfb = add("transformer.ln_f.bias", [d], .replicated, d)
        return top
    }
}
