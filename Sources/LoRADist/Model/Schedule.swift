/// One site's calls of one collective in a training step.
public struct ScheduledCollective: Equatable, Sendable, CustomStringConvertible {
    public var phase: Phase
    public var site: Site
    public var op: CollectiveOp
    /// The communicator group: "tp", "dp" or "world" (the ledger's names).
    public var group: String
    public var calls: Int
    public var bytesPerCall: Int

    public var description: String {
        "\(phase.rawValue) \(site.rawValue) \(op.rawValue) on \(group): \(calls) × \(bytesPerCall) B"
    }
}

/// The collectives one training step issues, site by site, derived from the layout alone: the
/// list the cost model prices (`StepCostModel`) and the one a step's ledger records
/// (`CollectiveSiteTests` compares the two for every method and placement).
///
/// Per forward pass on a TP group of size > 1: `embedding` (g), per block `attn-out` and `mlp-out`
/// (g) and each adapter's output (sharded: `adapter-out` g; owner: `adapter-owner` Broadcast), then
/// the vocabulary-parallel loss (`loss-max`, `loss-sums`). Backward: the calls of the steps of the
/// `BackwardPlan` that `GPTModel.backward` runs, from the head down to the lowest trainable stage:
/// `head-in-grad`, per block the f of each column-parallel input whose gradient something below
/// needs (`mlp-in-grad`, `attn-in-grad`) and each adapter's input gradient. Per step: `grad-sync`
/// once (LoRA over the world; the others' shards over DP), `grad-norm` over TP when the trainables
/// are TP shards, `loss-sum` over DP. A group of one issues nothing. Under `Recompute.blocks` the
/// backward runs the forward of each block it reaches again, the top one excepted: those blocks'
/// forward lines once more under `recompute`.
public enum StepSchedule {
    /// - Parameters:
    ///   - tokensPerPass: rows of one forward pass (micro-batch × sequence).
    ///   - passes: micro-batches per step on each replica.
    ///   - gradientElements: the floats each rank all-reduces in `grad-sync`.
    ///   - deltaOps: the block ops carrying trainable deltas (LoRA's targets; the public form taking a
    ///     `LoRAConfig` is in Adapt/LoRARuntime.swift).
    static func training(
        config c: GPTConfig, tp: Int, dp: Int, method: Method, deltaOps: Set<BlockLinears.Op>,
        adapters: AdapterConfig?, tokensPerPass n: Int, passes: Int,
        gradientElements: Int, recompute: Recompute = .none
    ) -> [ScheduledCollective] {
        training(
            config: c, tp: tp, dp: dp, method: method, deltaOps: deltaOps, adapters: adapters,
            passTokens: [Int](repeating: n, count: passes), gradientElements: gradientElements, recompute: recompute)
    }

    /// The same for passes of different sizes: `passTokens` holds each pass's rows (a packed
    /// micro-batch's Σ len), which set its activation collectives' bytes.
    static func training(
        config c: GPTConfig, tp: Int, dp: Int, method: Method, deltaOps: Set<BlockLinears.Op>,
        adapters: AdapterConfig?, passTokens: [Int], gradientElements: Int, recompute: Recompute = .none
    ) -> [ScheduledCollective] {
        var out: [ScheduledCollective] = []
        func add(
            _ phase: Phase, _ site: Site, _ group: String, op: CollectiveOp = .allReduce, calls: Int = 1, bytes: Int
        ) {
            merge(
                ScheduledCollective(phase: phase, site: site, op: op, group: group, calls: calls, bytesPerCall: bytes),
                into: &out)
        }
        for n in passTokens where tp > 1 {
            let act = 4 * n * c.nEmbd
            let adapterAt = Set(method.adapterKind != nil ? adapters?.positions ?? [] : [])
            let placement = adapters?.placement ?? .replicated
            // An adapter's output: a row-parallel up-projection (g) when sharded, the owner's Broadcast.
            func adapterOutput(_ phase: Phase) {
                switch placement {
                case .sharded: add(phase, .adapterOut, "tp", bytes: act)
                case .owner: add(phase, .adapterOwner, "tp", op: .broadcast, bytes: act)
                case .replicated: break
                }
            }
            /// One block's forward: its row-parallel outputs, each followed by its adapter's.
            func block(_ phase: Phase) {
                add(phase, .attnOut, "tp", bytes: act)
                if adapterAt.contains(.attention) { adapterOutput(phase) }
                add(phase, .mlpOut, "tp", bytes: act)
                if adapterAt.contains(.mlp) { adapterOutput(phase) }
            }
            add(.forward, .embedding, "tp", bytes: act)
            for _ in 0..<c.nLayer { block(.forward) }
            add(.forward, .lossMax, "tp", bytes: 4 * n)
            add(.forward, .lossSums, "tp", bytes: 12 * n)

            // Backward: the calls of the plan's steps, from the head down to the lowest trainable stage.
            let plan = BackwardPlan(config: c, method: method, deltaOps: deltaOps, adapters: adapters)
            for step in plan.steps {
                if let call = step.call { add(.backward, call.site, "tp", op: call.op, bytes: act) }
            }
            if recompute == .blocks {
                for _ in 0..<plan.recomputedBlocks(layers: c.nLayer) { block(.recompute) }
            }
        }
        let world = tp * dp
        let group = method.gradientGroup
        let syncBytes = 4 * gradientElements
        switch group {
        case .world: if world > 1 { add(.gradSync, .gradSync, group.rawValue, bytes: syncBytes) }
        case .dp: if dp > 1 && gradientElements > 0 { add(.gradSync, .gradSync, group.rawValue, bytes: syncBytes) }
        }
        let shardedTrainables = method.trainsBase || (method.adapterKind != nil && adapters?.placement != .replicated)
        if tp > 1 && shardedTrainables { add(.optimizer, .gradNorm, "tp", bytes: 8) }
        if dp > 1 { add(.metrics, .lossSum, "dp", bytes: 8) }
        return out
    }

    /// The same list read from a ledger: its entries grouped by (phase, site, op, group, bytes).
    public static func recorded(_ entries: [LedgerEntry]) -> [ScheduledCollective] {
        var out: [ScheduledCollective] = []
        for e in entries {
            guard let site = Site(rawValue: e.site) else { continue }
            merge(
                ScheduledCollective(
                    phase: e.phase, site: site, op: e.op, group: e.group, calls: 1, bytesPerCall: e.bytes), into: &out)
        }
        return out
    }

    /// Adds `c`'s calls to the line of the same phase, site, op, group and size (or appends it).
    static func merge(_ c: ScheduledCollective, into list: inout [ScheduledCollective]) {
        guard c.calls > 0 else { return }
        if let i = list.firstIndex(where: {
            $0.phase == c.phase && $0.site == c.site && $0.op == c.op && $0.group == c.group
                && $0.bytesPerCall == c.bytesPerCall
        }) {
            list[i].calls += c.calls
        } else {
            list.append(c)
        }
    }
}
