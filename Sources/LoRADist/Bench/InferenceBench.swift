import Foundation

/// The inference variants compared: the base, LoRA merged (zero extra work), LoRA unmerged (extra
/// compute, no collective), and each adapter kind in each placement.
public struct InferenceMethod: Hashable, CustomStringConvertible, Sendable {
    public enum Kind: Hashable, Sendable {
        case base, loraMerged, loraUnmerged
        case adapter(AdapterKind, AdapterPlacement)
    }
    public let kind: Kind
    public var description: String {
        switch kind {
        case .base: return "base"
        case .loraMerged: return "lora-merged"
        case .loraUnmerged: return "lora-unmerged"
        case .adapter(let k, let p): return "\(k.rawValue)/\(p.rawValue)"
        }
    }
    public static var all: [InferenceMethod] {
        [InferenceMethod(kind: .base), InferenceMethod(kind: .loraMerged), InferenceMethod(kind: .loraUnmerged)]
            + AdapterKind.allCases.flatMap { k in
                AdapterPlacement.allCases.map { InferenceMethod(kind: .adapter(k, $0)) }
            }
    }
    public static func parse(_ s: String) -> InferenceMethod? { all.first { $0.description == s } }
}

/// One measured case: a forward pass of batch × seq tokens, or (decode) one new token at batch 1.
public struct InferenceCase: Hashable, CustomStringConvertible, Sendable {
    public let batch: Int, seq: Int, decode: Bool
    public init(batch: Int, seq: Int, decode: Bool = false) {
        self.batch = batch
        self.seq = seq
        self.decode = decode
    }
    public var description: String { decode ? "decode b1 ctx\(seq)" : "b\(batch) s\(seq)" }
    /// "32x512", or "decode128" for per-token decoding after a 128-token context.
    public static func parse(_ s: String) -> InferenceCase? {
        if s.hasPrefix("decode"), let t = Int(s.dropFirst(6)), t > 0 {
            return InferenceCase(batch: 1, seq: t, decode: true)
        }
        let p = s.split(separator: "x")
        guard p.count == 2, let b = Int(p[0]), let t = Int(p[1]), b > 0, t > 0 else { return nil }
        return InferenceCase(batch: b, seq: t)
    }
}

/// One row of the inference table: latency from repeated timed runs (the slowest rank of each run,
/// median over runs) and the collectives of one pass (or one decoded token) from the ledger.
public struct InferenceRow: Codable, Sendable {
    public var method: String
    public var caseName: String
    public var medianMs: Double
    public var overheadPct: Double
    public var allReduce: Int, broadcast: Int, allGather: Int
    public var bytes: Int
    public var adapterParamsPerRank: Int
}

public struct InferenceBenchOptions: Sendable {
    public var config: GPTConfig
    public var methods = InferenceMethod.all
    public var cases: [InferenceCase]
    public var warmup = 2
    public var reps = 5
    public var loraRank = 4
    public var bottleneck = 64
    public var seed: UInt64 = 7
    public var precision: Precision = .fp32
    public init(config: GPTConfig, cases: [InferenceCase]) {
        self.config = config
        self.cases = cases
    }
}

