/// What a forward pass needs to know besides its tokens. It is passed into `forward` and kept with
/// the pass, so the loss and the backward of that pass see the same values.
public struct PassContext: Sendable, Equatable {
    /// A delta's dropout (LoRA's) applies only while training.
    public var training = false
    public var dropoutSeed: UInt64 = 0
    /// Masks differ per optimizer step.
    public var dropoutStep: UInt64 = 0
    /// Index of this pass's first row (token) in the global batch, so masks do not depend on the DP split.
    public var rowOffset = 0
    /// The global index of each row (token) when the pass's rows are not rowOffset + i: a packed
    /// micro-batch gives each token its index unpacked (its example's row in the global batch ×
    /// the step's sequence length + its position), so its masks are those it has unpacked. Empty:
    /// row i is rowOffset + i.
    public var rowKeys: [Int] = []
    public var labelSmoothing: Float = 0

    public init(
        training: Bool = false, dropoutSeed: UInt64 = 0, dropoutStep: UInt64 = 0, rowOffset: Int = 0,
        rowKeys: [Int] = [], labelSmoothing: Float = 0
    ) {
        self.training = training
        self.dropoutSeed = dropoutSeed
        self.dropoutStep = dropoutStep
        self.rowOffset = rowOffset
        self.rowKeys = rowKeys
        self.labelSmoothing = labelSmoothing
    }

    /// The global index of row i of the pass (what keys its dropout masks).
    @inline(__always) public func rowKey(_ i: Int) -> Int { rowKeys.isEmpty ? rowOffset + i : rowKeys[i] }

    public static let inference = PassContext()
}

/// One pass as a linear op's deltas see it: its context (dropout seed and step, the global index
/// of its first row), the rows its activations are planned for, and whether what a delta saves in
/// forward must last until this pass's backward (training activations) or serves one call only.
struct DeltaPass {
    let context: PassContext
    let rows: Int
    let kept: Bool
}

/// Something a linear op adds to its output and only calls: y += Δ(x) in forward, Δ's own
/// gradients and its share of dx in backward, and Δ folded into (or out of) the op's weight. The
/// op knows nothing else of it; LoRA's delta (`Adapt/LoRADelta.swift`) is one. A delta picks its
/// own output columns and input columns of the op, so several can share an op (c_attn's q, k, v).
protocol LinearDelta {
    /// y [n, outLocal] (the op's whole output on this rank) += Δ(x), x [n, inLocal]; before the
    /// row-parallel op's AllReduce, which then sums the delta's partial output too.
    func forward(x: Mat, y: Mat, _ pass: DeltaPass)
    /// Given the op's dy [n, outLocal] and forward input x: accumulates Δ's gradients, and adds Δ's
    /// share of the input gradient into dx [n, inLocal] when given (before the op's collective).
    func backward(x: Mat, dy: Mat, dx: Mat?, _ pass: DeltaPass)
    /// op(W) [inLocal, outLocal] (this rank's weight of the op) ± Δ as a weight: sign +1 merges, −1 unmerges.
    func merge(into w: Mat, sign: Float)
}

/// What a model's `Trainable` holds of its deltas' owner (LoRA's runtime, in `Adapt/`): the spec it
/// was built from, the values that train and their gradients, and whether the deltas are merged.
public protocol TrainableDeltas: AnyObject {
    var spec: DeltaSpec { get }
    /// The values that train, in one arena replicated whole on every rank.
    var values: FloatArena { get }
    /// Their gradients, at the same offsets, when built for training.
    var grad: FloatArena? { get }
    /// Trainable parameters of all the deltas, over the whole model.
    var parameterCount: Int { get }
    /// Whether the deltas are folded into the weights, so passes skip them.
    var merged: Bool { get }
}

/// The owner of a model's deltas (LoRA's runtime, in `Adapt/`): the model asks it for each linear
/// op's deltas once, when it builds its blocks, and before each pass whether they are merged.
protocol LinearDeltaSet: TrainableDeltas {
    /// The deltas of block `layer`'s op `op` (built as `linear` on this rank of `layout`), in the
    /// order they run.
    func deltas(layer: Int, op: BlockLinears.Op, of linear: Linear, layout: TPLayout) -> [any LinearDelta]
    /// The ops that carry deltas in every block: in training, backward keeps their inputs and
    /// stops below the lowest of them.
    var ops: Set<BlockLinears.Op> { get }
}

/// What one call of a linear op needs from the model it belongs to.
struct LinearEnv {
    let regions: TPRegions
    /// This pass as the op's deltas see it; nil when none applies (none attached, or merged into W).
    var deltas: DeltaPass? = nil
    /// Scratch for a bf16 weight's GEMM input (x in forward, dy in backward), `halfCount` values.
    var half: UnsafeMutablePointer<UInt16>? = nil
    var halfCount = 0

    /// `m` as the other operand of a GEMM with `w`: itself for an fp32 weight, rounded to bf16 for a bf16 one.
    func operand(_ m: Mat, for w: Mat) -> Mat {
        guard w.type == .bf16 else { return m }
        guard let half, m.rows * m.cols <= halfCount else {
            preconditionFailure("no bf16 scratch for [\(m.rows)×\(m.cols)]")
        }
        return roundedToBF16(m, into: half)
    }
}

/// One (possibly sharded) linear layer and everything about it: y = x·W + b + Σ deltas, its
/// tensor-parallel kind and the region collective that kind implies (Megatron's
/// Column/RowParallelLinear):
/// - column: W's output columns are sharded, x is replicated; backward's input gradient is a
///   partial sum, reduced by the f AllReduce here;
/// - row: W's input rows are sharded; the output partial sums (the deltas' included) are reduced
///   by the g AllReduce here, and the bias is added once, after it;
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
    /// This rank's input columns within the global input (a delta's dropout masks are global).
    let inOffset: Int, inGlobal: Int
    /// What this op adds to its output besides x·W + b (LoRA's deltas), in the order they run.
    var deltas: [any LinearDelta] = []

    var inLocal: Int { w.opRows }
    var outLocal: Int { w.opCols }

    /// y [n, outLocal] = x [n, inLocal]·W + b + Σ deltas, reduced across the TP group for `row`.
    func forward(_ x: Mat, _ y: Mat, _ env: LinearEnv) throws {
        matmul(y, env.operand(x, for: w), w)
        if kind != .row, let bias { K.addBias(y.base, bias, rows: y.rows, cols: y.cols, ld: y.ld) }
        if let pass = env.deltas {
            for delta in deltas { delta.forward(x: x, y: y, pass) }
        }
        if kind == .row {
            precondition(y.ld == y.cols, "a row-parallel output is reduced whole")
            try env.regions.reduceFromRegion(y.base, y.rows * y.cols, at: site)
            if let bias { K.addBias(y.base, bias, rows: y.rows, cols: y.cols, ld: y.ld) }
        }
    }

    /// Backward of `forward` given dy [n, outLocal] and the forward's input x: accumulates dW and db
    /// when they train (either alone) and the deltas' gradients; writes dx [n, inLocal] when given
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
        if let pass = env.deltas {
            for delta in deltas { delta.backward(x: x, dy: dy, dx: dx, pass) }
        }
    }

    /// The input gradient's collective: a column-parallel layer sums the ranks' partial dx (f).
    func reduceInputGradient(_ dx: Mat, _ env: LinearEnv) throws {
        guard kind == .column else { return }
        precondition(dx.ld == dx.cols, "a column-parallel input gradient is reduced whole")
        try env.regions.reduceGradIntoRegion(dx.base, dx.rows * dx.cols, at: site)
    }
}
