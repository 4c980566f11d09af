/// A stage of the decoder's backward pass, GPT-2's and the Llama family's alike, in order from the
/// bottom: the embeddings, each block's six stages (`BlockStage`), the final norm, the LM head.
/// Backward walks them from the head down and stops at the lowest stage holding a trainable
/// parameter (`BackwardPlan`): nothing below it is computed.
public enum Stage: Hashable, Comparable, Sendable, CustomStringConvertible {
    case embeddings
    /// Stage `part` of block `layer` (block 0 is the one next to the embeddings).
    case block(Int, BlockStage)
    case finalNorm
    case head

    /// The place from the bottom: embeddings, blocks, final norm, head; then the layer; then the part.
    private var order: (Int, Int, Int) {
        switch self {
        case .embeddings: return (0, 0, 0)
        case .block(let layer, let part): return (1, layer, part.rawValue)
        case .finalNorm: return (2, 0, 0)
        case .head: return (3, 0, 0)
        }
    }

    public static func < (a: Stage, b: Stage) -> Bool { a.order < b.order }

    public var description: String {
        switch self {
        case .embeddings: return "embeddings"
        case .block(let layer, let part): return "block \(layer) \(part)"
        case .finalNorm: return "final norm"
        case .head: return "head"
        }
    }
}

/// A block's stages from the bottom: its four linears (`BlockLinears.Op.stage`)
/// and the two adapter positions (`AdapterPosition.stage`). What leads from a stage to the one below
/// (a norm, the attention, the MLP's activation) runs only when the stage computes its input gradient.
public enum BlockStage: Int, CaseIterable, Sendable {
    /// c_attn or q|k|v_proj (LoRA q, k, v): column-parallel, its input gradient summed by f
    /// (`attn-in-grad`); below it ln_1 (input_layernorm).
    case attentionInput
    /// attn.c_proj or o_proj (LoRA o): row-parallel; below it the attention.
    case attentionOutput
    case adapterAfterAttention
    /// mlp.c_fc or gate|up_proj (LoRA mlp_in, gate, up): column-parallel, f (`mlp-in-grad`); below it
    /// ln_2 (post_attention_layernorm).
    case mlpInput
    /// mlp.c_proj or down_proj (LoRA mlp_out, down): row-parallel; below it GELU or SwiGLU.
    case mlpOutput
    case adapterAfterMLP
}

extension BlockLinears.Op {
    /// The block stage of this linear op (and of the deltas it carries: LoRA's q, k, v on qkv, and so on).
    var stage: BlockStage {
        switch self {
        case .qkv: return .attentionInput
        case .proj: return .attentionOutput
        case .fc: return .mlpInput
        case .fcProj: return .mlpOutput
        }
    }
}

extension AdapterPosition {
    /// The block stage of the adapter at this position.
    var stage: BlockStage { self == .attention ? .adapterAfterAttention : .adapterAfterMLP }
}

/// What one training backward runs, for a model and what trains: the lowest stage holding a
/// trainable parameter, and the steps from the head down to it, each with whether it computes its
/// input gradient (something below it trains) and the collective it then issues on a TP group of
/// more than one rank. `GPTModel.backward` asks it where to stop (`needsGradient(below:)`),
/// `StepSchedule.training` lists the steps' collectives, and the cost model prices that list.
public struct BackwardPlan: Equatable, Sendable {
    /// A collective of one step: a column-parallel input's f (AllReduce), or an owner-placed
    /// adapter's Broadcast.
    public struct Call: Equatable, Sendable {
        public var op: CollectiveOp
        public var site: Site
    }

    public struct Step: Equatable, Sendable {
        public var stage: Stage
        /// Whether the step computes its input gradient: false at the lowest stage, the last step.
        public var inputGradient: Bool
        public var call: Call?
    }

    public let lowest: Stage
    /// From the head down to `lowest`.
    public let steps: [Step]

    /// `deltaOps`: the block ops carrying trainable deltas (LoRA's targets; see
    /// `init(config:method:lora:adapters:)` in Adapt/LoRARuntime.swift). `adapters` count under an
    /// adapter method only (the other methods insert none). A nil `method`: nothing trains.
    init(config: GPTConfig, method: Method?, deltaOps: Set<BlockLinears.Op> = [], adapters: AdapterConfig? = nil) {
        let adapters = method?.adapterKind != nil ? adapters : nil
        let low: Stage
        switch method {
        case nil:
            low = .head
        case .full?, .bitfit?:
            // BitFit's lowest bias is block 0's ln_1 β, below its attention input: all blocks run.
            low = .embeddings
        case .lora?:
            low = deltaOps.map { Stage.block(0, $0.stage) }.min() ?? .head
        case .adapterH?, .adapterL?:
            low = adapters?.positions.map { Stage.block(0, $0.stage) }.min() ?? .head
        }
        lowest = low

        var steps: [Step] = []
        /// Appends `stage`'s step, its call given whether it computes its input gradient; false once
        /// the lowest stage is appended.
        func add(_ stage: Stage, _ call: (Bool) -> Call? = { _ in nil }) -> Bool {
            let below = low < stage
            steps.append(Step(stage: stage, inputGradient: below, call: call(below)))
            return below
        }
        func f(_ site: Site) -> (Bool) -> Call? { { $0 ? Call(op: .allReduce, site: site) : nil } }
        /// An adapter's input gradient: sharded, the f of its down-projection, which Lin's LayerNorm
        /// needs even at the lowest stage; owner-placed, TP rank 0's Broadcast; replicated, nothing.
        func adapterCall(_ below: Bool) -> Call? {
            switch adapters?.placement {
            case .sharded? where below || adapters?.kind == .lin: return Call(op: .allReduce, site: .adapterInGrad)
            case .owner? where below: return Call(op: .broadcast, site: .adapterOwner)
            default: return nil
            }
        }
        let adapterStages = Set(adapters?.positions.map(\.stage) ?? [])
        func walk() {
            guard add(.head, f(.headInGrad)), add(.finalNorm) else { return }
            for layer in stride(from: config.nLayer - 1, through: 0, by: -1) {
                for part in BlockStage.allCases.reversed() {
                    let call: (Bool) -> Call?
                    switch part {
                    case .adapterAfterMLP, .adapterAfterAttention:
                        guard adapterStages.contains(part) else { continue }
                        call = adapterCall
                    case .mlpInput: call = f(.mlpInGrad)
                    case .attentionInput: call = f(.attnInGrad)
                    case .mlpOutput, .attentionOutput: call = { _ in nil }
                    }
                    guard add(.block(layer, part), call) else { return }
                }
            }
            _ = add(.embeddings)
        }
        walk()
        self.steps = steps
    }

    /// Whether anything below `stage` trains, so that its backward computes its input gradient.
    public func needsGradient(below stage: Stage) -> Bool { lowest < stage }

    /// The blocks whose forward a backward under `Recompute.blocks` runs again: every block it
    /// reaches but the top one (of `layers`), whose buffers the forward leaves in place.
    public func recomputedBlocks(layers: Int) -> Int {
        let reached = Set(
            steps.compactMap { step -> Int? in
                if case .block(let layer, _) = step.stage { return layer }
                return nil
            })
        return reached.subtracting([layers - 1]).count
    }
}
