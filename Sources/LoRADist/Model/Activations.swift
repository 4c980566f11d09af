/// What a training forward keeps for its backward (`--recompute`): every block's intermediates
/// (`none`), or each block's input alone (`blocks`), the backward then running each block's forward
/// again, into one set of buffers, just before that block's backward (`GPTModel.backward`).
public enum Recompute: String, Codable, CaseIterable, Sendable {
    case none, blocks
}

/// Every buffer a forward and backward pass touches, planned once for (batch, seq) and bound to one
/// arena. In training every block keeps its own activations for the backward, or under
/// `Recompute.blocks` only its input (x(l)) while one set of the other buffers serves all blocks;
/// in inference one set is reused by all blocks (and two residual buffers ping-pong).
public final class Activations {
    /// Sequences of a pass at most, positions of one sequence at most, and rows (tokens) at most.
    public let batch: Int, seq: Int, n: Int
    /// Attention probabilities a block may hold, per head: Σ over the pass's sequences of its
    /// queries × the positions they read (Σ len² in training; batch · seq² unless planned for packed
    /// passes or by `serving`).
    public let probabilities: Int
    public let training: Bool
    /// `.blocks`: training keeps each block's input only and backward recomputes the rest (always
    /// `.none` outside training).
    public let recompute: Recompute
    let arena: FloatArena
    private let layers: Int  // how many per-block copies exist
    /// Per-block copies of the linear inputs only a weight gradient reads (1 when none trains there).
    private let xn1Layers: Int, xn2Layers: Int, attLayers: Int, fcActLayers: Int
    private let d: Int, dl: Int, fl: Int, vl: Int, hl: Int
    /// Widths of the fused q|k|v output, the MLP input projection's output, and the widest linear input.
    private let qkvW: Int, mlpInW: Int, inW: Int

    // offsets and strides of per-block buffers
    private let xOff: Int, xMidOff: Int, xn1Off: Int, xn2Off: Int, ln1Off: Int, ln2Off: Int
    private let qkvOff: Int, probsOff: Int, attOff: Int, fcPreOff: Int, fcActOff: Int
    // single buffers
    public let xf: UnsafeMutablePointer<Float>, lnfMean: UnsafeMutablePointer<Float>,
        lnfRstd: UnsafeMutablePointer<Float>
    /// [logitRows, Vl]: the logits of all n rows when they fit `logitBudget`, else of a block of rows
    /// at a time (the loss then runs the head block by block); holds dlogits after the loss in training.
    public let logits: UnsafeMutablePointer<Float>
    public let logitRows: Int
    /// Floats the logits may take by default when they do not fit whole (16 MiB: GPT-2's
    /// 50,257-wide rows 83 at a time).
    public static let logitBudget = 1 << 22
    public let rowMax: UnsafeMutablePointer<Float>  // [n]
    public let rowSums: UnsafeMutablePointer<Float>  // [3n]: Σexp, target logit, Σlogits
    public let rowLoss: UnsafeMutablePointer<Float>  // [n]
    public let dres: UnsafeMutablePointer<Float>, dxn: UnsafeMutablePointer<Float>
    public let dqkv: UnsafeMutablePointer<Float>, datt: UnsafeMutablePointer<Float>, dfc: UnsafeMutablePointer<Float>
    /// [n, 2·fl]: the gradient at gate | up (the Llama family's SwiGLU); dfc itself for GPT-2 (GELU's
    /// backward is in place).
    public let dgu: UnsafeMutablePointer<Float>
    public let dp: UnsafeMutablePointer<Float>
    public let candidates: UnsafeMutablePointer<Float>  // [2·batch·(tp+1)]: argmax exchange
    // adapters: per slot input h, LayerNorm output and statistics, pre-activation z, activation a
    /// Adapter slots held: all of them in training, one block's under `Recompute.blocks`, one in inference.
    private let adSlots: Int, adWidth: Int
    private let adHOff: Int, adInOff: Int, adLnOff: Int, adZOff: Int, adAOff: Int
    public let adOut: UnsafeMutablePointer<Float>  // [n, d] adapter output / owner's broadcast
    public let adDz: UnsafeMutablePointer<Float>  // [n, ml]
    public let dsub: UnsafeMutablePointer<Float>  // [n, d] gradient at a sublayer's output below its adapter

    /// bf16 copies of a bf16 GEMM's input (x, or dy in backward): n × the widest linear input or
    /// output, or logitRows × Vl if more, under bf16; else empty.
    public let half: HalfArena

