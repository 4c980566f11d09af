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

/// One named tensor of the model and where this rank's shard of it lives in the arena.
public struct TensorSlot: Sendable {
    public let name: String        // HF name, e.g. "transformer.h.0.attn.c_attn.weight"
    public let shape: [Int]        // full shape in the HF checkpoint ([in, out] for Conv1D)
    public let spec: ShardSpec
    public let offset: Int         // into the arena
    public let localCount: Int
    /// True for the projections into the residual stream (GPT-2's scaled init).
    public let residualProjection: Bool
}

/// Offsets of one block's tensors (this rank's shard). Shapes: ln [d]; attnW [d, 3·dl]; attnB [3·dl];
/// projW [dl, d]; projB [d]; fcW [d, fl]; fcB [fl]; fcProjW [fl, d]; fcProjB [d].
public struct BlockOffsets: Sendable {
    public var ln1w = 0, ln1b = 0, attnW = 0, attnB = 0, projW = 0, projB = 0
    public var ln2w = 0, ln2b = 0, fcW = 0, fcB = 0, fcProjW = 0, fcProjB = 0
}

/// The arena layout of one rank's shard of the base model: the same layout serves the weights and,
/// for full fine-tuning, their gradients.
public struct BaseLayout: Sendable {
    public let layout: TPLayout
    public let slots: [TensorSlot]
    public let blocks: [BlockOffsets]
    public let wte: Int    // [Vl, d]
    public let wpe: Int    // [P, d]
    public let lnfw: Int, lnfb: Int
    public let total: Int

