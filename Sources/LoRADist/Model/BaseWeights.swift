import Foundation

/// How a full HF tensor maps onto one tensor-parallel rank's shard.
public enum ShardSpec: Equatable, Sendable {
    /// Every rank holds the whole tensor.
    case replicated
    /// Rows `range` of a 2-D tensor (row-parallel weights; the vocabulary of wte, zero-padded past `valid`).
    case rows(Range<Int>, valid: Int)
    /// Columns `range` of a 2-D tensor, or elements of a 1-D one (column-parallel weights and biases).
    case cols(Range<Int>)
    /// c_attn: columns `range` of each of the Q, K and V blocks of width `d`, stored [Q_t | K_t | V_t].
    case qkv(Range<Int>, d: Int)
    /// Rows `range` of a 2-D tensor, or elements of a 1-D one, held whole by each of the `ranks`
    /// consecutive ranks that read them, and identical on those ranks: the rows of one key/value
    /// head when there are fewer key/value heads than ranks (`TPLayout.kvReplicated`).
    case shared(Range<Int>, ranks: Int)
}

/// How the frozen base is stored and computes. bf16: its GEMM weights (the token embedding, an
/// untied LM head, the linear weights of each block) are held as bf16 and their GEMMs take bf16
/// inputs with fp32 accumulation; everything else (norms, biases, wpe, LoRA, the residual
/// stream, the loss) stays fp32.
public enum Precision: String, Codable, Sendable, CaseIterable {
    case fp32, bf16
}

/// One named tensor of the model and where this rank's shard of it lives in the arenas.
public struct TensorSlot: Sendable {
    public let name: String  // HF name, e.g. "transformer.h.0.attn.c_attn.weight"
    public let shape: [Int]  // full shape in the HF checkpoint ([in, out] for Conv1D, [out, in] for nn.Linear)
    public let spec: ShardSpec
    public let offset: Int  // into the fp32 arena; −1 when the tensor is held in bf16 only
    /// Into the bf16 arena; −1 when the tensor has no bf16 copy.
    public let half: Int
    public let localCount: Int
    /// True for the projections into the residual stream (GPT-2's scaled init).
    public let residualProjection: Bool
}

/// Offsets of one block's tensors (this rank's shard); −1 for a tensor the family does not have.
/// A GEMM weight's `Weight` holds its fp32 and bf16 offsets.
///
/// GPT-2 (Conv1D, [in, out]): ln [d]; attnW [d, 3·dl] (this rank's q, k, v columns interleaved
/// per row); attnB [3·dl]; projW [dl, d]; projB [d]; fcW [d, fl]; fcB [fl]; fcProjW [fl, d]; fcProjB [d].
///
/// Llama family (nn.Linear, [out, in]; no LayerNorm β, no biases but Qwen2's on q, k, v): ln1w, ln2w
/// the RMSNorm weights [d]; attnW [(hl + 2·kvl)·hd, d], this rank's rows of q_proj, k_proj and
/// v_proj back to back, so one GEMM reads them as one matrix; attnB [(hl + 2·kvl)·hd] likewise;
/// projW o_proj's columns [d, hl·hd]; fcW gate_proj's then up_proj's rows [2·fl, d]; fcProjW
/// down_proj's columns [d, fl].
public struct BlockOffsets: Sendable {
    public var ln1w = -1, ln1b = -1, attnB = -1, projB = -1
    public var ln2w = -1, ln2b = -1, fcB = -1, fcProjB = -1
    public var attnW = WeightOffsets(), projW = WeightOffsets(), fcW = WeightOffsets(), fcProjW = WeightOffsets()
}

/// Where a GEMM weight lives: its fp32 offset (−1 when held in bf16 only) and its bf16 offset
/// (−1 under fp32).
public struct WeightOffsets: Sendable, Equatable {
    public var f32 = -1, bf16 = -1
}

