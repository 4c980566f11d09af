/// How a decoder's tokens know their positions: a learned table added to the token embeddings
/// (GPT-2's wpe), or rotary embeddings turning q and k in attention (the Llama family).
protocol Positions {
    /// Adds the positions of the embedded tokens x [batch, len, d] (at pos0 ..< pos0 + len).
    func embed(_ x: UnsafeMutablePointer<Float>, batch: Int, len: Int, pos0: Int)
    /// Turns the q heads and this rank's k heads of `rows` rows of the fused q|k|v (row stride ld),
    /// row r at position pos0 + r % seq.
    func apply(_ qkv: UnsafeMutablePointer<Float>, ld: Int, rows: Int, seq: Int, pos0: Int)
    /// The backward of `apply` in training (positions from 0) on the gradient at q|k|v.
    func backward(_ dqkv: UnsafeMutablePointer<Float>, ld: Int, rows: Int, seq: Int)
}

/// GPT-2's learned positions: row p of the table wpe [P, d] is added to the token at position p;
/// attention sees no positions. Full fine-tuning adds wpe's gradient where it adds
/// wte's (GPTModel.backward).
struct LearnedPositions: Positions {
    /// wpe [P, d] in the base (replicated on every tensor-parallel rank).
    let table: UnsafePointer<Float>
    let d: Int

    func embed(_ x: UnsafeMutablePointer<Float>, batch: Int, len: Int, pos0: Int) {
        for b in 0..<batch {
            for t in 0..<len { K.addInPlace(x + (b * len + t) * d, table + (pos0 + t) * d, d) }
        }
    }

    func apply(_ qkv: UnsafeMutablePointer<Float>, ld: Int, rows: Int, seq: Int, pos0: Int) {}
    func backward(_ dqkv: UnsafeMutablePointer<Float>, ld: Int, rows: Int, seq: Int) {}
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

    func embed(_ x: UnsafeMutablePointer<Float>, batch: Int, len: Int, pos0: Int) {}

    func apply(_ qkv: UnsafeMutablePointer<Float>, ld: Int, rows: Int, seq: Int, pos0: Int) {
        rotate(qkv, ld: ld, rows: rows, seq: seq, pos0: pos0, inverse: false)
    }

    func backward(_ dqkv: UnsafeMutablePointer<Float>, ld: Int, rows: Int, seq: Int) {
        rotate(dqkv, ld: ld, rows: rows, seq: seq, pos0: 0, inverse: true)
    }

    private func rotate(_ qkv: UnsafeMutablePointer<Float>, ld: Int, rows: Int, seq: Int, pos0: Int, inverse: Bool) {
        let hd = headDim
        table.cos.withUnsafeBufferPointer { cs in
            table.sin.withUnsafeBufferPointer { sn in
                K.rope(
                    qkv, ld: ld, rows: rows, seq: seq, pos0: pos0, heads: heads, hd: hd,
                    cos: cs.baseAddress!, sin: sn.baseAddress!, inverse: inverse)
                K.rope(
                    qkv + kOffset, ld: ld, rows: rows, seq: seq, pos0: pos0, heads: kvHeads, hd: hd,
                    cos: cs.baseAddress!, sin: sn.baseAddress!, inverse: inverse)
            }
        }
    }
}
