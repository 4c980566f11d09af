import Foundation
import LoRADist

/// One rank's side of the serving steps: the base's shard (GPT-2 or the Llama family, fp32 or
/// bf16) with a `MultiLoRASet`, the KV caches of the running sequences by slot, and the serving
/// activations. Every rank runs the same `execute` on the same `StepPlan`: the plan's load or
/// unload (a load agreed over the ranks, so all hold the same set), the caches freed and made,
/// then one forward over all the step's sequences, rows grouped by adapter (`RowAssignment`), and
/// each sequence's next-token choice. Rank 0 makes the plans (`BatchingEngine`); the other ranks
/// `follow` them.
public final class StepRunner {
    public let model: GPTModel
    public let set: MultiLoRASet
    public let comm: RecordingCommunicator
    public let identity: BaseIdentity
    /// Limits of a step: sequences and tokens (rows); the plan's frame follows from them.
    public let maxBatch: Int, tokenBudget: Int
    public let frameBytes: Int
    private var caches: [Int32: KVCache] = [:]
    private var acts: Activations?

    /// What a step's forward leaves for rank 0's scheduler.
    public struct Outcome {
        /// Per sequence of the plan, the argmax of its last row's logits (ties to the lowest id).
        public var argmax: [Int32] = []
        /// With `plan.sample`: per sequence, the logits of its last row over the padded vocabulary
        /// (every shard's, in vocabulary order).
        public var logits: [[Float]] = []
        /// The plan's load or unload failed (on every rank: a load is agreed).
        public var controlError: Error?
    }

    /// Opens `base` on `comm` (the tensor-parallel group: every rank of the world) and loads
    /// `adapters` at start, `adapterMemory` bytes of them at most.
    public init(
        comm: Communicator, base: BaseSpec, adapters: [(name: String, path: String)], maxAdapters: Int,
        maxBatch: Int, tokenBudget: Int, precision: Precision = .fp32,
        adapterMemory: Int = MultiLoRASet.defaultMemoryBudget
    ) throws {
        guard maxBatch >= 1 else { throw ModelError.invalidConfig("--max-batch must be at least 1 (got \(maxBatch))") }
        guard tokenBudget >= maxBatch else {
            throw ModelError.invalidConfig(
                "--max-batch-tokens (\(tokenBudget)) must be at least --max-batch (\(maxBatch)): one token per sequence"
            )
        }
        let recording = comm as? RecordingCommunicator ?? RecordingCommunicator(comm)
        self.comm = recording
        var opened: OpenedBase?
        try Collective.agree(over: recording, at: .load) { opened = try BaseFiles.open(base) }
        let m = try GPTModel(
            config: opened!.config, tp: recording,
            trainable: .multiLoRA(maxAdapters: maxAdapters, memoryBudget: adapterMemory), training: false,
            precision: precision)
        try Collective.agree(over: recording, at: .load) { try m.base.load(from: opened!.weights) }
        model = m
        set = m.multiLoRA!
        identity = opened!.identity
        self.maxBatch = maxBatch
        self.tokenBudget = tokenBudget
        frameBytes = StepPlan.frameBytes(maxBatch: maxBatch, tokenBudget: tokenBudget)
        for a in adapters {
            try Collective.agree(over: recording, at: .load) {
                try self.set.load(name: a.name, path: a.path, base: self.identity)
            }
        }
    }

    /// Rank 0 sends `plan` to every rank; the others receive it (nil on them). One Broadcast of
    /// the plan's frame per step at `serve-plan`; none on a world of one.
    public func exchange(_ plan: StepPlan?) throws -> StepPlan {
        guard comm.size > 1 else { return plan! }
        var frame = comm.rank == 0 ? try plan!.encoded(bytes: frameBytes) : [UInt8](repeating: 0, count: frameBytes)
        try frame.withUnsafeMutableBufferPointer {
            try Collective.broadcast($0, from: 0, over: comm, at: .servePlan)
        }
        return comm.rank == 0 ? plan! : try StepPlan(frame: frame)
    }

