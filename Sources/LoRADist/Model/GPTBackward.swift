import Foundation

extension GPTModel {
    /// Backward of the last training forward + `lossForward(backward: true)` over tokens [batch, seq]
    /// (the planned shape). Accumulates (+=) into the LoRA gradient arena (partial sums, reduced by
    /// the trainer's one gradient AllReduce) or, in full fine-tuning, into `baseGrad`. Stops at the
    /// lowest trainable stage.
    public func backward(tokens: UnsafePointer<Int32>) throws {
        precondition(acts.training && passLen > 0, "backward needs a training forward first")
        let c = config, d = c.nEmbd, n = passBatch * passLen, vl = layout.localVocab
        let full = mode == .full
        let g = baseGrad
        let dres = acts.dres, dxn = acts.dxn
        let top = 1 + 6 * c.nLayer

        // LM head (tied to wte, column-parallel over the vocabulary): dxf partial → f AllReduce.
        let wte = base.ptr(base.shape.wte)
        if full, let g { sgemm(true, false, vl, d, n, 1, acts.logits, vl, acts.xf, d, 1, g.ptr(base.shape.wte), d) }
        if lowestStage >= top && !full { return }
        sgemm(false, false, n, d, vl, 1, acts.logits, vl, wte, d, 0, dxn, d)
        try regions.reduceGradIntoRegion(dxn, n * d)
        dres.update(repeating: 0, count: n * d)
        K.layerNormBackward(dres, full ? g!.ptr(base.shape.lnfw) : nil, full ? g!.ptr(base.shape.lnfb) : nil, dxn,
                            acts.x(c.nLayer), base.ptr(base.shape.lnfw), acts.lnfMean, acts.lnfRstd, n: n, d: d)
        for l in stride(from: c.nLayer - 1, through: 0, by: -1) {
            if try !blockBackward(l) { return }
        }
        // Embeddings (full fine-tuning only): wte rows of this rank's vocabulary, wpe replicated.
        if full, let g {
            let seq = acts.seq, lo = layout.vocabRange.lowerBound
            let gwte = g.ptr(base.shape.wte), gwpe = g.ptr(base.shape.wpe)
            for i in 0..<n {
                let row = dres + i * d
                K.addInPlace(gwpe + (i % seq) * d, row, d)
                let t = Int(tokens[i]) - lo
                if t >= 0 && t < vl { K.addInPlace(gwte + t * d, row, d) }
            }
        }
    }

