import Foundation

extension GPTModel {
    /// Runs the model on tokens [batch, len] at absolute positions pos0 ..< pos0+len up to the final
    /// norm (acts.xf), in `acts` (from `activations`). With a cache, keys/values are appended to it
    /// and attention reads all cached positions; without one (training), len must equal the planned
    /// sequence length. The pass it returns is what the loss and backward of these rows take.
    @discardableResult
    public func forward(
        tokens: UnsafePointer<Int32>, batch: Int, len: Int, into acts: Activations, pos0: Int = 0,
        cache: KVCache? = nil, context: PassContext = .inference
    ) throws -> ForwardPass {
        try forward(
            tokens: tokens, sequences: .uniform(batch: batch, length: len), into: acts, pos0: pos0, cache: cache,
            context: context)
    }

    /// Runs the model on `sequences` laid end to end over the rows of `tokens` (Σ len rows: a batch
    /// of equal rows, or a packed micro-batch of examples), each at positions pos0 ..< pos0 + its
    /// length and attending causally within itself only, up to the final norm (acts.xf). With a
    /// cache (decoding: sequences of one length), keys/values are appended to it and attention reads
    /// all cached positions. GPT-2's position table and the Llama family's rotary angles restart
    /// at each sequence's start.
    @discardableResult
    public func forward(
        tokens: UnsafePointer<Int32>, sequences seqs: Sequences, into acts: Activations, pos0: Int = 0,
        cache: KVCache? = nil, context: PassContext = .inference
    ) throws -> ForwardPass {
        let c = config
        let d = c.nEmbd
        let n = seqs.rows
        let batch = seqs.count
        let attention = seqs.squares + pos0 * n
        precondition(
            n <= acts.n && batch <= acts.batch && attention <= acts.squares,
            "\(batch) sequences of \(n) tokens at \(pos0) exceed the planned \(acts.batch)×\(acts.seq)")
        precondition(cache == nil || seqs.uniformLength != nil, "a KV cache takes sequences of one length")
        guard pos0 + seqs.maxLength <= c.nPositions else {
            throw ModelError.invalidConfig(
                "position \(pos0 + seqs.maxLength) exceeds the model's context \(c.nPositions)")
        }
        // Embedding: vocab-parallel lookup, summed across ranks (g), then GPT-2's learned positions
        // (replicated; the Llama family's rotary ones act in attention).
        let x0 = acts.x(0)
        let lo = layout.vocabRange.lowerBound
        let vl = layout.localVocab
        for i in 0..<n {
            let row = x0 + i * d
            let t = Int(tokens[i]) - lo
            if t >= 0 && t < vl { base.embeddingRow(t, into: row) } else { row.update(repeating: 0, count: d) }
        }
        try regions.reduceFromRegion(x0, n * d, at: .embedding)
        family.positions.embed(x0, seqs, pos0: pos0)
        let pass = ForwardPass(sequences: seqs, context: context, acts: acts)
        for l in 0..<c.nLayer { try blockForward(l, pass, pos0: pos0, cache: cache) }
        normForward(
            acts.xf, mean: acts.lnfMean, rstd: acts.lnfRstd, acts.x(c.nLayer), weight: base.shape.lnfw,
            bias: base.shape.lnfb, n: n)
        if let cache { cache.length = pos0 + seqs.maxLength }
        return pass
    }

    /// The family's norm (GPT-2's LayerNorm, saving mean and rstd; the Llama family's RMSNorm,
    /// saving rstd) of x [n, d] into y, with the base's γ at `weight` and β at `bias` (−1: none).
    func normForward(
        _ y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
        _ x: UnsafePointer<Float>, weight: Int, bias: Int, n: Int
    ) {
        family.norm.forward(y, mean: mean, rstd: rstd, x, base.norm(weight, bias), n: n)
    }

