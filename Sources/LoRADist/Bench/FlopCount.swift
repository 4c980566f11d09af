/// Floating-point operations of the model per token, from its shapes: 2 per multiply-add of every
/// GEMM the pass issues (attention counted over the full T×T square it computes).
public enum FlopCount {
    /// Forward FLOPs per token at sequence length `seq` (whole model, all TP ranks together).
    public static func forwardPerToken(_ c: GPTConfig, seq: Int, loraRank: Int = 0, loraTargets: Int = 0) -> Double {
        let d = Double(c.nEmbd), L = Double(c.nLayer), T = Double(seq)
        let matmul = 2 * L * (d * 3 * d + d * d + 2 * d * 4 * d)   // c_attn, c_proj, c_fc, mlp.c_proj
        let attention = 2 * L * 2 * T * d                          // q·kᵀ and p·v
        let head = 2 * d * Double(c.paddedVocab)
        let lora = 2 * L * Double(loraTargets) * Double(loraRank) * 2 * d  // x·Aᵀ then u·Bᵀ (d-wide targets)
        return matmul + attention + head + lora
    }

    /// Training FLOPs per token: forward, plus backward input gradients (1× forward), plus weight
    /// gradients (another 1×) for full fine-tuning only; LoRA computes no W0 gradients.
    public static func trainPerToken(_ c: GPTConfig, seq: Int, method: TrainMode, loraRank: Int = 0, loraTargets: Int = 0) -> Double {
        let f = forwardPerToken(c, seq: seq, loraRank: loraRank, loraTargets: loraTargets)
        return method == .full ? 3 * f : 2 * f
    }
}
