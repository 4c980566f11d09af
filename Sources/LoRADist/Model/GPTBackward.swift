import Foundation

extension GPTModel {
    /// Backward of a training forward `pass` over its sequences' tokens (a batch of rows or a packed
    /// micro-batch, within the planned shape), after
    /// its `lossForward(backward: true)`. Accumulates (+=) into the trainable's gradients: LoRA's
    /// (partial sums, reduced by the trainer's one gradient AllReduce), in full fine-tuning the
    /// base's, under BitFit the biases'. Stops at the lowest trainable stage.
    public func backward(_ pass: ForwardPass, tokens: UnsafePointer<Int32>) throws {
        let acts = pass.acts
        precondition(acts.training && pass.rows > 0, "backward needs a training forward first")
        precondition(pass.sequences.maxLength <= acts.seq, "a sequence is longer than the planned \(acts.seq)")
        precondition(pass.head != .none, "backward needs the gradient of a loss with backward first")
        let c = config
        let d = c.nEmbd
        let n = pass.rows
        let vl = layout.localVocab
        let full = trainable?.method == .full
        let g = trainable?.baseGradients
        let dres = acts.dres
        let dxn = acts.dxn
        let env = linearEnv(pass)

        // LM head (tied to wte, column-parallel over the vocabulary): dxf partial → f AllReduce.
        let needBelowHead = headNeedsInputGradient
        if pass.head == .done {
            // The loss ran the head's backward block by block (its logits were never whole).
            if needBelowHead { try head.reduceInputGradient(Mat(dxn, n, d), env) }
        } else {
            try head.backward(
                dy: Mat(acts.logits, n, vl), x: Mat(acts.xf, n, d),
                dx: needBelowHead ? Mat(dxn, n, d) : nil, env)
        }
        if !needBelowHead { return }
        dres.update(repeating: 0, count: n * d)
        normBackward(
            gamma: base.shape.lnfw, beta: base.shape.lnfb, dy: dxn, x: acts.x(c.nLayer),
            mean: acts.lnfMean, rstd: acts.lnfRstd, n: n, acts)
        for l in stride(from: c.nLayer - 1, through: 0, by: -1) {
            if acts.recompute == .blocks && l < c.nLayer - 1 { try recomputeBlock(l, pass) }
            if try !blockBackward(l, pass) { return }
        }
        // Embeddings (full fine-tuning only): wte rows of this rank's vocabulary, GPT-2's wpe replicated.
        if full, let g {
            let seqs = pass.sequences
            let lo = layout.vocabRange.lowerBound
            let gwte = g.ptr(g.shape.wte.f32)
            let gwpe = base.shape.wpe >= 0 ? g.ptr(base.shape.wpe) : nil
            // Row i is position i − start of its sequence (positions restart in each).
            for b in 0..<seqs.count {
                let start = seqs.starts[b]
                for pos in 0..<seqs.lengths[b] {
                    let i = start + pos
                    let row = dres + i * d
                    if let gwpe { K.addInPlace(gwpe + pos * d, row, d) }
                    let t = Int(tokens[i]) - lo
                    if t >= 0 && t < vl { K.addInPlace(gwte + t * d, row, d) }
                }
            }
        }
    }

    /// Under `Recompute.blocks`: block l's forward again from its kept input x(l), into the one set
    /// of per-block buffers, with the pass's own context (LoRA's dropout masks are keyed by seed,
    /// step, slot, row and column, so they are the forward's), its collectives under
    /// `Phase.recompute`. It writes x(l+1) again, with the value it held, which nothing reads any
    /// more. The top block is not recomputed: the forward left its buffers in that set.
    func recomputeBlock(_ l: Int, _ pass: ForwardPass) throws {
        try regions.during(.recompute) { try blockForward(l, pass, pos0: 0, cache: nil) }
    }

    /// Whether anything below the LM head trains (so backward needs the head's input gradient).
    var headNeedsInputGradient: Bool { backwardPlan.needsGradient(below: .head) }