    func blockForward(_ l: Int, _ pass: ForwardPass, pos0: Int, cache: KVCache?) throws {
        let seqs = pass.sequences
        let acts = pass.acts
        let c = config
        let d = c.nEmbd
        let n = seqs.rows
        let dl = layout.localDim
        let fl = layout.localFFN
        let hl = layout.localHeads
        let hd = c.headDim
        let qw = layout.localQKV
        let kvd = layout.localKVDim
        let w = base.shape.blocks[l]
        let ops = blocks[l]
        let env = linearEnv(pass)
        let x = acts.x(l)
        let xMid = acts.xMid(l)
        let xn1 = acts.xn1(l)
        let xn2 = acts.xn2(l)
        let qkv = acts.qkv(l)
        let att = acts.att(l)
        let fcPre = acts.fcPre(l)
        let fcAct = acts.fcAct(l)
        let ln1 = acts.ln1(l)
        let ln2 = acts.ln2(l)

        // Attention: norm, q|k|v (column-parallel by heads; rotated by position in the Llama
        // family), local attention (each query head reads its group's key/value head), output
        // projection (row-parallel).
        normForward(xn1, mean: ln1, rstd: ln1 + n, x, weight: w.ln1w, bias: w.ln1b, n: n)
        try ops.qkv.forward(Mat(xn1, n, d), Mat(qkv, n, qw), env)
        family.positions.apply(qkv, ld: qw, seqs, pos0: pos0)
        if let cache {
            // Decoding: sequences of one length, each with its own rows of the cache.
            let batch = seqs.count
            let len = seqs.lengths.first ?? 0
            for b in 0..<batch {
                for j in 0..<layout.localKVHeads {
                    let off = cache.offset(l, b, j)
                    let k = qkv + b * len * qw + dl + j * hd
                    for t in 0..<len {
                        (cache.k.base + off + (pos0 + t) * hd).update(from: k + t * qw, count: hd)
                        (cache.v.base + off + (pos0 + t) * hd).update(from: k + kvd + t * qw, count: hd)
                    }
                }
            }
            for b in 0..<batch {
                for h in 0..<hl {
                    let q = qkv + b * len * qw + h * hd
                    let kvh = layout.kvHead(forLocalHead: h)
                    let o = att + b * len * dl + h * hd
                    let off = cache.offset(l, b, kvh)
                    let tk = pos0 + len
                    let p = acts.probs(l) + (b * hl + h) * len * tk
                    K.attentionForward(
                        o: o, ldo: dl, p: p, q: q, ldq: qw, k: cache.k.base + off, ldk: hd, v: cache.v.base + off,
                        ldv: hd,
                        tq: len, tk: tk, pos0: pos0, hd: hd)
                }
            }
        } else {
            // Each sequence attends within itself: its rows r0 ..< r0 + len, its probabilities
            // len² per head (a batch of rows: (b · hl + h) · len² as before).
            for b in 0..<seqs.count {
                let r0 = seqs.starts[b]
                let len = seqs.lengths[b]
                let probs = acts.probs(l) + hl * seqs.squareStarts[b]
                for h in 0..<hl {
                    let q = qkv + r0 * qw + h * hd
                    let kvh = layout.kvHead(forLocalHead: h)
                    let o = att + r0 * dl + h * hd
                    let p = probs + h * len * len
                    let k = qkv + r0 * qw + dl + kvh * hd
                    K.attentionForward(
                        o: o, ldo: dl, p: p, q: q, ldq: qw, k: k, ldk: qw, v: k + kvd, ldv: qw,
                        tq: len, tk: len, pos0: 0, hd: hd)
                }
            }
        }
        try ops.proj.forward(Mat(att, n, dl), Mat(xMid, n, d), env)
        if let i = adapterIndex(l, .attention) { try adapterForward(i, h: xMid, n: n, acts) }
        K.addInPlace(xMid, x, n * d)

        // MLP: norm, input projection (column-parallel: c_fc, or gate | up), GELU or SwiGLU,
        // output projection (row-parallel).
        let xOut = acts.x(l + 1)
        normForward(xn2, mean: ln2, rstd: ln2 + n, xMid, weight: w.ln2w, bias: w.ln2b, n: n)
        try ops.fc.forward(Mat(xn2, n, d), Mat(fcPre, n, layout.localMLPIn), env)
        family.activation.forward(fcAct, fcPre, rows: n, width: fl)
        try ops.fcProj.forward(Mat(fcAct, n, fl), Mat(xOut, n, d), env)
        if let i = adapterIndex(l, .mlp) { try adapterForward(i, h: xOut, n: n, acts) }
        K.addInPlace(xOut, xMid, n * d)
    }