    init(
        config c: GPTConfig, layout: TPLayout, batch: Int, seq: Int, training: Bool,
        adapterSlots: Int = 0, adapterWidth: Int = 0, precision: Precision = .fp32, kept: KeptInputs = .all,
        logitBudget: Int = Activations.logitBudget, recompute: Recompute = .none, packed: PackedCapacity? = nil,
        rows: Int? = nil, probabilities: Int? = nil
    ) {
        precondition(!training || (rows == nil && probabilities == nil), "a training plan is batch × seq")
        self.batch = batch
        self.seq = seq
        self.n = rows ?? packed?.rows ?? batch * seq
        self.probabilities = probabilities ?? packed?.squares ?? batch * seq * seq
        self.training = training
        self.recompute = training ? recompute : .none
        let perBlock = training && recompute == .none
        d = c.nEmbd
        dl = layout.localDim
        fl = layout.localFFN
        vl = layout.localVocab
        hl = layout.localHeads
        qkvW = layout.localQKV
        mlpInW = layout.localMLPIn
        inW = max(d, c.ffn)
        // GELU's input gradient overwrites dfc; SwiGLU's (gate | up) needs a buffer of its own.
        let inPlace = c.family.table.activation.backwardInPlace
        layers = perBlock ? c.nLayer : 1
        xn1Layers = kept.xn1 ? layers : 1
        xn2Layers = kept.xn2 ? layers : 1
        attLayers = kept.att ? layers : 1
        fcActLayers = kept.fcAct ? layers : 1
        let xs = training ? c.nLayer + 1 : 2
        var p = ArenaPlanner()
        let n = self.n
        xOff = p.take(xs * n * d)
        xMidOff = p.take(layers * n * d)
        xn1Off = p.take(xn1Layers * n * d)
        xn2Off = p.take(xn2Layers * n * d)
        ln1Off = p.take(layers * 2 * n)
        ln2Off = p.take(layers * 2 * n)
        qkvOff = p.take(layers * n * qkvW)
        probsOff = p.take(layers * hl * self.probabilities)
        attOff = p.take(attLayers * n * dl)
        fcPreOff = p.take(layers * n * mlpInW)
        fcActOff = p.take(fcActLayers * n * fl)
        let xfO = p.take(n * d)
        let lmO = p.take(n)
        let lrO = p.take(n)
        logitRows = n * vl <= logitBudget ? n : min(n, max(batch, logitBudget / max(1, vl)))
        let logO = p.take(logitRows * vl)
        let rmO = p.take(n)
        let rsO = p.take(3 * n)
        let rlO = p.take(n)
        let g = training
        let dresO = p.take(g ? n * d : 0)
        let dxnO = p.take(g ? n * d : 0)
        let dqkvO = p.take(g ? n * qkvW : 0)
        let dattO = p.take(g ? n * dl : 0)
        let dfcO = p.take(g ? n * fl : 0)
        let dpO = p.take(g ? seq * seq : 0)
        let dguO = p.take(g && !inPlace ? n * mlpInW : 0)
        let candO = p.take(2 * batch * (layout.degree + 1))
        adSlots = perBlock ? adapterSlots : training ? adapterSlots / c.nLayer : min(adapterSlots, 1)
        adWidth = adapterWidth
        let ads = adSlots
        adHOff = p.take(ads * n * d)
        adInOff = p.take(ads * n * d)
        adLnOff = p.take(ads * 2 * n)
        adZOff = p.take(ads * n * adapterWidth)
        adAOff = p.take(ads * n * adapterWidth)
        let adOutO = p.take(adapterSlots > 0 ? n * d : 0)
        let adDzO = p.take(adapterSlots > 0 ? n * adapterWidth : 0)
        let dsubO = p.take(adapterSlots > 0 && training ? n * d : 0)
        arena = FloatArena(count: p.total)
        half = HalfArena(count: precision == .bf16 ? max(n * max(inW, qkvW, mlpInW), logitRows * vl) : 0)
        let b = arena.base
        xf = b + xfO
        lnfMean = b + lmO
        lnfRstd = b + lrO
        logits = b + logO
        rowMax = b + rmO
        rowSums = b + rsO
        rowLoss = b + rlO
        dres = b + dresO
        dxn = b + dxnO
        dqkv = b + dqkvO
        datt = b + dattO
        dfc = b + dfcO
        dp = b + dpO
        dgu = inPlace ? dfc : b + dguO
        candidates = b + candO
        adOut = b + adOutO
        adDz = b + adDzO
        dsub = b + dsubO
    }

    /// Whether a pass over `sequences` fits: at most `batch` of them, each at most `seq` long, Σ len
    /// at most `n` and Σ len² at most `probabilities`.
    public func fits(_ sequences: Sequences) -> Bool {
        sequences.count <= batch && sequences.maxLength <= seq && sequences.rows <= n
            && sequences.squares <= probabilities
    }

    @inline(__always) private func blk(_ l: Int) -> Int { layers > 1 ? l : 0 }
    /// Bytes of the arena and of the bf16 scratch.
    public var bytes: Int { arena.bytes + half.bytes }

