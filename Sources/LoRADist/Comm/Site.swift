/// Every place in lora-dist that communicates, by name. Each collective of the project is issued
/// through `Collective` (Parallel/Collectives.swift; the model's own through `TPRegions`), with one of
/// these sites; the ledger records the site with the call, so its tables say who sent what.
///
/// Per training step of LoRA on a TP group of size > 1 (L blocks; see docs/ARCHITECTURE.md):
/// forward `embedding` 1, `attn-out` L, `mlp-out` L, `loss-max` 1, `loss-sums` 1; backward
/// `mlp-in-grad` and `attn-in-grad` per block down to the lowest LoRA target (and `head-in-grad`
/// when anything below the head trains); then `grad-sync` exactly once.
public enum Site: String, CaseIterable, Sendable, Codable {
    // The model (Parallel/Regions.swift), inside a TP group.
    /// g after the vocabulary-parallel embedding lookup: AllReduce of [n, d].
    case embedding
    /// g after the row-parallel attention projection (attn.c_proj): AllReduce of [n, d].
    case attnOut = "attn-out"
    /// g after the row-parallel MLP projection (mlp.c_proj): AllReduce of [n, d].
    case mlpOut = "mlp-out"
    /// f in backward: the partial input gradients of the column-parallel attn.c_attn.
    case attnInGrad = "attn-in-grad"
    /// f in backward: the partial input gradients of the column-parallel mlp.c_fc.
    case mlpInGrad = "mlp-in-grad"
    /// f in backward: the partial input gradients of the vocabulary-parallel LM head.
    case headInGrad = "head-in-grad"
    /// A sharded adapter's row-parallel up-projection (g), and its down-projection's input gradient (f).
    case adapterOut = "adapter-out"
    case adapterInGrad = "adapter-in-grad"
    /// An owner-placed adapter: TP rank 0 broadcasts its output (forward) and its input gradient (backward).
    case adapterOwner = "adapter-owner"
    /// The vocabulary-parallel softmax: row maxima, then (Σexp, target logit, Σlogits) fused.
    case lossMax = "loss-max"
    case lossSums = "loss-sums"
    /// Vocabulary-parallel argmax / top-k: each rank's candidates gathered.
    case argmax

    // Training and evaluation.
    /// The trainable gradients: LoRA's one AllReduce over the world; a shard's over DP replicas.
    case gradSync = "grad-sync"
    /// Σ of squared TP-sharded gradients for the global norm (clipping).
    case gradNorm = "grad-norm"
    /// The step's loss summed over DP replicas, for the log.
    case lossSum = "loss-sum"
    /// Held-out loss sums, and generated texts gathered over DP replicas.
    case evalLoss = "eval-loss"
    case evalGather = "eval-gather"

    // Agreement, files and reports.
    /// At each step boundary: stop (a signal on some rank) and whether the log could be written.
    case stop
    /// Work some ranks do that all must learn the outcome of: loading, file writes, checkpoints.
    case load, write, checkpoint
    /// A step that went non-finite: whether a GEMM failed on some rank, so every rank says why.
    case gemmFailure = "gemm-failure"
    /// Replica fingerprints (every rank stopped after the same update), peak memory, timings.
    case replicas, memory, timing
    /// Communicator groups split from the world, and the `comm-check` command's probes.
    case split
    case commCheck = "comm-check"

    // Serving.
    /// Rank 0's plan of a serving step (which sequences, their new tokens, adapters and cache
    /// slots, a load or unload, stop): one Broadcast over the world per step.
    case servePlan = "serve-plan"
}