    /// Vocab-parallel cross-entropy over all n rows of `pass`: computes this rank's logit
    /// shard, reduces max and (Σexp, target logit, Σlogits) across the TP group, and returns
    /// Σ_i weight_i · loss_i. With `backward`, leaves weight_i · ∂loss_i/∂logits in acts.logits
    /// (`pass.head` is `.logits`).
    /// Padded vocabulary columns are excluded; label smoothing ε mixes in the uniform distribution
    /// over the real vocabulary.
    ///
    /// When the n × Vl logits do not fit `Activations.logitBudget` (GPT-2's vocabulary), the head
    /// runs `acts.logitRows` rows at a time and is never held whole: each block's Σexp is taken
    /// against its own row maxima and rescaled once the global maxima are known (the same two
    /// AllReduces), and with `backward` the head's backward runs here, block by block (its dx is
    /// reduced in `backward`; `pass.head` is `.done`). On one TP rank every statistic is local, so
    /// a block's gradient is formed as soon as its logits exist; across ranks the blocks' logits
    /// are computed again after the reductions.
    public func lossForward(
        _ pass: inout ForwardPass, targets: UnsafePointer<Int32>, weights: UnsafePointer<Float>,
        backward: Bool
    ) throws -> Double {
        pass.head = .none
        let acts = pass.acts
        let n = pass.rows
        if acts.logitRows >= n {
            let total = try lossWhole(pass, targets: targets, weights: weights, backward: backward)
            if backward { pass.head = .logits }
            return total
        }
        let c = config
        let d = c.nEmbd
        let vl = layout.localVocab
        let rows = acts.logitRows
        let valid = max(0, min(vl, c.vocabSize - layout.vocabRange.lowerBound))
        let logits = acts.logits
        let rowMax = acts.rowMax
        let sums = acts.rowSums
        let env = linearEnv(pass)
        let local = layout.degree == 1
        let fused = backward && local
        let needDx = headNeedsInputGradient
        func headForward(_ r0: Int, _ m: Int) throws {
            try head.forward(Mat(acts.xf + r0 * d, m, d), Mat(logits, m, vl), env)
        }
        func headBackward(_ r0: Int, _ m: Int) {
            lossGradient(pass, rows: r0..<(r0 + m), targets: targets, weights: weights)
            head.backwardLocal(
                dy: Mat(logits, m, vl), x: Mat(acts.xf + r0 * d, m, d), dx: needDx ? Mat(acts.dxn + r0 * d, m, d) : nil,
                env)
        }
        for r0 in stride(from: 0, to: n, by: rows) {
            let m = min(rows, n - r0)
            try headForward(r0, m)
            for i in 0..<m {
                let z = logits + i * vl
                let row = r0 + i
                rowMax[row] = K.maximum(z, valid)
                rowStatistics(z, row: row, n: n, target: targets[row], acts)
            }
            if fused { headBackward(r0, m) }
        }
        if !local {
            // Σexp against this rank's row maxima → against the global ones.
            let own = acts.rowLoss  // scratch until the losses are written
            own.update(from: rowMax, count: n)
            try regions.vocabMax(rowMax, n)
            for i in 0..<n where own[i] > -Float.infinity { sums[i] *= expf(own[i] - rowMax[i]) }
            try regions.vocabSums(sums, 3 * n)
        }
        let total = rowLosses(pass, weights: weights)
        if backward && !fused {
            for r0 in stride(from: 0, to: n, by: rows) {
                let m = min(rows, n - r0)
                try headForward(r0, m)
                headBackward(r0, m)
            }
        }
        if backward { pass.head = .done }
        return total
    }

