/// Which slice of every sharded tensor a tensor-parallel rank owns (Megatron's layout).
///
/// With degree p and rank t: heads t·H/p ..< (t+1)·H/p; in c_attn the columns of those heads in
/// each of Q, K and V (HF stores [Q | K | V], so three separate blocks); columns t·4d/p ..< of c_fc;
/// the matching rows of the two row-parallel projections; rows t·Vp/p ..< of the (padded) vocabulary.
public struct TPLayout: Equatable, Sendable {
    public let degree: Int
    public let rank: Int
    public let config: GPTConfig

    public init(config: GPTConfig, degree: Int, rank: Int) throws {
        try Self.check(config, degree: degree)
        self.degree = degree
        self.rank = rank
        self.config = config
    }

    /// Why the layout cannot split `config` over `degree` ranks, nil if it can: the heads, the MLP
    /// width and the padded vocabulary must divide, and the key/value heads be split (the degree
    /// divides them) or each kept whole on degree / nKVHead ranks (a multiple of them).
    static func refusal(_ config: GPTConfig, degree: Int) -> String? {
        guard degree >= 1 else { return "--tp must be at least 1 (got \(degree))" }
        guard config.nHead % degree == 0 else {
            return "--tp \(degree) does not divide the number of heads \(config.nHead)"
        }
        guard config.ffn % degree == 0 else {
            return "--tp \(degree) does not divide the MLP width \(config.family.table.mlpWidthName(config))"
        }
        guard config.nKVHead % degree == 0 || degree % config.nKVHead == 0 else {
            return "--tp \(degree) neither divides the \(config.nKVHead) key/value heads nor is a multiple of them"
        }
        guard config.paddedVocab % degree == 0 else {
            return "--tp \(degree) does not divide the padded vocabulary \(config.paddedVocab)"
        }
        return nil
    }

    /// The tensor-parallel degrees the layout allows for `config` (see `refusal`), and of those
    /// only the ones that divide a world of `world` ranks when it is given.
    public static func degrees(for config: GPTConfig, world: Int? = nil) -> [Int] {
        (1...max(1, config.nHead)).filter { d in
            refusal(config, degree: d) == nil && (world.map { $0 % d == 0 } ?? true)
        }
    }

    /// Refuses a degree the layout cannot split `config` over, naming the degrees that it can
    /// (those that also divide the world of `world` ranks, when given).
    public static func check(_ config: GPTConfig, degree: Int, world: Int? = nil) throws {
        guard let why = refusal(config, degree: degree) else { return }
        guard degree >= 1 else { throw ModelError.invalidParallel(why) }
        throw ModelError.invalidParallel("\(why): \(suggestion(config, world: world))")
    }

    /// "use --tp 1 or 2 (the degrees that divide the 14 query heads ...)": the degrees `degrees`
    /// gives, and why.
    public static func suggestion(_ config: GPTConfig, world: Int? = nil) -> String {
        let ok = degrees(for: config, world: world)
        let list =
            ok.count == 1 ? "\(ok[0])" : ok.dropLast().map(String.init).joined(separator: ", ") + " or \(ok.last!)"
        var rules = ["the \(config.nHead) query heads"]
        if config.nKVHead != config.nHead {
            rules[0] += " (and divide the \(config.nKVHead) key/value heads or are a multiple of them)"
        }
        rules.append("the MLP width \(config.ffn)")
        rules.append("the padded vocabulary \(config.paddedVocab)")
        if let w = world { rules.append("the world of \(w) rank\(w == 1 ? "" : "s")") }
        let what = rules.dropLast().joined(separator: ", ") + " and " + rules.last!
        return "use --tp \(list) (the degree\(ok.count == 1 ? "" : "s") that divide\(ok.count == 1 ? "s" : "") \(what))"
    }

    public var localHeads: Int { config.nHead / degree }
    /// Key/value heads this rank holds: nKVHead/p of them, or the one its query heads share when
    /// there are fewer key/value heads than ranks.
    public var localKVHeads: Int { max(1, config.nKVHead / degree) }
    /// The global indices of those key/value heads.
    public var kvHeadRange: Range<Int> {
        if config.nKVHead >= degree { return (rank * localKVHeads)..<((rank + 1) * localKVHeads) }
        let g = rank / (degree / config.nKVHead)
        return g..<(g + 1)
    }
    /// Whether each key/value head is held whole by several ranks (fewer key/value heads than ranks).
    public var kvReplicated: Bool { config.nKVHead < degree }
    /// Width of this rank's slice of q (and of k, v, and the attention output): d/p.
    public var localDim: Int { config.nEmbd / degree }
    /// Width of this rank's slice of the MLP hidden layer: 4d/p.
    public var localFFN: Int { config.ffn / degree }
    public var localVocab: Int { config.paddedVocab / degree }

    public var dimRange: Range<Int> { (rank * localDim)..<((rank + 1) * localDim) }
    public var ffnRange: Range<Int> { (rank * localFFN)..<((rank + 1) * localFFN) }
    public var vocabRange: Range<Int> { (rank * localVocab)..<((rank + 1) * localVocab) }

    /// The key/value channels (rows of k_proj and v_proj) of this rank's key/value heads.
    public var kvDimRange: Range<Int> {
        (kvHeadRange.lowerBound * config.headDim)..<(kvHeadRange.upperBound * config.headDim)
    }
    public var localKVDim: Int { localKVHeads * config.headDim }
    /// Width of this rank's fused q | k | v output (3·d/p for GPT-2).
    public var localQKV: Int { localDim + 2 * localKVDim }
    /// The local key/value head that local query head `h` reads (grouped-query attention).
    public func kvHead(forLocalHead h: Int) -> Int {
        (rank * localHeads + h) / (config.nHead / config.nKVHead) - kvHeadRange.lowerBound
    }
}
