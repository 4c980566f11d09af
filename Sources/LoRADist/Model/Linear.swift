/// What a forward pass needs to know besides its tokens. It is passed into `forward` and kept with
/// the pass, so the loss and the backward of that pass see the same values.
public struct PassContext: Sendable, Equatable {
    /// LoRA dropout applies only while training.
    public var training = false
    public var dropoutSeed: UInt64 = 0
    /// Masks differ per optimizer step.
    public var dropoutStep: UInt64 = 0
    /// Index of this pass's first row (token) in the global batch, so masks do not depend on the DP split.
    public var rowOffset = 0
    public var labelSmoothing: Float = 0

    public init(training: Bool = false, dropoutSeed: UInt64 = 0, dropoutStep: UInt64 = 0, rowOffset: Int = 0,
                labelSmoothing: Float = 0) {
        self.training = training
        self.dropoutSeed = dropoutSeed
        self.dropoutStep = dropoutStep
        self.rowOffset = rowOffset
        self.labelSmoothing = labelSmoothing
    }

    public static let inference = PassContext()
}

/// LoRA dropout on a linear op's input. A mask entry depends only on (seed, step, slot, global row,
/// global column), so it is the same whatever the tensor- and data-parallel split.
struct LoRADropout {
    let p: Float, seed: UInt64, step: UInt64, rowOffset: Int

    @inline(__always) private func factor(_ key: UInt64, _ row: UInt64, _ col: Int) -> Float {
        hashUniform(seed, key, row + UInt64(col)) >= p ? 1 / (1 - p) : 0
    }

    /// dst [n, w] = x ⊙ mask; x's column j is global column col0 + j of an input of width inDim.
    func apply(_ x: Mat, into dst: UnsafeMutablePointer<Float>, slot: Int, col0: Int, inDim: Int) -> Mat {
        let key = (step << 20) ^ UInt64(slot), w = x.cols
        for i in 0..<x.rows {
            let row = UInt64(rowOffset + i) * UInt64(inDim)
            for j in 0..<w { dst[i * w + j] = x.base[i * x.ld + j] * factor(key, row, col0 + j) }
        }
        return Mat(dst, x.rows, w)
    }

    /// dx += g ⊙ mask (the same mask `apply` used for `slot`).
    func addMasked(_ dx: Mat, _ g: Mat, slot: Int, col0: Int, inDim: Int) {
        let key = (step << 20) ^ UInt64(slot)
        for i in 0..<dx.rows {
            let row = UInt64(rowOffset + i) * UInt64(inDim)
            for j in 0..<dx.cols { dx.base[i * dx.ld + j] += g.base[i * g.ld + j] * factor(key, row, col0 + j) }
        }
    }
}

/// What one call of a linear op needs from the model it belongs to.
struct LinearEnv {
    let regions: TPRegions
    /// LoRA's per-pass state; nil when no LoRA delta applies (none attached, or merged into W0).
    var lora: LoRAEnv?
    /// Scratch for a bf16 weight's GEMM input (x in forward, dy in backward), `halfCount` values.
    var half: UnsafeMutablePointer<UInt16>? = nil
    var halfCount = 0

    /// `m` as the other operand of a GEMM with `w`: itself for an fp32 weight, rounded to bf16 for a bf16 one.
    func operand(_ m: Mat, for w: Mat) -> Mat {
        guard w.type == .bf16 else { return m }
        guard let half, m.rows * m.cols <= halfCount else { preconditionFailure("no bf16 scratch for [\(m.rows)×\(m.cols)]") }
        return roundedToBF16(m, into: half)
    }
}

/// LoRA's per-pass state: dropout (training only) and its buffers.
struct LoRAEnv {
    let dropout: LoRADropout?
    /// u = x·A'ᵀ of LoRA slot i, [n, r] (the slot's r, room for the largest), kept from forward for backward.
    let u: (Int) -> UnsafeMutablePointer<Float>
    /// [n, r] scratch for du (room for the largest r).
    let du: UnsafeMutablePointer<Float>
    /// Two halves of `half` floats each: the dropped-out input [n, in], then LoRA's share of dx.
    let scratch: UnsafeMutablePointer<Float>
    let half: Int
}

/// A LoRA delta attached to a linear op: LoRA slot `slot`, adding into the op's output columns
/// `column ..< column + slice.b.rows` (c_attn carries q, k and v side by side).
struct LoRAAttachment {
    let slot: Int
    let column: Int
    let slice: LoRASlice
}

/// One (possibly sharded) linear layer and everything about it: y = x·W + b + Σ LoRA deltas, its
/// tensor-parallel kind and the region collective that kind implies (Megatron's
/// Column/RowParallelLinear):
/// - column: W's output columns are sharded, x is replicated; backward's input gradient is a
///   partial sum, reduced by the f AllReduce here;
/// - row: W's input rows are sharded; the output partial sums (LoRA's included) are reduced by the
///   g AllReduce here, and the bias is added once, after it;
/// - replicated: every rank holds all of W; no collective.
/// A frozen weight (dw nil) keeps nothing for its own gradient: backward computes dx only. A bf16
/// weight (the frozen base under `--precision bf16`) takes its GEMM input rounded to bf16 and
/// accumulates in fp32; its gradient, when it trains, is fp32 (of the fp32 master copy).
struct Linear {
    enum Kind { case column, row, replicated }