    /// The other ranks' loop: each step's plan from rank 0, run, until a plan says stop.
    public func follow() throws {
        while true {
            let plan = try exchange(nil)
            _ = try execute(plan)
            if plan.stop { return }
        }
    }

    /// Caches held (running sequences).
    public var slots: Int { caches.count }

    /// Runs `plan` on this rank.
    public func execute(_ plan: StepPlan) throws -> Outcome {
        var out = Outcome()
        if let control = plan.control { out.controlError = self.control(control) }
        for s in plan.release { caches[s] = nil }
        guard !plan.sequences.isEmpty else { return out }
        let m = model
        var tokens: [Int32] = []
        var lengths: [Int] = []
        var groups: [RowAssignment.Group] = []
        var step: [KVCache] = []
        var scores = 0
        for s in plan.sequences {
            if s.capacity > 0 {
                precondition(caches[s.slot] == nil, "cache slot \(s.slot) is in use")
                caches[s.slot] = KVCache(config: m.config, layout: m.layout, batch: 1, capacity: Int(s.capacity))
            }
            guard let cache = caches[s.slot] else { preconditionFailure("no cache in slot \(s.slot)") }
            groups.append(.init(adapter: s.adapter, rows: tokens.count..<(tokens.count + s.tokens.count)))
            tokens += s.tokens
            lengths.append(s.tokens.count)
            step.append(cache)
            scores += s.tokens.count * (cache.length + s.tokens.count)
        }
        try set.assign(try RowAssignment(groups: groups))
        if acts == nil || acts!.probabilities < scores {
            acts = nil
            // Grown to what a step needs, at least a full batch decoding at a few hundred positions.
            acts = try m.servingActivations(
                rows: tokenBudget, sequences: maxBatch, probabilities: max(scores, tokenBudget * 256))
        }
        let pass = try tokens.withUnsafeBufferPointer {
            try m.forward(tokens: $0.baseAddress!, sequences: Sequences(lengths: lengths), into: acts!, caches: step)
        }
        if plan.sample {
            out.logits = try gatherLogits(pass)
            out.argmax = out.logits.map { Self.argmax($0, valid: m.config.vocabSize) }
        } else {
            out.argmax = try m.argmaxLast(pass)
        }
        return out
    }

    /// Every sequence's last-row logits over the whole (padded) vocabulary: this rank's shards,
    /// gathered over the group in one call (the vocabulary-parallel gather, as the argmax's).
    private func gatherLogits(_ pass: ForwardPass) throws -> [[Float]] {
        let m = model
        let vl = m.layout.localVocab
        let count = pass.batch
        let shard = try m.lastLogitsShard(pass)
        var all = [Float](repeating: 0, count: count * vl * m.layout.degree)
        try all.withUnsafeMutableBufferPointer { r in
            try m.regions.gatherCandidates(shard, count * vl, into: r.baseAddress!)
        }
        var out: [[Float]] = []
        for b in 0..<count {
            var row: [Float] = []
            row.reserveCapacity(vl * m.layout.degree)
            for r in 0..<m.layout.degree {
                let start = (r * count + b) * vl
                row += all[start..<(start + vl)]
            }
            out.append(row)
        }
        return out
    }

    /// The first largest of the `valid` leading logits.
    static func argmax(_ z: [Float], valid: Int) -> Int32 {
        var best = -Float.infinity
        var arg = 0
        for j in 0..<min(valid, z.count) where z[j] > best {
            best = z[j]
            arg = j
        }
        return Int32(arg)
    }

    /// The plan's load (every rank loads the same path; agreed, and undone where it succeeded
    /// when another rank failed) or unload. Rank 0's own error is returned as it is, so the API
    /// answers it with its status.
    private func control(_ c: StepPlan.Control) -> Error? {
        switch c {
        case .load(let name, let path):
            var own: Error?
            do {
                try Collective.agree(over: comm, at: .load) {
                    do { try set.load(name: name, path: path, base: identity) } catch {
                        own = error
                        throw error
                    }
                }
                return nil
            } catch {
                if own == nil { try? set.remove(name) }
                return own ?? error
            }
        case .unload(let name):
            do { try set.remove(name) } catch { return error }
            return nil
        }
    }
}
