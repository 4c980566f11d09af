import Foundation

/// What trains, which decides what the backward pass computes.
public enum TrainMode: String, Codable, Sendable {
    /// Only LoRA's A and B; the base stays frozen and gets no gradient.
    case lora
    /// Every base parameter (the paper's FT baseline; also how the built-in base is pretrained).
    case full
    /// Only adapter layers (Houlsby or Lin) inserted into the frozen base.
    case adapter
}

/// One tensor-parallel rank's GPT-2: its shard of the base, the replicated LoRA matrices, and the
/// forward/backward passes (explicit, llm.c style). All communication goes through `regions`.
///
/// Backward stages, bottom to top: 0 = embeddings, then per block l: 1+6l attention input (ln_1,
/// c_attn, LoRA q/k/v), 2+6l attention output (c_proj, LoRA o), 3+6l the adapter after attention,
/// 4+6l MLP input (ln_2, c_fc, LoRA mlp_in), 5+6l MLP output (mlp.c_proj, LoRA mlp_out), 6+6l the
/// adapter after the MLP, and 1+6L the final LayerNorm. Backward stops at the lowest stage holding
/// a trainable parameter: nothing below it is computed.
public final class GPTModel {
    public let config: GPTConfig
    public let layout: TPLayout
    public let regions: TPRegions
    public let base: BaseWeights
    public private(set) var baseGrad: BaseWeights?
    public let lora: LoRAWeights?
    public let loraGrad: FloatArena?
    public let adapters: AdapterWeights?
    public let adapterGrad: FloatArena?
    public let mode: TrainMode
    public private(set) var loraMerged = false
    public internal(set) var acts: Activations
    private var decodeActs: Activations?
    /// LoRA dropout is applied only while training; masks depend on (seed, step, global row, column).
    public var training = false
    public var dropoutSeed: UInt64 = 0
    public var dropoutStep: UInt64 = 0
    /// Index of this pass's first row in the global batch (so the masks do not depend on the DP split).
    public var dropoutRowOffset = 0
    public var labelSmoothing: Float = 0
    /// Shape of the last forward pass (the loss and backward work on exactly those rows).
    public internal(set) var passBatch = 0, passLen = 0
    let ops: LoRAOps?
    let lowestStage: Int

    /// `batch`×`seq` sizes the activation buffers; `training` false keeps one set for all blocks.
    public init(config: GPTConfig, tp: Communicator, lora loraConfig: LoRAConfig?, mode: TrainMode,
                batch: Int, seq: Int, training: Bool = true, adapters adapterConfig: AdapterConfig? = nil,
                sharing shared: BaseWeights? = nil) throws {
        try config.validate()
        self.config = config
        layout = try TPLayout(config: config, degree: tp.size, rank: tp.rank)
        regions = TPRegions(comm: tp)
        if let shared {
            guard shared.shape.layout == layout else { throw ModelError.invalidParallel("shared base weights have another layout") }
            base = shared
        } else {
            base = BaseWeights(shape: BaseLayout(layout: layout))
        }
        self.mode = mode
        guard seq <= config.nPositions else {
            throw ModelError.invalidConfig("sequence length \(seq) exceeds the model's context \(config.nPositions)")
        }
        if let lc = loraConfig {
            try lc.validate(for: config)
            let w = LoRAWeights(config: lc, model: config)
            lora = w
            loraGrad = training && mode == .lora ? FloatArena(count: w.count) : nil
            ops = LoRAOps(rank: lc.rank, scale: lc.scale)
        } else {
            lora = nil
            loraGrad = nil
            ops = nil
        }
        if let ac = adapterConfig {
            try ac.validate(for: config, tp: layout.degree)
            let w = AdapterWeights(config: ac, layout: layout)
            adapters = w
            adapterGrad = training && mode == .adapter ? FloatArena(count: w.arena.count) : nil
        } else {
            adapters = nil
            adapterGrad = nil
        }
        if mode == .full && training { baseGrad = BaseWeights(shape: base.shape) }
        acts = Activations(config: config, layout: layout, batch: batch, seq: seq, training: training,
                           loraSlots: lora?.slots.count ?? 0, loraRank: loraConfig?.rank ?? 1,
                           adapterSlots: adapters.map { config.nLayer * $0.config.positions.count } ?? 0,
                           adapterWidth: adapters?.localWidth ?? 0)
        // The lowest trainable stage decides where backward stops.
        switch mode {
        case .full:
            lowestStage = 0
        case .lora:
            lowestStage = loraConfig.map { $0.targets.map { GPTModel.stage(layer: 0, target: $0) }.min()! } ?? 1 + 6 * config.nLayer
        case .adapter:
            lowestStage = adapterConfig.map { $0.positions.map { $0 == .attention ? 3 : 6 }.min()! } ?? 1 + 6 * config.nLayer
        }
    }