/// The arena layout of one rank's shard of the base model. Under fp32 every tensor is in the fp32
/// arena, and the same layout serves the weights and, for full fine-tuning, their gradients. Under
/// bf16 the GEMM weights are in a bf16 arena; with `master` (full fine-tuning) they also keep an
/// fp32 copy at the offsets an fp32 layout would give them, so gradients use an fp32 layout.
/// Tensors one GEMM reads as one matrix (the Llama family's q|k|v and gate|up) are back to back in
/// each arena, in that order. Tensors a family does not have are −1 and have no slot.
public struct BaseLayout: Sendable {
    public let layout: TPLayout
    public let precision: Precision
    public let slots: [TensorSlot]
    public let blocks: [BlockOffsets]
    public let wte: WeightOffsets  // [Vl, d]: GPT-2's wte, the Llama family's embed_tokens
    public let wpe: Int  // [P, d]; −1 in the Llama family (rotary positions)
    public let lnfw: Int, lnfb: Int
    /// The LM head's own matrix [Vl, d] (lm_head, this rank's vocabulary rows); nil when the head
    /// is the token embedding (GPT-2, tied Llama-family models).
    public let head: WeightOffsets?
    /// Floats in the fp32 arena and bf16 values in the bf16 arena.
    public let total: Int, halfTotal: Int

    public init(layout: TPLayout, precision: Precision = .fp32, master: Bool = true) {
        self.layout = layout
        self.precision = precision
        var plan = SlotPlanner(precision: precision, master: master)
        let top = layout.config.family.table.placeTensors(&plan, layout)
        blocks = top.blocks
        wte = top.wte
        wpe = top.wpe
        lnfw = top.lnfw
        lnfb = top.lnfb
        head = top.head
        slots = plan.slots
        total = plan.plan.total
        halfTotal = plan.halfPlan.total
    }

    /// Number of floats this rank holds that are replicated on every tensor-parallel rank.
    public var replicatedCount: Int { slots.filter { $0.spec == .replicated }.reduce(0) { $0 + $1.localCount } }
}

/// The tensors outside the blocks, as a family's table places them (Family/GPT2Family.swift,
/// Family/LlamaFamily.swift).
struct TopOffsets {
    var blocks: [BlockOffsets] = []
    var wte = WeightOffsets(), wpe = -1, lnfw = -1, lnfb = -1
    var head: WeightOffsets?
}

/// Places tensors in the two arenas and records their slots. One `take` per region (a tensor, or
/// tensors a GEMM reads as one matrix), so ArenaPlanner's rounding falls between regions only.
struct SlotPlanner {
    let precision: Precision, master: Bool
    var plan = ArenaPlanner(), halfPlan = ArenaPlanner()
    var slots: [TensorSlot] = []

    init(precision: Precision, master: Bool) {
        self.precision = precision
        self.master = master
    }

    struct Part {
        let name: String, shape: [Int], spec: ShardSpec, local: Int
        init(_ name: String, _ shape: [Int], _ spec: ShardSpec, _ local: Int) {
            self.name = name
            self.shape = shape
            self.spec = spec
            self.local = local
        }
    }

    /// Parts back to back in one region: of the fp32 arena for fp32 tensors; for a GEMM weight
    /// under bf16, of the bf16 arena and, with `master`, of the fp32 arena too.
    mutating func region(_ parts: [Part], gemm: Bool, residual: Bool = false) -> WeightOffsets {
        let n = parts.reduce(0) { $0 + $1.local }
        let half = gemm && precision == .bf16
        let off = !half || master ? plan.take(n) : -1
        let h = half ? halfPlan.take(n) : -1
        var k = 0
        for p in parts {
            slots.append(
                TensorSlot(
                    name: p.name, shape: p.shape, spec: p.spec, offset: off < 0 ? -1 : off + k,
                    half: h < 0 ? -1 : h + k, localCount: p.local, residualProjection: residual))
            k += p.local
        }
        return WeightOffsets(f32: off, bf16: h)
    }