    /// One block's backward; dres holds ∂loss/∂x(l+1) on entry and ∂loss/∂x(l) on exit.
    /// Returns false once the lowest trainable stage is done (nothing below needs gradients).
    func blockBackward(_ l: Int) throws -> Bool {
        let c = config, d = c.nEmbd, n = passBatch * passLen, seq = passLen, batch = passBatch
        let dl = layout.localDim, fl = layout.localFFN, hl = layout.localHeads, hd = c.headDim
        let w = base.shape.blocks[l]
        let full = mode == .full
        let g = baseGrad
        let dres = acts.dres, dxn = acts.dxn, dfc = acts.dfc, datt = acts.datt, dqkv = acts.dqkv
        let xMid = acts.xMid(l), xn1 = acts.xn1(l), xn2 = acts.xn2(l), qkv = acts.qkv(l)
        let att = acts.att(l), fcPre = acts.fcPre(l), fcAct = acts.fcAct(l), ln1 = acts.ln1(l), ln2 = acts.ln2(l)
        let s0 = 1 + 6 * l  // attention-input stage of this block
        let lora = loraActive ? self.lora : nil

        // Adapter after the MLP: dres at its output; dy at the MLP's output.
        guard var dy = try belowAdapter(l, .mlp, stage: s0 + 5) else { return false }

        // MLP output: row-parallel mlp.c_proj; dy replicated, dfcAct local.
        if full, let g {
            sgemm(true, false, fl, d, n, 1, fcAct, fl, dy, d, 1, g.ptr(w.fcProjW), d)
            K.biasBackward(g.ptr(w.fcProjB), dy, rows: n, cols: d, ld: d)
        }
        let needBelowMLPOut = lowestStage < s0 + 4
        if needBelowMLPOut { sgemm(false, true, n, fl, d, 1, dy, d, base.ptr(w.fcProjW), d, 0, dfc, fl) }
        if let lora, let si = lora.slotIndex(layer: l, target: .mlpOut) {
            loraRowBackward(lora, si, inDim: 4 * d, inRange: layout.ffnRange, x: fcAct, ldx: fl, dy: dy,
                            dx: needBelowMLPOut ? dfc : nil, lddx: fl)
        }
        if !needBelowMLPOut { return false }
        K.geluBackward(dfc, fcPre, dfc, n * fl)

        // MLP input: column-parallel c_fc; partial dxn → f AllReduce; ln_2.
        if full, let g {
            sgemm(true, false, d, fl, n, 1, xn2, d, dfc, fl, 1, g.ptr(w.fcW), fl)
            K.biasBackward(g.ptr(w.fcB), dfc, rows: n, cols: fl, ld: fl)
        }
        let needBelowMLPIn = lowestStage < s0 + 3
        if needBelowMLPIn { sgemm(false, true, n, d, fl, 1, dfc, fl, base.ptr(w.fcW), fl, 0, dxn, d) }
        if let lora, let si = lora.slotIndex(layer: l, target: .mlpIn) {
            loraColumnBackward(lora, si, outRange: layout.ffnRange, x: xn2, dy: dfc, ldy: fl, dx: needBelowMLPIn ? dxn : nil)
        }
        if !needBelowMLPIn { return false }
        try regions.reduceGradIntoRegion(dxn, n * d)
        K.layerNormBackward(dres, full ? g!.ptr(w.ln2w) : nil, full ? g!.ptr(w.ln2b) : nil, dxn, xMid,
                            base.ptr(w.ln2w), ln2, ln2 + n, n: n, d: d)

        // Adapter after attention: dres (= ∂loss/∂xMid) at its output; dy at attention's output.
        guard let dyAttn = try belowAdapter(l, .attention, stage: s0 + 2) else { return false }
        dy = dyAttn

        // Attention output: row-parallel c_proj; dy replicated.
        if full, let g {
            sgemm(true, false, dl, d, n, 1, att, dl, dy, d, 1, g.ptr(w.projW), d)
            K.biasBackward(g.ptr(w.projB), dy, rows: n, cols: d, ld: d)
        }
        let needBelowAttnOut = lowestStage < s0 + 1
        if needBelowAttnOut { sgemm(false, true, n, dl, d, 1, dy, d, base.ptr(w.projW), d, 0, datt, dl) }
        if let lora, let si = lora.slotIndex(layer: l, target: .o) {
            loraRowBackward(lora, si, inDim: d, inRange: layout.dimRange, x: att, ldx: dl, dy: dy,
                            dx: needBelowAttnOut ? datt : nil, lddx: dl)
        }
        if !needBelowAttnOut { return false }

        // Local attention heads → dqkv.
        for b in 0..<batch {
            for h in 0..<hl {
                let base0 = b * seq * 3 * dl + h * hd
                K.attentionBackward(dq: dqkv + base0, dk: dqkv + base0 + dl, dv: dqkv + base0 + 2 * dl, ldd: 3 * dl,
                                    dp: acts.dp, dout: datt + b * seq * dl + h * hd, lddo: dl,
                                    p: acts.probs(l) + (b * hl + h) * seq * seq,
                                    q: qkv + base0, k: qkv + base0 + dl, v: qkv + base0 + 2 * dl, ld: 3 * dl, t: seq, hd: hd)
            }
        }

        // Attention input: column-parallel c_attn; partial dxn → f AllReduce; ln_1.
        if full, let g {
            sgemm(true, false, d, 3 * dl, n, 1, xn1, d, dqkv, 3 * dl, 1, g.ptr(w.attnW), 3 * dl)
            K.biasBackward(g.ptr(w.attnB), dqkv, rows: n, cols: 3 * dl, ld: 3 * dl)
        }
        let needBelowAttnIn = lowestStage < s0
        if needBelowAttnIn { sgemm(false, true, n, d, 3 * dl, 1, dqkv, 3 * dl, base.ptr(w.attnW), 3 * dl, 0, dxn, d) }
        if let lora {
            for (part, t) in [LoRATarget.q, .k, .v].enumerated() {
                guard let si = lora.slotIndex(layer: l, target: t) else { continue }
                loraColumnBackward(lora, si, outRange: layout.dimRange, x: xn1, dy: dqkv + part * dl, ldy: 3 * dl,
                                   dx: needBelowAttnIn ? dxn : nil)
            }
        }
        if !needBelowAttnIn { return false }
        try regions.reduceGradIntoRegion(dxn, n * d)
        K.layerNormBackward(dres, full ? g!.ptr(w.ln1w) : nil, full ? g!.ptr(w.ln1b) : nil, dxn, acts.x(l),
                            base.ptr(w.ln1w), ln1, ln1 + n, n: n, d: d)
        return true
    }

