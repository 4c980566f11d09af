/// How a decoder's tokens know their positions: a learned table added to the token embeddings
/// (GPT-2's wpe), or rotary embeddings turning q and k in attention (the Llama family).
protocol Positions {
    /// Adds the positions of the embedded tokens x [rows, d] of `seqs`: sequence i's rows at
    /// offsets[i] ..< offsets[i] + its length.
    func embed(_ x: UnsafeMutablePointer<Float>, _ seqs: Sequences, at offsets: PositionOffsets)
    /// Turns the q heads and this rank's k heads of the rows of `seqs` in the fused q|k|v (row
    /// stride ld), sequence i's rows at offsets[i] ..< offsets[i] + its length.
    func apply(_ qkv: UnsafeMutablePointer<Float>, ld: Int, _ seqs: Sequences, at offsets: PositionOffsets)
    /// The backward of `apply` in training (positions from 0) on the gradient at q|k|v.
    func backward(_ dqkv: UnsafeMutablePointer<Float>, ld: Int, _ seqs: Sequences)
}

/// GPT-2's learned positions: row p of the table wpe [P, d] is added to the token at position p;
/// attention sees no positions. Full fine-tuning adds wpe's gradient where it adds
/// wte's (GPTModel.backward).
struct LearnedPositions: Positions {
    /// wpe [P, d] in the base (replicated on every tensor-parallel rank).
    let table: UnsafePointer<Float>
    let d: Int

    func embed(_ x: UnsafeMutablePointer<Float>, _ seqs: Sequences, at offsets: PositionOffsets) {
        for b in 0..<seqs.count {
            let start = seqs.starts[b]
            let pos0 = offsets[b]
            for t in 0..<seqs.lengths[b] { K.addInPlace(x + (start + t) * d, table + (pos0 + t) * d, d) }
        }
    }

    func apply(_ qkv: UnsafeMutablePointer<Float>, ld: Int, _ seqs: Sequences, at offsets: PositionOffsets) {}
    func backward(_ dqkv: UnsafeMutablePointer<Float>, ld: Int, _ seqs: Sequences) {}
}

/// The Llama family's rotary positions: q and k turned by position (the "rotate half" form), the
/// backward turning their gradients back. The embeddings get none.
struct RotaryPositions: Positions {
    let table: RotaryTable
    /// This rank's query heads, then its key/value heads from column `kOffset` of a q|k|v row.
    let heads: Int, kvHeads: Int, kOffset: Int, headDim: Int

    init(_ layout: TPLayout) {
        let c = layout.config
        table = RotaryTable(headDim: c.headDim, positions: c.nPositions, theta: c.ropeTheta, llama3: c.ropeScaling)
        heads = layout.localHeads
        kvHeads = layout.localKVHeads
        kOffset = layout.localDim
        headDim = c.headDim
    }

    func embed(_ x: UnsafeMutablePointer<Float>, _ seqs: Sequences, at offsets: PositionOffsets) {}

    func apply(_ qkv: UnsafeMutablePointer<Float>, ld: Int, _ seqs: Sequences, at offsets: PositionOffsets) {
        rotate(qkv, ld: ld, seqs, at: offsets, inverse: false)
    }

    func backward(_ dqkv: UnsafeMutablePointer<Float>, ld: Int, _ seqs: Sequences) {
        rotate(dqkv, ld: ld, seqs, at: .same(0), inverse: true)
    }

    /// Each row is turned on its own, so a batch of rows of one length from one offset is turned in
    /// one call, and a packed pass (or sequences at their own offsets) sequence by sequence.
    private func rotate(
        _ qkv: UnsafeMutablePointer<Float>, ld: Int, _ seqs: Sequences, at offsets: PositionOffsets, inverse: Bool
    ) {
        let hd = headDim
        let parts: [(start: Int, rows: Int, seq: Int, pos0: Int)]
        if case .same(let pos0) = offsets, let len = seqs.uniformLength {
            parts = [(0, seqs.rows, max(1, len), pos0)]
        } else {
            parts = (0..<seqs.count).map { (seqs.starts[$0], seqs.lengths[$0], max(1, seqs.lengths[$0]), offsets[$0]) }
        }
        table.cos.withUnsafeBufferPointer { cs in
            table.sin.withUnsafeBufferPointer { sn in
                for part in parts {
                    let x = qkv + part.start * ld
                    K.rope(
                        x, ld: ld, rows: part.rows, seq: part.seq, pos0: part.pos0, heads: heads, hd: hd,
                        cos: cs.baseAddress!, sin: sn.baseAddress!, inverse: inverse)
                    K.rope(
                        x + kOffset, ld: ld, rows: part.rows, seq: part.seq, pos0: part.pos0, heads: kvHeads, hd: hd,
                        cos: cs.baseAddress!, sin: sn.baseAddress!, inverse: inverse)
                }
            }
        }
    }
}

/// Where each sequence of a pass starts: one offset for all (a batch, or decoding on one cache),
/// or one per sequence (sequences on caches of their own lengths).
enum PositionOffsets {
    case same(Int)
    case each([Int])

    subscript(_ i: Int) -> Int {
        switch self {
        case .same(let p): return p
        case .each(let ps): return ps[i]
        }
    }
}

extension Positions {
    /// `embed` with every sequence from pos0.
    func embed(_ x: UnsafeMutablePointer<Float>, _ seqs: Sequences, pos0: Int) { embed(x, seqs, at: .same(pos0)) }

    /// `apply` with every sequence from pos0.
    func apply(_ qkv: UnsafeMutablePointer<Float>, ld: Int, _ seqs: Sequences, pos0: Int) {
        apply(qkv, ld: ld, seqs, at: .same(pos0))
    }

    /// `embed` on [batch, len] rows of one length.
    func embed(_ x: UnsafeMutablePointer<Float>, batch: Int, len: Int, pos0: Int) {
        embed(x, .uniform(batch: batch, length: len), pos0: pos0)
    }

    /// `apply` on `rows` rows, row r at position pos0 + r % seq.
    func apply(_ qkv: UnsafeMutablePointer<Float>, ld: Int, rows: Int, seq: Int, pos0: Int) {
        apply(qkv, ld: ld, Sequences(rows: rows, each: seq), pos0: pos0)
    }

    /// `backward` on `rows` rows, row r at position r % seq.
    func backward(_ dqkv: UnsafeMutablePointer<Float>, ld: Int, rows: Int, seq: Int) {
        backward(dqkv, ld: ld, Sequences(rows: rows, each: seq))
    }
}

extension Sequences {
    /// `rows` rows cut into sequences of `each` (the last one shorter when `each` does not divide).
    init(rows: Int, each: Int) {
        let whole = [Int](repeating: each, count: rows / each)
        self.init(lengths: rows % each == 0 ? whole : whole + [rows % each])
    }
}