    public init(layout: TPLayout) {
        self.layout = layout
        let c = layout.config, d = c.nEmbd, dl = layout.localDim, fl = layout.localFFN
        var plan = ArenaPlanner()
        var slots: [TensorSlot] = []
        func add(_ name: String, _ shape: [Int], _ spec: ShardSpec, _ local: Int, residual: Bool = false) -> Int {
            let off = plan.take(local)
            slots.append(TensorSlot(name: name, shape: shape, spec: spec, offset: off, localCount: local, residualProjection: residual))
            return off
        }
        wte = add("transformer.wte.weight", [c.vocabSize, d], .rows(layout.vocabRange, valid: c.vocabSize), layout.localVocab * d)
        wpe = add("transformer.wpe.weight", [c.nPositions, d], .replicated, c.nPositions * d)
        var blocks: [BlockOffsets] = []
        for l in 0..<c.nLayer {
            let p = "transformer.h.\(l)."
            var b = BlockOffsets()
            b.ln1w = add(p + "ln_1.weight", [d], .replicated, d)
            b.ln1b = add(p + "ln_1.bias", [d], .replicated, d)
            b.attnW = add(p + "attn.c_attn.weight", [d, 3 * d], .qkv(layout.dimRange, d: d), d * 3 * dl)
            b.attnB = add(p + "attn.c_attn.bias", [3 * d], .qkv(layout.dimRange, d: d), 3 * dl)
            b.projW = add(p + "attn.c_proj.weight", [d, d], .rows(layout.dimRange, valid: d), dl * d, residual: true)
            b.projB = add(p + "attn.c_proj.bias", [d], .replicated, d)
            b.ln2w = add(p + "ln_2.weight", [d], .replicated, d)
            b.ln2b = add(p + "ln_2.bias", [d], .replicated, d)
            b.fcW = add(p + "mlp.c_fc.weight", [d, 4 * d], .cols(layout.ffnRange), d * fl)
            b.fcB = add(p + "mlp.c_fc.bias", [4 * d], .cols(layout.ffnRange), fl)
            b.fcProjW = add(p + "mlp.c_proj.weight", [4 * d, d], .rows(layout.ffnRange, valid: 4 * d), fl * d, residual: true)
            b.fcProjB = add(p + "mlp.c_proj.bias", [d], .replicated, d)
            blocks.append(b)
        }
        lnfw = add("transformer.ln_f.weight", [d], .replicated, d)
        lnfb = add("transformer.ln_f.bias", [d], .replicated, d)
        self.blocks = blocks
        self.slots = slots
        total = plan.total
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

/// Full tensors held in memory (tests, reference files, the CLI's conversions).
public struct DictionaryWeightSource: WeightSource {
    public var tensors: [String: (shape: [Int], data: [Float])]
    public init(_ tensors: [String: (shape: [Int], data: [Float])]) { self.tensors = tensors }

    public func shape(of name: String) throws -> [Int] {
        guard let t = tensors[name] else { throw ModelError.missingTensor("tensor \(name) is missing") }
        return t.shape
    }

    public func readBlock(_ name: String, rows: Range<Int>, cols: Range<Int>, into dst: UnsafeMutablePointer<Float>) throws {
        guard let t = tensors[name] else { throw ModelError.missingTensor("tensor \(name) is missing") }
        let ncols = t.shape.count == 2 ? t.shape[1] : t.shape[0]
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

    public func shape(of name: String) throws -> [Int] {
        guard let t = shapes[name] else { throw ModelError.missingTensor("tensor \(name) is missing") }
        return t.shape
    }

    public func readBlock(_ name: String, rows: Range<Int>, cols: Range<Int>, into dst: UnsafeMutablePointer<Float>) throws {
        guard let t = shapes[name] else { throw ModelError.missingTensor("tensor \(name) is missing") }
        let ncols = t.shape.count == 2 ? t.shape[1] : t.shape[0]
        let kind: Int
        if name.hasSuffix(".bias") { kind = 0 } else if name.contains("ln_") { kind = 1 } else { kind = 2 }
        let std: Float = t.residual ? 0.02 / (2 * Float(config.nLayer)).squareRoot() : 0.02
        var k = 0
        for r in rows {
            for c in cols {
                switch kind {
                case 0: dst[k] = 0
                case 1: dst[k] = 1
                default:
                    let idx = UInt64(r * ncols + c)
                    var u1 = hashUniform(seed, UInt64(t.index) << 1, idx)
                    let u2 = hashUniform(seed, (UInt64(t.index) << 1) | 1, idx)
                    if u1 < 1e-12 { u1 = 1e-12 }
                    dst[k] = std * (-2 * logf(u1)).squareRoot() * cosf(2 * Float.pi * u2)
                }
                k += 1
            }
        }
    }
}

/// One rank's shard of the base model in one arena (`BaseLayout` gives the views).
public final class BaseWeights {
    public let shape: BaseLayout
    public let arena: FloatArena
    public var config: GPTConfig { shape.layout.config }

    public init(shape: BaseLayout) {
        self.shape = shape
        arena = FloatArena(count: shape.total)
    }

    @inline(__always) public func ptr(_ offset: Int) -> UnsafeMutablePointer<Float> { arena.base + offset }

    /// Loads this rank's shard of every tensor from `source`, checking full shapes first.
    public func load(from source: WeightSource) throws {
        for slot in shape.slots {
            let s = try source.shape(of: slot.name)
            guard s == slot.shape else {
                throw ModelError.shapeMismatch("tensor \(slot.name) has shape \(s), the config needs \(slot.shape)")
            }
        }
        for slot in shape.slots {
            let dst = ptr(slot.offset)
            let is2D = slot.shape.count == 2
            let rowsAll = is2D ? 0..<slot.shape[0] : 0..<1
            let width = is2D ? slot.shape[1] : slot.shape[0]
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
    }

    /// Copies every value from another shard of the same layout.
    public func copy(from other: BaseWeights) {
        precondition(other.shape.total == shape.total)
        arena.base.update(from: other.arena.base, count: shape.total)
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
            out[s.name] = (s.shape, Array(UnsafeBufferPointer(start: ptr(s.offset), count: count)))
        }
        return out
    }
}