/// Measures every method on every case on the ranks of `comm` (one TP group). Returns the rows on
/// every rank (rank 0 prints them).
public enum InferenceBench {
    public static func run(
        comm: RecordingCommunicator, options o: InferenceBenchOptions, progress: (String) -> Void = { _ in }
    ) throws -> [InferenceRow] {
        let ledger = comm.ledger
        let c = o.config
        let maxBatch = o.cases.map { $0.decode ? 1 : $0.batch }.max() ?? 1
        let maxSeq = o.cases.map { $0.seq + ($0.decode ? 1 : 0) }.max() ?? 1
        guard maxSeq <= c.nPositions else {
            throw ModelError.invalidConfig("a case needs \(maxSeq) positions; the model has \(c.nPositions)")
        }
        ledger.enabled = false
        let baseModel = try GPTModel(config: c, tp: comm, trainable: nil, training: false, precision: o.precision)
        try baseModel.base.load(from: RandomInitSource(config: c, seed: o.seed))
        // Every variant is built first; then, case by case, each timed repetition runs every
        // variant once in turn, so drift of the machine (frequency, other load) hits all alike.
        var models: [(InferenceMethod, GPTModel, Activations)] = []
        for method in o.methods {
            let model: GPTModel
            switch method.kind {
            case .base:
                model = baseModel
            case .loraMerged, .loraUnmerged:
                // Merged LoRA changes W0, so it gets its own copy of the base.
                let shared: BaseWeights? = method.kind == .loraMerged ? nil : baseModel.base
                let lora = LoRAConfig(rank: o.loraRank, alpha: 2 * Float(o.loraRank))
                model = try GPTModel(
                    config: c, tp: comm, trainable: .lora(lora), training: false, sharing: shared,
                    precision: o.precision)
                if shared == nil { model.base.copy(from: baseModel.base) }
                model.lora!.initialize(seed: o.seed)
                var rng = RNG(seed: o.seed)
                for s in model.lora!.slots {
                    for i in 0..<(s.outDim * o.loraRank) { model.lora!.ptr(s.b)[i] = 0.01 * rng.normal() }
                }
                if method.kind == .loraMerged { model.loraRuntime?.merge() }
            case .adapter(let kind, let placement):
                let adapters = AdapterConfig(kind: kind, bottleneck: o.bottleneck, placement: placement)
                model = try GPTModel(
                    config: c, tp: comm, trainable: .adapters(adapters), training: false,
                    sharing: baseModel.base, precision: o.precision)
                model.trainable!.adapters!.initialize(seed: o.seed)
            }
            // Each variant has its own buffers, as each decoder would.
            models.append((method, model, try model.activations(batch: maxBatch, seq: maxSeq, training: false)))
        }
        var rows: [InferenceRow] = []
        for cs in o.cases {
            progress("\(cs)")
            var passes: [() throws -> Void] = []
            for (_, model, acts) in models {
                passes.append(try pass(model: model, acts: acts, cs: cs, seed: o.seed, ledger: ledger))
            }
            ledger.enabled = false
            for p in passes { for _ in 0..<o.warmup { try p() } }
            var times = [[Double]](repeating: [], count: models.count)
            for _ in 0..<o.reps {
                for (i, p) in passes.enumerated() {
                    try Collective.barrier(over: comm, at: .timing)
                    let t0 = now()
                    try p()
                    var dt = [now() - t0]
                    try Collective.max(&dt, over: comm, at: .timing)
                    times[i].append(dt[0])
                }
            }
            let medians = times.map { t -> Double in
                let s = t.sorted()
                return s[s.count / 2] * 1000
            }
            let baseMs = zip(models, medians).first { $0.0.0.kind == .base }?.1 ?? medians[0]
            for (i, (method, model, _)) in models.enumerated() {
                ledger.reset()
                ledger.enabled = true
                ledger.phase = .inference
                try passes[i]()
                let entries = ledger.entries
                ledger.enabled = false
                rows.append(
                    InferenceRow(
                        method: method.description, caseName: cs.description, medianMs: medians[i],
                        overheadPct: 100 * (medians[i] - baseMs) / baseMs,
                        allReduce: entries.filter { $0.op == .allReduce }.count,
                        broadcast: entries.filter { $0.op == .broadcast }.count,
                        allGather: entries.filter { $0.op == .allGather }.count,
                        bytes: entries.reduce(0) { $0 + $1.bytes },
                        adapterParamsPerRank: model.trainable?.adapters?.arena.count ?? 0))
            }
        }
        return rows.sorted {
            (o.methods.firstIndex(of: InferenceMethod.parse($0.method)!)!, $0.caseName) < (
                o.methods.firstIndex(of: InferenceMethod.parse($1.method)!)!, $1.caseName
            )
        }
    }

    /// One pass of a case on a model: a forward of batch × seq, or one decoded token after a
    /// cached context of seq tokens (the cache is filled here, untimed).
    static func pass(
        model: GPTModel, acts: Activations, cs: InferenceCase, seed: UInt64,
        ledger: Ledger
    ) throws -> () throws -> Void {
        var rng = RNG(seed: seed)
        let tokens = (0..<(cs.batch * cs.seq)).map { _ in Int32(rng.below(model.config.vocabSize)) }
        if cs.decode {
            let cache = KVCache(config: model.config, layout: model.layout, batch: 1, capacity: cs.seq + 1)
            let saved = ledger.enabled
            ledger.enabled = false
            _ = try tokens.withUnsafeBufferPointer {
                try model.forward(tokens: $0.baseAddress!, batch: 1, len: cs.seq, into: acts, pos0: 0, cache: cache)
            }
            ledger.enabled = saved
            return {
                var t: Int32 = 1
                let pass = try model.forward(tokens: &t, batch: 1, len: 1, into: acts, pos0: cs.seq, cache: cache)
                _ = try model.argmaxLast(pass)
            }
        }
        return {
            let pass = try tokens.withUnsafeBufferPointer {
                try model.forward(tokens: $0.baseAddress!, batch: cs.batch, len: cs.seq, into: acts)
            }
            _ = try model.argmaxLast(pass)
        }
    }

    public static func table(_ rows: [InferenceRow]) -> String {
        var t = TextTable(
            ["method", "case", "median ms", "overhead", "AllReduce", "Broadcast", "AllGather", "bytes/pass"],
            left: [0, 1])
        for r in rows {
            t.add([
                r.method, r.caseName, fixed(r.medianMs, 2),
                (r.overheadPct >= 0 ? "+" : "") + fixed(r.overheadPct, 1) + "%",
                String(r.allReduce), String(r.broadcast), String(r.allGather), String(r.bytes)
            ])
        }
        return t.render()
    }
}