    /// A tensor held in fp32 (norms, biases, positions).
    mutating func add(_ name: String, _ shape: [Int], _ spec: ShardSpec, _ local: Int) -> Int {
        region([Part(name, shape, spec, local)], gemm: false).f32
    }

    /// A GEMM weight.
    mutating func weight(_ name: String, _ shape: [Int], _ spec: ShardSpec, _ local: Int, residual: Bool = false)
        -> WeightOffsets
    {
        region([Part(name, shape, spec, local)], gemm: true, residual: residual)
    }
}

/// A source of full-model tensors by HF name, read block by block so a rank reads only its shard.
public protocol WeightSource {
    /// The full shape of `name`, or throws `ModelError.missingTensor`.
    func shape(of name: String) throws -> [Int]
    /// Writes block rows × cols of a 2-D tensor densely ([rows.count, cols.count]); for a 1-D tensor
    /// rows is 0..<1 and cols selects elements.
    func readBlock(_ name: String, rows: Range<Int>, cols: Range<Int>, into dst: UnsafeMutablePointer<Float>) throws
}

extension Dictionary where Key == String {
    /// The entry of tensor `name`, or `ModelError.missingTensor` naming it.
    fileprivate func tensor(_ name: String) throws -> Value {
        guard let t = self[name] else { throw ModelError.missingTensor("tensor \(name) is missing") }
        return t
    }
}

/// Elements in a row of a tensor of `shape`: its columns if 2-D, its length if 1-D.
private func rowWidth(_ shape: [Int]) -> Int { shape.count == 2 ? shape[1] : shape[0] }

/// Full tensors held in memory (tests, reference files, the CLI's conversions).
public struct DictionaryWeightSource: WeightSource {
    public var tensors: [String: (shape: [Int], data: [Float])]
    public init(_ tensors: [String: (shape: [Int], data: [Float])]) { self.tensors = tensors }

    public func shape(of name: String) throws -> [Int] { try tensors.tensor(name).shape }

    public func readBlock(_ name: String, rows: Range<Int>, cols: Range<Int>, into dst: UnsafeMutablePointer<Float>)
        throws
    {
        let t = try tensors.tensor(name)
        let ncols = rowWidth(t.shape)
        t.data.withUnsafeBufferPointer { src in
            for (i, r) in rows.enumerated() {
                (dst + i * cols.count).update(from: src.baseAddress! + r * ncols + cols.lowerBound, count: cols.count)
            }
        }
    }
}

/// A random initialisation, computed element by element from a hash of (seed, tensor, index), so
/// any shard of any tensor is generated alone and is the same whatever the tensor-parallel layout.
/// GPT-2's: weights N(0, 0.02²), residual projections N(0, (0.02/√(2L))²), biases 0, LayerNorm
/// weights 1. The Llama family's, as transformers' `_init_weights` draws these models: every
/// matrix (embedding, head, projections) N(0, 0.02²), biases 0, RMSNorm weights 1.
public struct RandomInitSource: WeightSource {
    public let config: GPTConfig
    public let seed: UInt64
    private let shapes: [String: (shape: [Int], index: Int, residual: Bool)]

    public init(config: GPTConfig, seed: UInt64) throws {
        self.config = config
        self.seed = seed
        let base = BaseLayout(layout: try TPLayout(config: config, degree: 1, rank: 0))
        var s: [String: (shape: [Int], index: Int, residual: Bool)] = [:]
        for (i, slot) in base.slots.enumerated() { s[slot.name] = (slot.shape, i, slot.residualProjection) }
        shapes = s
    }

    public func shape(of name: String) throws -> [Int] { try shapes.tensor(name).shape }