    /// One block's backward; dres holds ∂loss/∂x(l+1) on entry and ∂loss/∂x(l) on exit.
    /// Returns false once the lowest trainable stage is done (nothing below needs gradients).
    func blockBackward(_ l: Int, _ pass: ForwardPass) throws -> Bool {
        let acts = pass.acts
        let c = config
        let d = c.nEmbd
        let n = pass.rows
        let seqs = pass.sequences
        let dl = layout.localDim
        let fl = layout.localFFN
        let hl = layout.localHeads
        let hd = c.headDim
        let qw = layout.localQKV
        let kvd = layout.localKVDim
        let w = base.shape.blocks[l]
        let ops = blocks[l]
        let env = linearEnv(pass)
        let dxn = acts.dxn
        let dfc = acts.dfc
        let dgu = acts.dgu
        let datt = acts.datt
        let dqkv = acts.dqkv
        let xMid = acts.xMid(l)
        let xn1 = acts.xn1(l)
        let xn2 = acts.xn2(l)
        let qkv = acts.qkv(l)
        let att = acts.att(l)
        let fcPre = acts.fcPre(l)
        let fcAct = acts.fcAct(l)
        let ln1 = acts.ln1(l)
        let ln2 = acts.ln2(l)
        let plan = backwardPlan

        // Adapter after the MLP: dres at its output; dy at the MLP's output.
        guard var dy = try belowAdapter(l, .mlp, pass) else { return false }

        // MLP output: row-parallel (mlp.c_proj, down_proj); dy replicated, dfcAct local.
        let needBelowMLPOut = plan.needsGradient(below: .block(l, .mlpOutput))
        try ops.fcProj.backward(
            dy: Mat(dy, n, d), x: Mat(fcAct, n, fl), dx: needBelowMLPOut ? Mat(dfc, n, fl) : nil, env)
        if !needBelowMLPOut { return false }
        family.activation.backward(dgu, dh: dfc, pre: fcPre, rows: n, width: fl)

        // MLP input: column-parallel c_fc or gate | up (its backward reduces dxn: f); the norm.
        let needBelowMLPIn = plan.needsGradient(below: .block(l, .mlpInput))
        try ops.fc.backward(
            dy: Mat(dgu, n, layout.localMLPIn), x: Mat(xn2, n, d), dx: needBelowMLPIn ? Mat(dxn, n, d) : nil, env)
        if !needBelowMLPIn { return false }
        normBackward(gamma: w.ln2w, beta: w.ln2b, dy: dxn, x: xMid, mean: ln2, rstd: ln2 + n, n: n, acts)

        // Adapter after attention: dres (= ∂loss/∂xMid) at its output; dy at attention's output.
        guard let dyAttn = try belowAdapter(l, .attention, pass) else { return false }
        dy = dyAttn

        // Attention output: row-parallel (c_proj, o_proj); dy replicated.
        let needBelowAttnOut = plan.needsGradient(below: .block(l, .attentionOutput))
        try ops.proj.backward(dy: Mat(dy, n, d), x: Mat(att, n, dl), dx: needBelowAttnOut ? Mat(datt, n, dl) : nil, env)
        if !needBelowAttnOut { return false }

        // Local attention heads → dqkv. Under grouped-query attention the query heads of a group
        // add their key/value gradients into their shared head's.
        let grouped = hl > layout.localKVHeads
        if grouped {
            for i in 0..<n { (dqkv + i * qw + dl).update(repeating: 0, count: 2 * kvd) }
        }
        // Per sequence, as in forward: its rows r0 ..< r0 + t, its probabilities t² per head.
        for b in 0..<seqs.count {
            let r0 = seqs.starts[b]
            let t = seqs.lengths[b]
            let probs = acts.probs(l) + hl * seqs.squareStarts[b]
            for h in 0..<hl {
                let q0 = r0 * qw + h * hd
                let k0 = r0 * qw + dl + layout.kvHead(forLocalHead: h) * hd
                K.attentionBackward(
                    dq: dqkv + q0, dk: dqkv + k0, dv: dqkv + k0 + kvd, ldd: qw,
                    dp: acts.dp, dout: datt + r0 * dl + h * hd, lddo: dl,
                    p: probs + h * t * t,
                    q: qkv + q0, k: qkv + k0, v: qkv + k0 + kvd, ld: qw, t: t, hd: hd, accumulateKV: grouped)
            }
        }
        family.positions.backward(dqkv, ld: qw, seqs)

        // Attention input: column-parallel q|k|v (its backward reduces dxn: f); the norm.
        let needBelowAttnIn = plan.needsGradient(below: .block(l, .attentionInput))
        try ops.qkv.backward(dy: Mat(dqkv, n, qw), x: Mat(xn1, n, d), dx: needBelowAttnIn ? Mat(dxn, n, d) : nil, env)
        if !needBelowAttnIn { return false }
        normBackward(gamma: w.ln1w, beta: w.ln1b, dy: dxn, x: acts.x(l), mean: ln1, rstd: ln1 + n, n: n, acts)
        return true
    }

    /// dres += the family norm's input gradient, given dy at its output; and its parameters'
    /// gradients: γ and β in full fine-tuning, β alone under BitFit. The base's γ is at `gamma`, β at
    /// `beta` (−1: the norm has none, as the Llama family's RMSNorm).
    private func normBackward(
        gamma: Int, beta: Int, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
        mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>, n: Int, _ acts: Activations
    ) {
        let g = trainable?.baseGradients
        let grads = NormGradients(
            gamma: g?.ptr(gamma),
            beta: beta < 0 ? nil : g?.ptr(beta) ?? trainable?.biases?.grad(at: beta))
        family.norm.backward(acts.dres, dy: dy, x: x, mean: mean, rstd: rstd, base.norm(gamma, beta), grads, n: n)
    }

    /// The gradient at a sublayer's output, below the adapter at `pos` of block `l` (dres itself
    /// when there is none); nil when that adapter is the lowest trainable stage, so nothing below
    /// needs a gradient.
    private func belowAdapter(_ l: Int, _ pos: AdapterPosition, _ pass: ForwardPass) throws -> UnsafePointer<Float>? {
        let acts = pass.acts
        guard let i = adapterIndex(l, pos) else { return UnsafePointer(acts.dres) }
        let need = backwardPlan.needsGradient(below: .block(l, pos.stage))
        try adapterBackward(i, dy: acts.dres, dx: acts.dsub, needInput: need, pass)
        return need ? UnsafePointer(acts.dsub) : nil
    }
}