    let kind: Kind
    /// The call site of this layer's collective (row: its forward g; column: its backward f).
    let site: Site
    /// op(w) is [inLocal, outLocal], fp32 or bf16: GPT-2's Conv1D weights as stored; nn.Linear's
    /// [out, in] (the Llama family) and the LM head (wte or lm_head, [vocab, d]) read transposed.
    let w: Mat
    let bias: UnsafeMutablePointer<Float>?
    /// Gradients of the stored w (same stored shape) and of the bias, when they train.
    let dw: Mat?
    let dbias: UnsafeMutablePointer<Float>?
    /// This rank's input columns within the global input (LoRA dropout masks are global).
    let inOffset: Int, inGlobal: Int
    var lora: [LoRAAttachment] = []

    var inLocal: Int { w.opRows }
    var outLocal: Int { w.opCols }

    /// y [n, outLocal] = x [n, inLocal]·W + b + LoRA, reduced across the TP group for `row`.
    func forward(_ x: Mat, _ y: Mat, _ env: LinearEnv) throws {
        matmul(y, env.operand(x, for: w), w)
        if kind != .row, let bias { K.addBias(y.base, bias, rows: y.rows, cols: y.cols, ld: y.ld) }
        if let le = env.lora {
            for at in lora {
                let xin = le.dropout?.apply(x, into: le.scratch, slot: at.slot, col0: inOffset, inDim: inGlobal) ?? x
                at.slice.forward(x: xin, y: y.columns(at.column, at.slice.b.rows), u: Mat(le.u(at.slot), x.rows, at.slice.rank))
            }
        }
        if kind == .row {
            precondition(y.ld == y.cols, "a row-parallel output is reduced whole")
            try env.regions.reduceFromRegion(y.base, y.rows * y.cols, at: site)
            if let bias { K.addBias(y.base, bias, rows: y.rows, cols: y.cols, ld: y.ld) }
        }
    }

    /// Backward of `forward` given dy [n, outLocal] and the forward's input x: accumulates dW and db
    /// when they train (either alone) and the LoRA gradients when attached; writes dx [n, inLocal] when given
    /// (for `column` summed over the TP group, so it is complete on return).
    func backward(dy: Mat, x: Mat, dx: Mat?, _ env: LinearEnv) throws {
        backwardLocal(dy: dy, x: x, dx: dx, env)
        if let dx { try reduceInputGradient(dx, env) }
    }

    /// `backward` without its collective: a block of rows at a time, then `reduceInputGradient` once
    /// over all of them (the chunked LM head).
    func backwardLocal(dy: Mat, x: Mat, dx: Mat?, _ env: LinearEnv) {
        if let dw {
            if w.transposed { matmul(dw, dy.T, x, beta: 1) } else { matmul(dw, x.T, dy, beta: 1) }
        }
        // BitFit trains the bias of a frozen weight. A row-parallel bias is added after the
        // AllReduce, so dy (replicated) gives every TP rank the same, whole gradient.
        if let dbias { K.biasBackward(dbias, dy.base, rows: dy.rows, cols: dy.cols, ld: dy.ld) }
        if let dx { matmul(dx, env.operand(dy, for: w), w.T) }
        if let le = env.lora {
            for at in lora { loraBackward(at, dy: dy, x: x, dx: dx, le) }
        }
    }

    /// The input gradient's collective: a column-parallel layer sums the ranks' partial dx (f).
    func reduceInputGradient(_ dx: Mat, _ env: LinearEnv) throws {
        guard kind == .column else { return }
        precondition(dx.ld == dx.cols, "a column-parallel input gradient is reduced whole")
        try env.regions.reduceGradIntoRegion(dx.base, dx.rows * dx.cols, at: site)
    }

    private func loraBackward(_ at: LoRAAttachment, dy: Mat, x: Mat, dx: Mat?, _ le: LoRAEnv) {
        let n = x.rows, r = at.slice.rank
        let u = Mat(le.u(at.slot), n, r), du = Mat(le.du, n, r)
        let dyPart = dy.columns(at.column, at.slice.b.rows)
        guard let drop = le.dropout else {
            at.slice.backward(x: x, dy: dyPart, u: u, du: du, dx: dx)
            return
        }
        // Dropout: recompute the masked input, and mask LoRA's share of dx on its way back.
        precondition(n * x.cols <= le.half, "LoRA scratch too small")
        let xin = drop.apply(x, into: le.scratch, slot: at.slot, col0: inOffset, inDim: inGlobal)
        var g: Mat?
        if dx != nil {
            let gs = le.scratch + le.half
            gs.update(repeating: 0, count: n * x.cols)
            g = Mat(gs, n, x.cols)
        }
        at.slice.backward(x: xin, dy: dyPart, u: u, du: du, dx: g)
        if let dx, let g { drop.addMasked(dx, g, slot: at.slot, col0: inOffset, inDim: inGlobal) }
    }

    /// W ± s·B·A for every attached LoRA delta (sign +1 merges, −1 unmerges). A bf16 weight is
    /// merged in fp32 and rounded back, so its unmerge restores W0 only to bf16 rounding.
    func mergeLoRA(sign: Float) {
        for at in lora {
            let block = w.opColumns(at.column, at.slice.b.rows)
            guard block.type == .bf16 else { at.slice.merge(into: block, sign: sign); continue }
            let stored = block.transposed ? block.T : block
            let tmp = FloatArena(count: stored.rows * stored.cols)
            for i in 0..<stored.rows { BF16.widen(stored.halfBase + i * stored.ld, tmp.base + i * stored.cols, stored.cols) }
            let wide = Mat(tmp.base, stored.rows, stored.cols)
            at.slice.merge(into: block.transposed ? wide.T : wide, sign: sign)
            BF16.round(tmp.base, ld: stored.cols, stored.halfBase, ldd: stored.ld, rows: stored.rows, cols: stored.cols)
        }
    }
}