    public func readBlock(_ name: String, rows: Range<Int>, cols: Range<Int>, into dst: UnsafeMutablePointer<Float>)
        throws
    {
        let t = try shapes.tensor(name)
        let ncols = rowWidth(t.shape)
        let kind: Int
        if name.hasSuffix(".bias") {
            kind = 0
        } else if name.contains("ln_") || name.hasSuffix("norm.weight") {
            kind = 1
        } else {
            kind = 2
        }
        let std: Float = t.residual ? 0.02 / (2 * Float(config.nLayer)).squareRoot() : 0.02
        var k = 0
        for r in rows {
            for c in cols {
                switch kind {
                case 0: dst[k] = 0
                case 1: dst[k] = 1
                default: dst[k] = hashNormal(seed, stream: UInt64(t.index), index: UInt64(r * ncols + c), std: std)
                }
                k += 1
            }
        }
    }
}

/// One rank's shard of the base model: an fp32 arena and, under bf16, a bf16 arena of the GEMM
/// weights (`BaseLayout` gives the views). Each rank converts only its own shard.
public final class BaseWeights {
    public let shape: BaseLayout
    public let arena: FloatArena
    public let half: HalfArena
    public var config: GPTConfig { shape.layout.config }

    public init(shape: BaseLayout) {
        self.shape = shape
        arena = FloatArena(count: shape.total)
        half = HalfArena(count: shape.halfTotal)
    }

    @inline(__always) public func ptr(_ offset: Int) -> UnsafeMutablePointer<Float> {
        precondition(offset >= 0, "this tensor is held in bf16 only")
        return arena.base + offset
    }

    @inline(__always) public func halfPtr(_ offset: Int) -> UnsafeMutablePointer<UInt16> {
        precondition(offset >= 0, "this tensor has no bf16 copy")
        return half.base + offset
    }

    /// The GEMM weight at `w` as a [rows, cols] matrix: its bf16 copy when there is one.
    func matrix(_ w: WeightOffsets, _ rows: Int, _ cols: Int) -> Mat {
        w.bf16 >= 0 ? Mat(bf16: halfPtr(w.bf16), rows, cols) : Mat(ptr(w.f32), rows, cols)
    }

    /// Bytes this rank holds for the base (both arenas).
    public var bytes: Int { arena.bytes + half.bytes }

    /// Row `t` of this rank's wte shard, as fp32.
    func embeddingRow(_ t: Int, into dst: UnsafeMutablePointer<Float>) {
        let d = config.nEmbd
        if shape.wte.f32 >= 0 {
            dst.update(from: ptr(shape.wte.f32) + t * d, count: d)
        } else {
            BF16.widen(halfPtr(shape.wte.bf16) + t * d, dst, d)
        }
    }

    /// Loads this rank's shard of every tensor from `source`, checking full shapes first; under
    /// bf16 the GEMM weights are rounded to nearest even as they arrive.
    public func load(from source: WeightSource) throws {
        for slot in shape.slots {
            let s = try source.shape(of: slot.name)
            guard s == slot.shape else {
                throw ModelError.shapeMismatch("tensor \(slot.name) has shape \(s), the config needs \(slot.shape)")
            }
        }
        // A tensor held in bf16 only passes through an fp32 staging buffer: row-sharded ones (wte,
        // the row-parallel projections) a block of rows at a time, so loading adds little to the peak.
        let chunk = 1 << 16
        var staged = chunk
        for slot in shape.slots where slot.offset < 0 {
            if case .rows = slot.spec { continue }
            staged = max(staged, slot.localCount)
        }
        let staging = FloatArena(count: staged)
        for slot in shape.slots {
            if slot.offset >= 0 {
                try readShard(slot, from: source, into: ptr(slot.offset))
                if slot.half >= 0 { BF16.round(ptr(slot.offset), halfPtr(slot.half), slot.localCount) }
            } else if case .rows(let range, let valid) = slot.spec {
                let width = slot.shape[1]
                let step = max(1, chunk / width)
                let dst = halfPtr(slot.half)
                dst.update(repeating: 0, count: slot.localCount)  // padded vocabulary rows stay +0
                var r = range.lowerBound
                while r < min(range.upperBound, valid) {
                    let hi = min(r + step, range.upperBound, valid)
                    try source.readBlock(slot.name, rows: r..<hi, cols: 0..<width, into: staging.base)
                    BF16.round(staging.base, dst + (r - range.lowerBound) * width, (hi - r) * width)
                    r = hi
                }
            } else {
                try readShard(slot, from: source, into: staging.base)
                BF16.round(staging.base, halfPtr(slot.half), slot.localCount)
            }
        }
    }

