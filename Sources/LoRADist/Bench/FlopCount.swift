/// Floating-point operations of the model per token, from its shapes: 2 per multiply-add of every
/// GEMM the pass issues (attention counted over the full T×T square it computes). A pass of
/// sequences of different lengths (packed) costs its rows' GEMMs and each sequence's own len × len
/// attention: `trainPerPass` and `blocksForwardPerPass` take its Σ len and Σ len².
public enum FlopCount {
    /// Training FLOPs of a pass of `rows` tokens whose sequences' lengths squared sum to `squares`:
    /// `trainPerToken`'s GEMMs per row, and attention per (query, key) pair of each sequence's
    /// square, with the same factor over its forward (2× for the frozen base, 3× in full
    /// fine-tuning). Rows of one length T give `trainPerToken(seq: T)` × rows (squares = rows × T).
    public static func trainPerPass(
        _ c: GPTConfig, rows: Int, squares: Int, method: Method, loraParams: Int = 0
    ) -> Double {
        let perRow = trainPerToken(c, seq: 0, method: method, loraParams: loraParams)
        return perRow * Double(rows) + (method == .full ? 3 : 2) * attentionPerSquare(c) * Double(squares)
    }

    /// Forward FLOPs of the blocks alone over a pass of `rows` tokens and Σ len² `squares`.
    public static func blocksForwardPerPass(_ c: GPTConfig, rows: Int, squares: Int) -> Double {
        blocksForwardPerToken(c, seq: 0) * Double(rows) + attentionPerSquare(c) * Double(squares)
    }

    /// Forward FLOPs of one (query, key) pair over every block: q·kᵀ and p·v, 2 each per width.
    public static func attentionPerSquare(_ c: GPTConfig) -> Double { 2 * Double(c.nLayer) * 2 * Double(c.nEmbd) }

    /// Training FLOPs per token. The frozen base costs its forward plus the input gradients of the
    /// backward (2× forward); full fine-tuning adds the weight gradients (3×). LoRA's own GEMMs cost
    /// 3× their forward: u·Bᵀ and x·Aᵀ, then dB, du and dA (dx through A folds into the base's).
    public static func trainPerToken(_ c: GPTConfig, seq: Int, method: Method, loraParams: Int = 0) -> Double {
        let f = forwardPerToken(c, seq: seq)
        return method == .full ? 3 * f : 2 * f + 3 * 2 * Double(loraParams)
    }

    /// Forward FLOPs per token of the base at sequence length `seq` (whole model, all TP ranks together).
    public static func forwardPerToken(_ c: GPTConfig, seq: Int) -> Double {
        blocksForwardPerToken(c, seq: seq) + 2 * Double(c.nEmbd) * Double(c.paddedVocab)
    }

    /// Forward FLOPs per token of the base's blocks alone (the head left out): what a backward
    /// under `Recompute.blocks` runs again, of each block it recomputes (1/nLayer of this).
    public static func blocksForwardPerToken(_ c: GPTConfig, seq: Int) -> Double {
        let d = Double(c.nEmbd)
        let L = Double(c.nLayer)
        let T = Double(seq)
        let kv = Double(c.nKVHead * c.headDim)
        let ffn = Double(c.ffn)
        // q|k|v (GPT-2's c_attn: k and v as wide as q), the attention output, and the MLP's input
        // matrices (GPT-2's c_fc; the Llama family's gate and up) and its output matrix.
        let mlpMatrices = Double(c.family.table.activation.inputsPerHidden + 1)
        let matmul = 2 * L * (d * (d + 2 * kv) + d * d + mlpMatrices * d * ffn)
        let attention = 2 * L * 2 * T * d  // q·kᵀ and p·v
        return matmul + attention
    }
}
