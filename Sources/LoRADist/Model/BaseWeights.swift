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
}

/// How the frozen base is stored and computes. bf16: its GEMM weights (wte and the four matrices
/// of each block) are held as bf16 and their GEMMs take bf16 inputs with fp32 accumulation;
/// everything else (LayerNorms, biases, wpe, LoRA, the residual stream, the loss) stays fp32.
public enum Precision: String, Codable, Sendable, CaseIterable {
    case fp32, bf16
}

/// One named tensor of the model and where this rank's shard of it lives in the arenas.
public struct TensorSlot: Sendable {
    public let name: String        // HF name, e.g. "transformer.h.0.attn.c_attn.weight"
    public let shape: [Int]        // full shape in the HF checkpoint ([in, out] for Conv1D)
    public let spec: ShardSpec
    public let offset: Int         // into the fp32 arena; −1 when the tensor is held in bf16 only
    /// Into the bf16 arena; −1 when the tensor has no bf16 copy.
    public let half: Int
    public let localCount: Int
    /// True for the projections into the residual stream (GPT-2's scaled init).
    public let residualProjection: Bool
}

/// Offsets of one block's tensors (this rank's shard). Shapes: ln [d]; attnW [d, 3·dl]; attnB [3·dl];
/// projW [dl, d]; projB [d]; fcW [d, fl]; fcB [fl]; fcProjW [fl, d]; fcProjB [d]. A GEMM weight's
/// `Weight` holds its fp32 and bf16 offsets.
public struct BlockOffsets: Sendable {
    public var ln1w = 0, ln1b = 0, attnB = 0, projB = 0
    public var ln2w = 0, ln2b = 0, fcB = 0, fcProjB = 0
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
public struct BaseLayout: Sendable {
    public let layout: TPLayout
    public let precision: Precision
    public let slots: [TensorSlot]
    public let blocks: [BlockOffsets]
    public let wte: WeightOffsets    // [Vl, d]
    public let wpe: Int    // [P, d]
    public let lnfw: Int, lnfb: Int
    /// Floats in the fp32 arena and bf16 values in the bf16 arena.
    public let total: Int, halfTotal: Int

    public init(layout: TPLayout, precision: Precision = .fp32, master: Bool = true) {
        self.layout = layout
        self.precision = precision
        let c = layout.config, d = c.nEmbd, dl = layout.localDim, fl = layout.localFFN
        var plan = ArenaPlanner(), halfPlan = ArenaPlanner()
        var slots: [TensorSlot] = []
        func add(_ name: String, _ shape: [Int], _ spec: ShardSpec, _ local: Int, residual: Bool = false) -> Int {
            let off = plan.take(local)
            slots.append(TensorSlot(name: name, shape: shape, spec: spec, offset: off, half: -1, localCount: local, residualProjection: residual))
            return off
        }
        func weight(_ name: String, _ shape: [Int], _ spec: ShardSpec, _ local: Int, residual: Bool = false) -> WeightOffsets {
            guard precision == .bf16 else { return WeightOffsets(f32: add(name, shape, spec, local, residual: residual), bf16: -1) }
            let off = master ? plan.take(local) : -1
            let h = halfPlan.take(local)
            slots.append(TensorSlot(name: name, shape: shape, spec: spec, offset: off, half: h, localCount: local, residualProjection: residual))
            return WeightOffsets(f32: off, bf16: h)
        }
        wte = weight("transformer.wte.weight", [c.vocabSize, d], .rows(layout.vocabRange, valid: c.vocabSize), layout.localVocab * d)
        wpe = add("transformer.wpe.weight", [c.nPositions, d], .replicated, c.nPositions * d)
        var blocks: [BlockOffsets] = []
        for l in 0..<c.nLayer {
            let p = "transformer.h.\(l)."
            var b = BlockOffsets()
            b.ln1w = add(p + "ln_1.weight", [d], .replicated, d)
            b.ln1b = add(p + "ln_1.bias", [d], .replicated, d)
            b.attnW = weight(p + "attn.c_attn.weight", [d, 3 * d], .qkv(layout.dimRange, d: d), d * 3 * dl)
            b.attnB = add(p + "attn.c_attn.bias", [3 * d], .qkv(layout.dimRange, d: d), 3 * dl)
            b.projW = weight(p + "attn.c_proj.weight", [d, d], .rows(layout.dimRange, valid: d), dl * d, residual: true)
            b.projB = add(p + "attn.c_proj.bias", [d], .replicated, d)
            b.ln2w = add(p + "ln_2.weight", [d], .replicated, d)
            b.ln2b = add(p + "ln_2.bias", [d], .replicated, d)
            b.fcW = weight(p + "mlp.c_fc.weight", [d, 4 * d], .cols(layout.ffnRange), d * fl)
            b.fcB = add(p + "mlp.c_fc.bias", [4 * d], .cols(layout.ffnRange), fl)
            b.fcProjW = weight(p + "mlp.c_proj.weight", [4 * d, d], .rows(layout.ffnRange, valid: 4 * d), fl * d, residual: true)
            b.fcProjB = add(p + "mlp.c_proj.bias", [d], .replicated, d)
            blocks.append(b)
        }
        lnfw = add("transformer.ln_f.weight", [d], .replicated, d)
        lnfb = add("transformer.ln_f.bias", [d], .replicated, d)
        self.blocks = blocks
        self.slots = slots
        total = plan.total
        halfTotal = halfPlan.total
    }