    /// Writes this rank's shard of `slot` (its layout: rows, columns, the interleaved q/k/v blocks
    /// or a shared key/value head).
    private func readShard(_ slot: TensorSlot, from source: WeightSource, into dst: UnsafeMutablePointer<Float>) throws
    {
        let is2D = slot.shape.count == 2
        let rowsAll = is2D ? 0..<slot.shape[0] : 0..<1
        let width = rowWidth(slot.shape)
        switch slot.spec {
        case .replicated:
            try source.readBlock(slot.name, rows: rowsAll, cols: 0..<width, into: dst)
        case .rows(let range, let valid):
            let hi = min(range.upperBound, valid)
            if hi > range.lowerBound {
                try source.readBlock(slot.name, rows: range.lowerBound..<hi, cols: 0..<width, into: dst)
            }
            let filled = max(0, hi - range.lowerBound) * width
            (dst + filled).update(repeating: 0, count: slot.localCount - filled)
        case .cols(let range):
            try source.readBlock(slot.name, rows: rowsAll, cols: range, into: dst)
        case .shared(let range, _):
            if is2D {
                try source.readBlock(slot.name, rows: range, cols: 0..<width, into: dst)
            } else {
                try source.readBlock(slot.name, rows: rowsAll, cols: range, into: dst)
            }
        case .qkv(let range, let d):
            // Read each of the Q, K, V column blocks, then interleave them row by row.
            let n = rowsAll.count
            let w = range.count
            let tmp = UnsafeMutablePointer<Float>.allocate(capacity: n * w)
            defer { tmp.deallocate() }
            for part in 0..<3 {
                let cols = (part * d + range.lowerBound)..<(part * d + range.upperBound)
                try source.readBlock(slot.name, rows: rowsAll, cols: cols, into: tmp)
                for r in 0..<n { (dst + r * 3 * w + part * w).update(from: tmp + r * w, count: w) }
            }
        }
    }

    /// Rounds the fp32 master copies of the GEMM weights into their bf16 working copies (full
    /// fine-tuning under bf16, after each optimizer step).
    public func refreshHalf() {
        for slot in shape.slots where slot.half >= 0 && slot.offset >= 0 {
            BF16.round(ptr(slot.offset), halfPtr(slot.half), slot.localCount)
        }
    }

    /// Copies every value from another shard of the same layout.
    public func copy(from other: BaseWeights) {
        precondition(other.shape.total == shape.total && other.shape.halfTotal == shape.halfTotal)
        arena.base.update(from: other.arena.base, count: shape.total)
        half.base.update(from: other.half.base, count: shape.halfTotal)
    }
}

extension BaseWeights {
    /// The whole model as HF-named full tensors; only a degree-1 shard holds the whole model.
    public func fullTensors() throws -> [String: (shape: [Int], data: [Float])] {
        guard shape.layout.degree == 1 else {
            throw ModelError.invalidParallel("fullTensors needs the whole model (tensor-parallel degree 1)")
        }
        var out: [String: (shape: [Int], data: [Float])] = [:]
        for s in shape.slots {
            let count = s.shape.reduce(1, *)  // drops the vocabulary padding of wte
            if s.offset >= 0 {
                out[s.name] = (s.shape, Array(UnsafeBufferPointer(start: ptr(s.offset), count: count)))
            } else {
                var v = [Float](repeating: 0, count: count)
                v.withUnsafeMutableBufferPointer { BF16.widen(halfPtr(s.half), $0.baseAddress!, count) }
                out[s.name] = (s.shape, v)
            }
        }
        return out
    }
}
