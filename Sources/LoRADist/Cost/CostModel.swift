import Foundation

/// An α–β (latency–bandwidth) model of one network: a message of n bytes between two ranks takes
/// α + n·β seconds. Calibrated from measured collectives (`fit`), it prices every collective the
/// trainer issues and so predicts step times for worlds and links this machine does not have.
public struct LinkModel: Codable, Equatable, Sendable {
    /// Seconds per message.
    public var alpha: Double
    /// Seconds per byte (1 / bandwidth).
    public var beta: Double

    public init(alpha: Double, beta: Double) { self.alpha = alpha; self.beta = beta }

    /// A link of `gbit` Gb/s with `latencyMicros` µs per message.
    public static func link(gbit: Double, latencyMicros: Double) -> LinkModel {
        LinkModel(alpha: latencyMicros * 1e-6, beta: 8 / (gbit * 1e9))
    }

    /// Ring AllReduce (reduce-scatter then all-gather): 2(p−1) steps of n/p bytes.
    public func ringAllReduce(bytes n: Double, ranks p: Int) -> Double {
        guard p > 1 else { return 0 }
        let q = Double(p)
        return 2 * (q - 1) * alpha + 2 * (q - 1) / q * n * beta
    }

    /// Recursive-doubling AllReduce: log₂p steps of the whole message (wins for small messages).
    public func treeAllReduce(bytes n: Double, ranks p: Int) -> Double {
        guard p > 1 else { return 0 }
        return ceil(log2(Double(p))) * (alpha + n * beta)
    }

    /// What a good MPI picks: the cheaper of the two.
    public func allReduce(bytes n: Double, ranks p: Int) -> Double {
        min(ringAllReduce(bytes: n, ranks: p), treeAllReduce(bytes: n, ranks: p))
    }

    /// Binomial-tree Broadcast: log₂p steps of the whole message.
    public func broadcast(bytes n: Double, ranks p: Int) -> Double {
        guard p > 1 else { return 0 }
        return ceil(log2(Double(p))) * (alpha + n * beta)
    }

    /// Ring AllGather of n bytes per rank: p−1 steps of n bytes.
    public func allGather(bytesPerRank n: Double, ranks p: Int) -> Double {
        guard p > 1 else { return 0 }
        return Double(p - 1) * (alpha + n * beta)
    }

    /// Least-squares fit of α and β to measured AllReduce times (bytes, ranks, seconds), under the
    /// same rule `allReduce` prices with: each sample is t = a·α + b·β with the (a, b) of the
    /// algorithm the fitted link would pick, ring (a = 2(p−1), b = 2(p−1)/p·n) or recursive
    /// doubling (a = ⌈log₂p⌉, b = ⌈log₂p⌉·n). Starts from ring and refits until the picks settle.
    public static func fitAllReduce(_ samples: [(bytes: Double, ranks: Int, seconds: Double)]) -> LinkModel? {
        let used = samples.filter { $0.ranks > 1 }
        func ring(_ s: (bytes: Double, ranks: Int, seconds: Double)) -> (Double, Double) {
            let q = Double(s.ranks); return (2 * (q - 1), 2 * (q - 1) / q * s.bytes)
        }
        func tree(_ s: (bytes: Double, ranks: Int, seconds: Double)) -> (Double, Double) {
            let k = ceil(log2(Double(s.ranks))); return (k, k * s.bytes)
        }
        var picks = used.map { _ in true }  // true: ring
        var fit: LinkModel?
        for _ in 0..<8 {
            var saa = 0.0, sab = 0.0, sbb = 0.0, sat = 0.0, sbt = 0.0
            for (s, isRing) in zip(used, picks) {
                let (a, b) = isRing ? ring(s) : tree(s)
                saa += a * a; sab += a * b; sbb += b * b; sat += a * s.seconds; sbt += b * s.seconds
            }
            let det = saa * sbb - sab * sab
            guard det > 0 else { return fit }
            var l = LinkModel(alpha: (sat * sbb - sbt * sab) / det, beta: (saa * sbt - sab * sat) / det)
            if l.alpha < 0 {  // latency below resolution: fit bandwidth alone
                l = LinkModel(alpha: 0, beta: sbb > 0 ? sbt / sbb : 0)
            }
            l.beta = max(l.beta, 0)
            fit = l
            let next = used.map { l.ringAllReduce(bytes: $0.bytes, ranks: $0.ranks) <= l.treeAllReduce(bytes: $0.bytes, ranks: $0.ranks) }
            if next == picks { break }
            picks = next
        }
        return fit
    }
}

