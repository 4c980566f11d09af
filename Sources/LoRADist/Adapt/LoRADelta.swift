/// LoRA dropout on a linear op's input. A mask entry depends only on (seed, step, slot, global row,
/// global column), so it is the same whatever the tensor- and data-parallel split.
struct LoRADropout {
    let p: Float, seed: UInt64, step: UInt64
    /// Where the pass's rows are in the global batch (`PassContext.rowKey`).
    let rows: PassContext

    @inline(__always) private func factor(_ key: UInt64, _ row: UInt64, _ col: Int) -> Float {
        hashUniform(seed, key, row + UInt64(col)) >= p ? 1 / (1 - p) : 0
    }

    /// dst [n, w] = x ⊙ mask; x's column j is global column col0 + j of an input of width inDim.
    func apply(_ x: Mat, into dst: UnsafeMutablePointer<Float>, slot: Int, col0: Int, inDim: Int) -> Mat {
        let key = (step << 20) ^ UInt64(slot)
        let w = x.cols
        for i in 0..<x.rows {
            let row = UInt64(rows.rowKey(i)) * UInt64(inDim)
            for j in 0..<w { dst[i * w + j] = x.base[i * x.ld + j] * factor(key, row, col0 + j) }
        }
        return Mat(dst, x.rows, w)
    }

    /// dx += g ⊙ mask (the same mask `apply` used for `slot`).
    func addMasked(_ dx: Mat, _ g: Mat, slot: Int, col0: Int, inDim: Int) {
        let key = (step << 20) ^ UInt64(slot)
        for i in 0..<dx.rows {
            let row = UInt64(rows.rowKey(i)) * UInt64(inDim)
            for j in 0..<dx.cols { dx.base[i * dx.ld + j] += g.base[i * g.ld + j] * factor(key, row, col0 + j) }
        }
    }
}

/// One LoRA slot attached to a linear op on this rank: it adds s·dropout(x)·A'ᵀ·B'ᵀ into the op's
/// output columns `column ..< column + slice.b.rows` (c_attn and q|k|v_proj carry q, k and v side
/// by side, the Llama family's gate|up_proj gate and up). Its input columns (`inOffset` within a
/// global input of `inGlobal`) key the dropout masks, which backward recomputes rather than keeps.
struct LoRADelta: LinearDelta {
    let slot: Int
    let column: Int
    let inOffset: Int, inGlobal: Int
    /// The dropout rate (applied only in training passes).
    let dropout: Float
    let slice: LoRASlice
    /// Where the buffers of all of a model's LoRA deltas are.
    let workspace: LoRAWorkspace

    private func drop(_ pass: DeltaPass) -> LoRADropout? {
        let c = pass.context
        guard c.training && dropout > 0 else { return nil }
        return LoRADropout(p: dropout, seed: c.dropoutSeed, step: c.dropoutStep, rows: c)
    }

    func forward(x: Mat, y: Mat, _ pass: DeltaPass) {
        let b = workspace.buffers(pass)
        let xin = drop(pass)?.apply(x, into: b.scratch, slot: slot, col0: inOffset, inDim: inGlobal) ?? x
        slice.forward(x: xin, y: y.columns(column, slice.b.rows), u: Mat(b.u(slot), x.rows, slice.rank))
    }

    func backward(x: Mat, dy: Mat, dx: Mat?, _ pass: DeltaPass) {
        let n = x.rows
        let r = slice.rank
        let b = workspace.buffers(pass)
        let u = Mat(b.u(slot), n, r)
        let du = Mat(b.du, n, r)
        let dyPart = dy.columns(column, slice.b.rows)
        guard let drop = drop(pass) else {
            slice.backward(x: x, dy: dyPart, u: u, du: du, dx: dx)
            return
        }
        // Dropout: recompute the masked input, and mask LoRA's share of dx on its way back.
        precondition(n * x.cols <= b.half, "LoRA scratch too small")
        let xin = drop.apply(x, into: b.scratch, slot: slot, col0: inOffset, inDim: inGlobal)
        var g: Mat?
        if dx != nil {
            let gs = b.scratch + b.half
            gs.update(repeating: 0, count: n * x.cols)
            g = Mat(gs, n, x.cols)
        }
        slice.backward(x: xin, dy: dyPart, u: u, du: du, dx: g)
        if let dx, let g { drop.addMasked(dx, g, slot: slot, col0: inOffset, inDim: inGlobal) }
    }

    /// W ± s·B·A into this slot's output columns of op(W) (sign +1 merges, −1 unmerges). A bf16
    /// weight is merged in fp32 and rounded back, so its unmerge restores W0 only to bf16 rounding.
    func merge(into w: Mat, sign: Float) {
        let block = w.opColumns(column, slice.b.rows)
        guard block.type == .bf16 else {
            slice.merge(into: block, sign: sign)
            return
        }
        let stored = block.transposed ? block.T : block
        let tmp = FloatArena(count: stored.rows * stored.cols)
        for i in 0..<stored.rows {
            BF16.widen(stored.halfBase + i * stored.ld, tmp.base + i * stored.cols, stored.cols)
        }
        let wide = Mat(tmp.base, stored.rows, stored.cols)
        slice.merge(into: block.transposed ? wide.T : wide, sign: sign)
        BF16.round(tmp.base, ld: stored.cols, stored.halfBase, ldd: stored.ld, rows: stored.rows, cols: stored.cols)
    }
}

/// One set of LoRA's buffers, for passes of up to `rows` rows: u = x·A'ᵀ [n, r] of each slot (kept
/// from forward for backward) or of one slot shared by all, du [n, r], and two halves of `half`
/// floats each (the dropped-out input [n, in], then LoRA's share of dx). r is the largest slot
/// rank, `in` the widest linear input (GPT-2's 4d, the Llama family's max(d, ffn)).
final class LoRABuffers {
    let rows: Int, rank: Int, perSlot: Bool
    private let arena: FloatArena
    let du: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
    let half: Int

    init(rows n: Int, slots: Int, rank r: Int, width: Int, perSlot: Bool) {
        rows = n
        rank = r
        self.perSlot = perSlot
        var p = ArenaPlanner()
        _ = p.take((perSlot ? slots : 1) * n * r)  // u, at offset 0
        let duO = p.take(n * r)
        let scO = p.take(2 * n * width)
        arena = FloatArena(count: p.total)
        du = arena.base + duO
        scratch = arena.base + scO
        half = n * width
    }

    /// u of slot `i` [n, r].
    @inline(__always) func u(_ i: Int) -> UnsafeMutablePointer<Float> { arena.base + (perSlot ? i : 0) * rows * rank }
}

/// Where a model's LoRA deltas find their buffers: training passes in their own set (one u per
/// slot, sized for the model's training batch), other passes (evaluation on inference activations,
/// decoding) in one shared set, grown to the longest of them. Each set is made on first use.
final class LoRAWorkspace {
    let slots: Int, rank: Int, width: Int
    private var kept: LoRABuffers?, shared: LoRABuffers?

    init(slots: Int, rank: Int, width: Int) {
        self.slots = slots
        self.rank = rank
        self.width = width
    }

    /// The buffers `pass` uses.
    func buffers(_ pass: DeltaPass) -> LoRABuffers {
        let current = pass.kept ? kept : shared
        if let b = current, b.rows >= pass.rows { return b }
        let b = LoRABuffers(rows: pass.rows, slots: slots, rank: rank, width: width, perSlot: pass.kept)
        if pass.kept { kept = b } else { shared = b }
        return b
    }
}