    /// The gradient at a sublayer's output, below the adapter at `pos` of block `l` (dres itself
    /// when there is none); nil when that adapter is the lowest trainable stage (`stage`), so
    /// nothing below needs a gradient.
    private func belowAdapter(_ l: Int, _ pos: AdapterPosition, stage: Int) throws -> UnsafePointer<Float>? {
        guard let i = adapterIndex(l, pos) else { return UnsafePointer(acts.dres) }
        let need = lowestStage < stage
        try adapterBackward(i, dy: acts.dres, dx: acts.dsub, needInput: need)
        return need ? UnsafePointer(acts.dsub) : nil
    }

    /// LoRA backward on a column-parallel target whose input x [n, d] is replicated.
    private func loraColumnBackward(_ lora: LoRAWeights, _ si: Int, outRange: Range<Int>, x: UnsafePointer<Float>,
                                    dy: UnsafePointer<Float>, ldy: Int, dx: UnsafeMutablePointer<Float>?) {
        let s = lora.slots[si], n = passBatch * passLen, d = config.nEmbd
        let grad = loraGrad!.base
        let (xin, ldx) = dropped(x, ldx: d, n: n, w: d, col0: 0, inDim: d, slot: si)
        let masked = xin != x
        let gscratch = acts.scratch + n * 4 * d
        if masked && dx != nil { gscratch.update(repeating: 0, count: n * d) }
        ops!.columnBackward(a: lora.ptr(s.a), b: lora.ptr(s.b), da: grad + s.a, db: grad + s.b, inDim: d, outRange: outRange,
                            x: xin, ldx: ldx, dy: dy, ldy: ldy, u: acts.u(si), du: acts.du,
                            dx: dx == nil ? nil : (masked ? gscratch : dx), lddx: d, n: n)
        if masked, let dx { addMasked(dx, lddx: d, g: gscratch, n: n, w: d, col0: 0, inDim: d, slot: si) }
    }

    /// LoRA backward on a row-parallel target whose input x_t [n, inRange.count] is this rank's slice.
    private func loraRowBackward(_ lora: LoRAWeights, _ si: Int, inDim: Int, inRange: Range<Int>, x: UnsafePointer<Float>,
                                 ldx xld: Int, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>?, lddx: Int) {
        let s = lora.slots[si], n = passBatch * passLen, d = config.nEmbd, w = inRange.count
        let grad = loraGrad!.base
        let (xin, ldx) = dropped(x, ldx: xld, n: n, w: w, col0: inRange.lowerBound, inDim: inDim, slot: si)
        let masked = xin != x
        let gscratch = acts.scratch + n * 4 * d
        if masked && dx != nil { gscratch.update(repeating: 0, count: n * w) }
        ops!.rowBackward(a: lora.ptr(s.a), b: lora.ptr(s.b), da: grad + s.a, db: grad + s.b, inDim: inDim, inRange: inRange,
                         outDim: d, x: xin, ldx: ldx, dy: dy, ldy: d, u: acts.u(si), du: acts.du,
                         dx: dx == nil ? nil : (masked ? gscratch : dx), lddx: masked ? w : lddx, n: n)
        if masked, let dx { addMasked(dx, lddx: lddx, g: gscratch, n: n, w: w, col0: inRange.lowerBound, inDim: inDim, slot: si) }
    }
}
