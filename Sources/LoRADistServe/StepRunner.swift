import Foundation
import LoRADist

/// One rank's side of the serving steps: the base's shard (GPT-2 or the Llama family, fp32 or
/// bf16) with a `MultiLoRASet` (or, serving one trained file of another method, that method's
/// layers or biases: `Layers`), the KV caches of the running sequences by slot, and the serving
/// activations. Every rank runs the same `execute` on the same `StepPlan`: the plan's load or
/// unload (a load agreed over the ranks, so all hold the same set), the caches freed and made,
/// then one forward over all the step's sequences, rows grouped by adapter (`RowAssignment`), and
/// each sequence's next-token choice. Rank 0 makes the plans (`BatchingEngine`); the other ranks
/// `follow` them.
public final class StepRunner {
    public let model: GPTModel
    /// The LoRA adapters served side by side; nil when the model serves `layers`.
    public let set: MultiLoRASet?
    /// The trained file of another method the model runs on every row, if any.
    public let layers: Layers?
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

    /// A trained file whose change is not a LoRA delta, served alone on every row: bottleneck
    /// adapters (adapter-h, adapter-l: layers of their own after a sublayer, which cannot be
    /// merged, held over the tensor-parallel group as `placement` says: replicated adds no
    /// collective, sharded one AllReduce per adapter and pass at `adapter-out`, owner one Broadcast
    /// at `adapter-owner`), or BitFit's biases (in place of the base's; `placement` unused).
    /// GPT-2 and the Llama family.
    public struct Layers: Sendable {
        public var path: String
        public var placement: AdapterPlacement

        public init(path: String, placement: AdapterPlacement = .replicated) {
            self.path = path
            self.placement = placement
        }
    }

    /// Opens `base` on `comm` (the tensor-parallel group: every rank of the world) and loads
    /// `adapters` at start, `adapterMemory` bytes of them at most; with `layers`, the model runs that
    /// trained file on every row instead,
    /// and with `merge` the LoRA adapter at that path merged into each rank's shard
    /// (`GPTModel.merged`); either serves no LoRA adapter besides (`adapters` must be empty).
    public init(
        comm: Communicator, base: BaseSpec, adapters: [(name: String, path: String)], maxAdapters: Int,
        maxBatch: Int, tokenBudget: Int, precision: Precision = .fp32,
        adapterMemory: Int = MultiLoRASet.defaultMemoryBudget, layers: Layers? = nil, merge: String? = nil
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
        identity = opened!.identity
        self.layers = layers
        precondition(layers == nil || merge == nil, "a merged adapter or a trained file's layers, not both")
        if let merge {
            precondition(adapters.isEmpty, "a model serving a merged adapter serves no other")
            var m: GPTModel?
            try Collective.agree(over: recording, at: .load) {
                m = try GPTModel.merged(opened!, adapter: merge, tp: recording, precision: precision)
            }
            model = m!
            set = nil
        } else if let layers {
            precondition(adapters.isEmpty, "a model serving a trained file's layers serves no LoRA adapter")
            var m: GPTModel?
            try Collective.agree(over: recording, at: .load) {
                if case .lora = try TrainedFile.kind(layers.path).kind {
                    throw IOError.unsupported(
                        layers.path, "a LoRA adapter is served unmerged (--adapter NAME=PATH) or merged (--merge NAME)")
                }
                m = try GPTModel.forDecoding(
                    opened!, adapter: layers.path, tp: recording, precision: precision, placement: layers.placement)
            }
            model = m!
            set = nil
        } else {
            let m = try GPTModel(
                config: opened!.config, tp: recording,
                trainable: .multiLoRA(maxAdapters: maxAdapters, memoryBudget: adapterMemory), training: false,
                precision: precision)
            try Collective.agree(over: recording, at: .load) { try m.base.load(from: opened!.weights) }
            model = m
            set = m.multiLoRA!
        }
        self.maxBatch = maxBatch
        self.tokenBudget = tokenBudget
        frameBytes = StepPlan.frameBytes(maxBatch: maxBatch, tokenBudget: tokenBudget)
        for a in adapters {
            try Collective.agree(over: recording, at: .load) {
                try self.set!.load(name: a.name, path: a.path, base: self.identity)
            }
        }
    }

    /// The LoRA adapters loaded, in the order they were loaded.
    public var adapterNames: [String] { self.set?.names ?? [] }

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
        if let set { try set.assign(try RowAssignment(groups: groups)) }
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
        guard let set else { return APIError(400, "this server loads no LoRA adapter") }
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