    /// Residual stream entering block l (x(L) is the input of the final LayerNorm).
    @inline(__always) public func x(_ l: Int) -> UnsafeMutablePointer<Float> {
        arena.base + xOff + (training ? l : l % 2) * n * d
    }
    @inline(__always) public func xMid(_ l: Int) -> UnsafeMutablePointer<Float> {
        arena.base + xMidOff + blk(l) * n * d
    }
    @inline(__always) public func xn1(_ l: Int) -> UnsafeMutablePointer<Float> {
        arena.base + xn1Off + (l % xn1Layers) * n * d
    }
    @inline(__always) public func xn2(_ l: Int) -> UnsafeMutablePointer<Float> {
        arena.base + xn2Off + (l % xn2Layers) * n * d
    }
    @inline(__always) public func ln1(_ l: Int) -> UnsafeMutablePointer<Float> { arena.base + ln1Off + blk(l) * 2 * n }
    @inline(__always) public func ln2(_ l: Int) -> UnsafeMutablePointer<Float> { arena.base + ln2Off + blk(l) * 2 * n }
    @inline(__always) public func qkv(_ l: Int) -> UnsafeMutablePointer<Float> {
        arena.base + qkvOff + blk(l) * n * qkvW
    }
    @inline(__always) public func probs(_ l: Int) -> UnsafeMutablePointer<Float> {
        arena.base + probsOff + blk(l) * hl * probabilities
    }
    @inline(__always) public func att(_ l: Int) -> UnsafeMutablePointer<Float> {
        arena.base + attOff + (l % attLayers) * n * dl
    }
    @inline(__always) public func fcPre(_ l: Int) -> UnsafeMutablePointer<Float> {
        arena.base + fcPreOff + blk(l) * n * mlpInW
    }
    @inline(__always) public func fcAct(_ l: Int) -> UnsafeMutablePointer<Float> {
        arena.base + fcActOff + (l % fcActLayers) * n * fl
    }
    /// Slot i's place: its own in training, (layer, position) → position under `Recompute.blocks`.
    @inline(__always) private func ad(_ i: Int) -> Int { training ? i % adSlots : 0 }
    /// Adapter slot i: its input h [n, d], the input after its LayerNorm (Lin) [n, d], LayerNorm
    /// mean and rstd [2n], pre-activation z and activation a [n, ml].
    @inline(__always) public func adH(_ i: Int) -> UnsafeMutablePointer<Float> { arena.base + adHOff + ad(i) * n * d }
    @inline(__always) public func adIn(_ i: Int) -> UnsafeMutablePointer<Float> { arena.base + adInOff + ad(i) * n * d }
    @inline(__always) public func adLn(_ i: Int) -> UnsafeMutablePointer<Float> { arena.base + adLnOff + ad(i) * 2 * n }
    @inline(__always) public func adZ(_ i: Int) -> UnsafeMutablePointer<Float> {
        arena.base + adZOff + ad(i) * n * adWidth
    }
    @inline(__always) public func adA(_ i: Int) -> UnsafeMutablePointer<Float> {
        arena.base + adAOff + ad(i) * n * adWidth
    }
}

/// What packed passes need at most (`Train/Batcher.swift`'s `PackingBound` computes it from a run's
/// data): rows (Σ len) and attention scores per head (Σ len²) of one pass. Activations planned for
/// it hold that many rows instead of batch × seq, and that many probabilities per head instead of
/// batch × seq².
public struct PackedCapacity: Equatable, Sendable {
    public var rows: Int, squares: Int

    public init(rows: Int, squares: Int) {
        self.rows = rows
        self.squares = squares
    }
}

/// Which linear inputs training keeps per block. Backward needs a linear's input only for the
/// gradient of a weight that trains there (LoRA's A, or W in full fine-tuning); the input
/// gradients need the weights alone. Inputs not kept share one buffer.
public struct KeptInputs: Sendable {
    public var xn1 = true, xn2 = true, att = true, fcAct = true
    public static let all = KeptInputs()
    public static let none = KeptInputs(xn1: false, xn2: false, att: false, fcAct: false)
}

/// Keys and values of past positions for autoregressive decoding: [layer][batch][local key/value head][pos][hd].
public final class KVCache {
    public let batch: Int, capacity: Int
    let k: FloatArena, v: FloatArena
    let hl: Int, hd: Int
    public var length = 0

    public init(config c: GPTConfig, layout: TPLayout, batch: Int, capacity: Int) {
        self.batch = batch
        self.capacity = capacity
        hl = layout.localKVHeads
        hd = c.headDim
        let count = c.nLayer * batch * hl * capacity * hd
        k = FloatArena(count: count)
        v = FloatArena(count: count)
    }

    @inline(__always) func offset(_ l: Int, _ b: Int, _ h: Int) -> Int { ((l * batch + b) * hl + h) * capacity * hd }
}