/// Predicts one training step from the model's shapes, the grid, measured compute speed and the
/// links: compute (FLOPs / sustained FLOP/s per rank) plus every collective the layout issues
/// (the same counts the ledger records), with no overlap of compute and communication.
public struct StepCostModel: Codable, Sendable {
    public var config: GPTConfig
    public var seq: Int
    /// Examples per step per data-parallel replica.
    public var batchPerReplica: Int
    public var tp: Int
    public var dp: Int
    public var method: TrainMode
    /// The LoRA whose A/B gradients are all-reduced (the library default: q, v, r 4).
    public var lora = LoRAConfig()
    /// Trainable parameters when known from a measured run; otherwise from `method` and `lora`.
    public var trainable: Int?
    /// Sustained FLOP/s of one rank on the model's GEMMs (from a measured run or `doctor`).
    public var flopsPerRank: Double
    /// Links inside a TP group (usually one node) and across DP replicas (the network).
    public var intra: LinkModel
    public var inter: LinkModel

    public init(config: GPTConfig, seq: Int, batchPerReplica: Int, tp: Int, dp: Int, method: TrainMode,
                flopsPerRank: Double, intra: LinkModel, inter: LinkModel) {
        self.config = config; self.seq = seq; self.batchPerReplica = batchPerReplica; self.tp = tp; self.dp = dp
        self.method = method; self.flopsPerRank = flopsPerRank; self.intra = intra; self.inter = inter
    }

    public struct Prediction: Codable, Sendable {
        public var compute: Double
        public var activation: Double   // TP collectives of forward and backward
        public var gradSync: Double
        public var total: Double { compute + activation + gradSync }
        public var tokensPerSecond: Double
        public var commShare: Double { (activation + gradSync) / total }
    }

    /// Trainable parameters whose gradients are all-reduced each step.
    public var gradientElements: Int {
        if let trainable { return trainable }
        switch method {
        case .lora: return lora.parameterCount(for: config)
        case .full: return config.parameterCount
        case .adapter: return config.nLayer * 2 * (2 * config.nEmbd * 64 + 64 + config.nEmbd)
        case .bitfit: return BiasParameters.globalCount(of: config)
        }
    }

    public func predict() -> Prediction {
        let tokens = Double(batchPerReplica * seq)
        let flops = FlopCount.trainPerToken(config, seq: seq, method: method == .full ? .full : .lora,
                                            loraParams: method == .lora ? gradientElements : 0) * tokens / Double(tp)
        let compute = flops / flopsPerRank
        // Activation collectives per step on a TP group (see GPTModel): forward 1 + 2L AllReduces of
        // n·d floats, 2 small cross-entropy ones; backward 2L (LoRA stops below block 0's attention
        // input; full fine-tuning goes on to the embedding: 2L + 1).
        let L = config.nLayer, d = config.nEmbd
        let act = tokens * Double(d) * 4
        let fwd = Double(1 + 2 * L) * intra.allReduce(bytes: act, ranks: tp)
            + intra.allReduce(bytes: tokens * 4, ranks: tp) + intra.allReduce(bytes: tokens * 12, ranks: tp)
        let bwdCount = method == .full ? 2 * L + 1 : 2 * L
        let bwd = Double(bwdCount) * intra.allReduce(bytes: act, ranks: tp)
        let gradBytes = Double(gradientElements) * 4
        let sync: Double
        switch method {
        case .lora:
            // One AllReduce of the replicated A/B gradients over the whole world; with TP inside
            // nodes its cost is set by the slower link.
            sync = (dp > 1 ? inter : intra).allReduce(bytes: gradBytes, ranks: tp * dp)
        case .full, .adapter, .bitfit:
            // Each of a node's tp ranks all-reduces its 1/tp shard with its peers in the other nodes,
            // all at once through the node's one link: together they move the whole gradient.
            sync = inter.allReduce(bytes: gradBytes, ranks: dp)
        }
        let total = compute + fwd + bwd + sync
        return Prediction(compute: compute, activation: fwd + bwd, gradSync: sync,
                          tokensPerSecond: tokens * Double(dp) / total)
    }
}