    /// Number of floats this rank holds that are replicated on every tensor-parallel rank.
    public var replicatedCount: Int { slots.filter { $0.spec == .replicated }.reduce(0) { $0 + $1.localCount } }
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
fileprivate func rowWidth(_ shape: [Int]) -> Int { shape.count == 2 ? shape[1] : shape[0] }

/// Full tensors held in memory (tests, reference files, the CLI's conversions).
public struct DictionaryWeightSource: WeightSource {
    public var tensors: [String: (shape: [Int], data: [Float])]
    public init(_ tensors: [String: (shape: [Int], data: [Float])]) { self.tensors = tensors }

    public func shape(of name: String) throws -> [Int] { try tensors.tensor(name).shape }

    public func readBlock(_ name: String, rows: Range<Int>, cols: Range<Int>, into dst: UnsafeMutablePointer<Float>) throws {
        let t = try tensors.tensor(name)
        let ncols = rowWidth(t.shape)
        t.data.withUnsafeBufferPointer { src in
            for (i, r) in rows.enumerated() {
                (dst + i * cols.count).update(from: src.baseAddress! + r * ncols + cols.lowerBound, count: cols.count)
            }
        }
    }
}

/// GPT-2's initialisation, computed element by element from a hash of (seed, tensor, index), so any
/// shard of any tensor is generated alone and is the same whatever the tensor-parallel layout:
/// weights N(0, 0.02²), residual projections N(0, (0.02/√(2L))²), biases 0, LayerNorm weights 1.
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

    public func readBlock(_ name: String, rows: Range<Int>, cols: Range<Int>, into dst: UnsafeMutablePointer<Float>) throws {
        let t = try shapes.tensor(name)
        let ncols = rowWidth(t.shape)
        let kind: Int
        if name.hasSuffix(".bias") { kind = 0 } else if name.contains("ln_") { kind = 1 } else { kind = 2 }
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
        if shape.wte.f32 >= 0 { dst.update(from: ptr(shape.wte.f32) + t * d, count: d) } else { BF16.widen(halfPtr(shape.wte.bf16) + t * d, dst, d) }
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
            } else if case let .rows(range, valid) = slot.spec {
                let width = slot.shape[1], step = max(1, chunk / width)
                let dst = halfPtr(slot.half)
                dst.update(repeating: 0, count: slot.localCount)   // padded vocabulary rows stay +0
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

    /// Writes this rank's shard of `slot` (its layout: rows, columns or the interleaved q/k/v blocks).
    private func readShard(_ slot: TensorSlot, from source: WeightSource, into dst: UnsafeMutablePointer<Float>) throws {
        let is2D = slot.shape.count == 2
        let rowsAll = is2D ? 0..<slot.shape[0] : 0..<1
        let width = rowWidth(slot.shape)
        switch slot.spec {
        case .replicated:
            try source.readBlock(slot.name, rows: rowsAll, cols: 0..<width, into: dst)
        case let .rows(range, valid):
            let hi = min(range.upperBound, valid)
            if hi > range.lowerBound {
                try source.readBlock(slot.name, rows: range.lowerBound..<hi, cols: 0..<width, into: dst)
            }
            let filled = max(0, hi - range.lowerBound) * width
            (dst + filled).update(repeating: 0, count: slot.localCount - filled)
        case let .cols(range):
            try source.readBlock(slot.name, rows: rowsAll, cols: range, into: dst)
        case let .qkv(range, d):
            // Read each of the Q, K, V column blocks, then interleave them row by row.
            let n = rowsAll.count, w = range.count
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
