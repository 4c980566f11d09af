/// The Llama family's table (Llama, Qwen2, Mistral, SmolLM): RMSNorm, a SwiGLU MLP over gate | up,
/// rotary positions, nn.Linear weights read transposed ([out, in]), and its tensors under HF
/// LlamaForCausalLM's names.
enum LlamaFamily: DecoderFamily {
    static var orientation: WeightOrientation { .outIn }
    static var activation: any MLPActivation { SwiGLU() }

    static func norm(_ c: GPTConfig) -> any Norm { RMSNorm(d: c.nEmbd, eps: c.lnEps) }

    static func positions(_ layout: TPLayout, base: BaseWeights) -> any Positions { RotaryPositions(layout) }

    static func placeTensors(_ plan: inout SlotPlanner, _ t: TPLayout) -> TopOffsets { plan.llama(t) }

    static func mlpWidthName(_ c: GPTConfig) -> String { "(intermediate_size) \(c.ffn)" }
}

extension SlotPlanner {
    /// The Llama family (HF LlamaForCausalLM / Qwen2ForCausalLM names, nn.Linear [out, in]).
    /// Column-parallel q, k, v, gate and up are this rank's rows; row-parallel o_proj and
    /// down_proj its columns; key/value heads per `TPLayout.kvHeadRange`.
    mutating func llama(_ t: TPLayout) -> TopOffsets {
        let c = t.config
        let d = c.nEmbd
        let hd = c.headDim
        let fl = t.localFFN
        let dl = t.localDim
        let vocab = ShardSpec.rows(t.vocabRange, valid: c.vocabSize)
        let kvWidth = c.nKVHead * hd
        let kvRows = t.kvDimRange
        let kvl = kvRows.count
        let kvShared = ShardSpec.shared(kvRows, ranks: t.degree / c.nKVHead)
        let kvW = t.kvReplicated ? kvShared : .rows(kvRows, valid: kvWidth)
        let kvB = t.kvReplicated ? kvShared : .cols(kvRows)
        var top = TopOffsets()
        top.wte = weight("model.embed_tokens.weight", [c.vocabSize, d], vocab, t.localVocab * d)
        for l in 0..<c.nLayer {
            let p = "model.layers.\(l)."
            let a = p + "self_attn."
            let m = p + "mlp."
            var b = BlockOffsets()
            b.ln1w = add(p + "input_layernorm.weight", [d], .replicated, d)
            b.attnW = region(
                [
                    Part(a + "q_proj.weight", [d, d], .rows(t.dimRange, valid: d), dl * d),
                    Part(a + "k_proj.weight", [kvWidth, d], kvW, kvl * d),
                    Part(a + "v_proj.weight", [kvWidth, d], kvW, kvl * d)
                ], gemm: true)
            if c.qkvBias {
                b.attnB =
                    region(
                        [
                            Part(a + "q_proj.bias", [d], .cols(t.dimRange), dl),
                            Part(a + "k_proj.bias", [kvWidth], kvB, kvl),
                            Part(a + "v_proj.bias", [kvWidth], kvB, kvl)
                        ], gemm: false
                    ).f32
            }
            b.projW = weight(a + "o_proj.weight", [d, d], .cols(t.dimRange), d * dl)
            b.ln2w = add(p + "post_attention_layernorm.weight", [d], .replicated, d)
            let ffnRows = ShardSpec.rows(t.ffnRange, valid: c.ffn)
            b.fcW = region(
                [
                    Part(m + "gate_proj.weight", [c.ffn, d], ffnRows, fl * d),
                    Part(m + "up_proj.weight", [c.ffn, d], ffnRows, fl * d)
                ], gemm: true)
            b.fcProjW = weight(m + "down_proj.weight", [d, c.ffn], .cols(t.ffnRange), d * fl)
            top.blocks.append(b)
        }
        top.lnfw = add("model.norm.weight", [d], .replicated, d)
        if !c.tiedHead { top.head = weight("lm_head.weight", [c.vocabSize, d], vocab, t.localVocab * d) }
        return top
    }
}