    /// The loss with all n rows' logits held at once (the test models, the built-in base, and any
    /// vocabulary shard that fits).
    private func lossWhole(
        _ pass: ForwardPass, targets: UnsafePointer<Int32>, weights: UnsafePointer<Float>,
        backward: Bool
    ) throws -> Double {
        let c = config
        let d = c.nEmbd
        let n = pass.rows
        let vl = layout.localVocab
        let acts = pass.acts
        let logits = acts.logits
        try head.forward(Mat(acts.xf, n, d), Mat(logits, n, vl), linearEnv(pass))
        let valid = max(0, min(vl, c.vocabSize - layout.vocabRange.lowerBound))  // real columns of this shard
        let rowMax = acts.rowMax
        let sums = acts.rowSums
        for i in 0..<n { rowMax[i] = K.maximum(logits + i * vl, valid) }
        try regions.vocabMax(rowMax, n)
        for i in 0..<n { rowStatistics(logits + i * vl, row: i, n: n, target: targets[i], acts) }
        try regions.vocabSums(sums, 3 * n)
        let total = rowLosses(pass, weights: weights)
        if backward { lossGradient(pass, rows: 0..<n, targets: targets, weights: weights) }
        return total
    }

    /// One row's statistics of this shard's real columns `z`, against acts.rowMax[row]: Σexp(z − max),
    /// the target's logit (0 when another shard holds it) and Σz, into acts.rowSums (n apart).
    @inline(__always) private func rowStatistics(
        _ z: UnsafePointer<Float>, row: Int, n: Int, target: Int32,
        _ acts: Activations
    ) {
        let lo = layout.vocabRange.lowerBound
        let valid = max(0, min(layout.localVocab, config.vocabSize - lo))
        let sums = acts.rowSums
        let t = Int(target) - lo
        sums[row] = K.sumExpShift(z, valid, acts.rowMax[row])
        sums[n + row] = (t >= 0 && t < valid) ? z[t] : 0
        sums[2 * n + row] = K.sum(z, valid)
    }

    /// Each row's loss into acts.rowLoss from the reduced row maxima and sums; Σ weight · loss.
    private func rowLosses(_ pass: ForwardPass, weights: UnsafePointer<Float>) -> Double {
        let acts = pass.acts
        let n = pass.rows
        let sums = acts.rowSums
        let rowMax = acts.rowMax
        let eps = pass.context.labelSmoothing
        let invV = 1 / Float(config.vocabSize)
        var total: Double = 0
        for i in 0..<n {
            let logZ = rowMax[i] + logf(sums[i])
            let nll = logZ - sums[n + i]
            let smooth = logZ - sums[2 * n + i] * invV
            let loss = (1 - eps) * nll + eps * smooth
            acts.rowLoss[i] = loss
            total += Double(weights[i]) * Double(loss)
        }
        return total
    }