    static func stage(layer l: Int, target: LoRATarget) -> Int {
        switch target {
        case .q, .k, .v: return 1 + 6 * l
        case .o: return 2 + 6 * l
        case .mlpIn: return 4 + 6 * l
        case .mlpOut: return 5 + 6 * l
        }
    }

    /// Adapter slot index of (layer, position) in the activation buffers (independent of storage).
    func adapterIndex(_ l: Int, _ pos: AdapterPosition) -> Int? {
        guard let ad = adapters, let k = ad.config.positions.firstIndex(of: pos) else { return nil }
        return l * ad.config.positions.count + k
    }

    func makeActivations(batch: Int, seq: Int, training: Bool) -> Activations {
        Activations(config: config, layout: layout, batch: batch, seq: seq, training: training,
                    loraSlots: lora?.slots.count ?? 0, loraRank: lora?.config.rank ?? 1,
                    adapterSlots: adapters.map { config.nLayer * $0.config.positions.count } ?? 0,
                    adapterWidth: adapters?.localWidth ?? 0)
    }

    /// One-row inference buffers for decoding up to the full context, made on first use.
    func decodeActivations() -> Activations {
        if let a = decodeActs { return a }
        let a = makeActivations(batch: 1, seq: config.nPositions, training: false)
        decodeActs = a
        return a
    }

    // MARK: merge

    /// W0 += s·B·A for every LoRA slot (this rank's part of W0); forward then skips the LoRA path.
    public func mergeLoRA() {
        guard let lora, let ops, !loraMerged else { return }
        applyMerge(sign: 1, lora: lora, ops: ops)
        loraMerged = true
    }

    /// W0 −= s·B·A: restores W0 to float rounding.
    public func unmergeLoRA() {
        guard let lora, let ops, loraMerged else { return }
        applyMerge(sign: -1, lora: lora, ops: ops)
        loraMerged = false
    }

    private func applyMerge(sign: Float, lora: LoRAWeights, ops: LoRAOps) {
        let d = config.nEmbd, dl = layout.localDim, fl = layout.localFFN
        for s in lora.slots {
            let blk = base.shape.blocks[s.layer]
            let a = lora.ptr(s.a), b = lora.ptr(s.b)
            switch s.target {
            case .q, .k, .v:
                let part = s.target == .q ? 0 : (s.target == .k ? 1 : 2)
                ops.mergeColumn(sign: sign, a: a, b: b, inDim: d, outRange: layout.dimRange,
                                w: base.ptr(blk.attnW), ldw: 3 * dl, colOffset: part * dl)
            case .mlpIn:
                ops.mergeColumn(sign: sign, a: a, b: b, inDim: d, outRange: layout.ffnRange,
                                w: base.ptr(blk.fcW), ldw: fl, colOffset: 0)
            case .o:
                ops.mergeRow(sign: sign, a: a, b: b, inDim: d, inRange: layout.dimRange, outDim: d, w: base.ptr(blk.projW))
            case .mlpOut:
                ops.mergeRow(sign: sign, a: a, b: b, inDim: 4 * d, inRange: layout.ffnRange, outDim: d, w: base.ptr(blk.fcProjW))
            }
        }
    }

    var loraActive: Bool { lora != nil && !loraMerged }

    // MARK: dropout on the LoRA input

    /// Copies x [n, w] (ld ldx) into scratch with LoRA dropout applied; column j is global column
    /// `col0 + j` of an input of width `inDim`. Returns x itself when no dropout applies.
    func dropped(_ x: UnsafePointer<Float>, ldx: Int, n: Int, w: Int, col0: Int, inDim: Int, slot: Int) -> (UnsafePointer<Float>, Int) {
        guard training, let p = lora?.config.dropout, p > 0 else { return (x, ldx) }
        let keep = 1 / (1 - p)
        let dst = acts.scratch
        let key = (dropoutStep << 20) ^ UInt64(slot)
        for i in 0..<n {
            let row = UInt64(dropoutRowOffset + i) * UInt64(inDim)
            for j in 0..<w {
                let m = hashUniform(dropoutSeed, key, row + UInt64(col0 + j)) >= p ? keep : 0
                dst[i * w + j] = x[i * ldx + j] * m
            }
        }
        return (UnsafePointer(dst), w)
    }

    /// dx [n, w] += g [n, w] ⊙ the dropout mask used for `slot` (g in scratch).
    func addMasked(_ dx: UnsafeMutablePointer<Float>, lddx: Int, g: UnsafePointer<Float>, n: Int, w: Int, col0: Int, inDim: Int, slot: Int) {
        let p = lora!.config.dropout
        let keep = 1 / (1 - p)
        let key = (dropoutStep << 20) ^ UInt64(slot)
        for i in 0..<n {
            let row = UInt64(dropoutRowOffset + i) * UInt64(inDim)
            for j in 0..<w {
                let m = hashUniform(dropoutSeed, key, row + UInt64(col0 + j)) >= p ? keep : 0
                dx[i * lddx + j] += g[i * w + j] * m
            }
        }
    }
}