    /// weight · ∂loss/∂logits, in place, for `rows` of the pass; their logits are in acts.logits
    /// from its first row on.
    private func lossGradient(
        _ pass: ForwardPass, rows: Range<Int>, targets: UnsafePointer<Int32>,
        weights: UnsafePointer<Float>
    ) {
        let vl = layout.localVocab
        let lo = layout.vocabRange.lowerBound
        let acts = pass.acts
        let valid = max(0, min(vl, config.vocabSize - lo))
        let eps = pass.context.labelSmoothing
        let invV = 1 / Float(config.vocabSize)
        let rowMax = acts.rowMax
        let sums = acts.rowSums
        for i in rows {
            let z = acts.logits + (i - rows.lowerBound) * vl
            let wgt = weights[i]
            if wgt == 0 {
                z.update(repeating: 0, count: vl)
                continue
            }
            let m = rowMax[i]
            let inv = 1 / sums[i]
            K.scaledExpShift(z, valid, m, wgt * inv, wgt * eps * invV)
            if valid < vl { for j in valid..<vl { z[j] = 0 } }
            let t = Int(targets[i]) - lo
            if t >= 0 && t < valid { z[t] -= wgt * (1 - eps) }
        }
    }

    /// Greedy next tokens: for each sequence of `pass`, the argmax over the full vocabulary of the
    /// logits at its last position. Ties go to the lowest token id.
    public func argmaxLast(_ pass: ForwardPass) throws -> [Int32] {
        let seqs = pass.sequences
        let batch = seqs.count
        let acts = pass.acts
        let d = config.nEmbd
        let vl = layout.localVocab
        let lo = layout.vocabRange.lowerBound
        let valid = max(0, min(vl, config.vocabSize - lo))
        let cand = acts.candidates
        let logits = acts.logits
        for b in 0..<batch {
            let xrow = acts.xf + (seqs.starts[b] + seqs.lengths[b] - 1) * d
            try head.forward(Mat(xrow, 1, d), Mat(logits + b * vl, 1, vl), linearEnv(pass))
            var best = -Float.infinity
            var arg = 0
            for j in 0..<valid where logits[b * vl + j] > best {
                best = logits[b * vl + j]
                arg = j
            }
            cand[2 * b] = best
            cand[2 * b + 1] = Float(lo + arg)
        }
        let p = layout.degree
        let recv = cand + 2 * batch
        // The gather buffer follows the local candidates in the same scratch.
        try regions.gatherCandidates(cand, 2 * batch, into: recv)
        var out = [Int32](repeating: 0, count: batch)
        for b in 0..<batch {
            var best = -Float.infinity
            var arg: Float = 0
            for r in 0..<p {
                let v = recv[r * 2 * batch + 2 * b]
                let id = recv[r * 2 * batch + 2 * b + 1]
                if v > best || (v == best && id < arg) {
                    best = v
                    arg = id
                }
            }
            out[b] = Int32(arg)
        }
        return out
    }

    /// This rank's logits shard for the last position of each sequence of `pass`:
    /// [batch, Vl] written into acts.logits (padded columns hold −∞).
    public func lastLogitsShard(_ pass: ForwardPass) throws -> UnsafeMutablePointer<Float> {
        let seqs = pass.sequences
        let batch = seqs.count
        let acts = pass.acts
        let d = config.nEmbd
        let vl = layout.localVocab
        let lo = layout.vocabRange.lowerBound
        let valid = max(0, min(vl, config.vocabSize - lo))
        for b in 0..<batch {
            let xrow = acts.xf + (seqs.starts[b] + seqs.lengths[b] - 1) * d
            try head.forward(Mat(xrow, 1, d), Mat(acts.logits + b * vl, 1, vl), linearEnv(pass))
            if valid < vl { for j in valid..<vl { acts.logits[b * vl + j] = -Float.infinity } }
        }
        return acts.logits
    }
}

extension GPTModel {
    /// Array convenience for tests and tools (the trainer passes its preallocated buffers).
    public func lossForward(
        _ pass: inout ForwardPass, targets: [Int32], weights: [Float],
        backward: Bool
    ) throws -> Double {
        precondition(targets.count >= pass.rows && weights.count >= pass.rows)
        return try targets.withUnsafeBufferPointer { t in
            try weights.withUnsafeBufferPointer { w in
                try lossForward(&pass, targets: t.baseAddress!, weights: w.baseAddress!, backward: backward)
            }
        }
    }
}
