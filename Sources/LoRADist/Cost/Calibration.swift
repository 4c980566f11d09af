import Foundation

/// One training run measured on the (simulated) cluster: a row of `cluster/scale`'s CSV.
public struct MeasuredRun: Sendable, Equatable {
    public var hosts: Int, ranksPerHost: Int, world: Int, tp: Int, dp: Int
    public var rate: String, method: Method, model: String
    public var seq: Int, tokensPerStep: Int
    public var secondsPerStep: Double, gradSyncSeconds: Double, activationSeconds: Double
    public var gradBytes: Int, trainable: Int
    /// What a packed run computed per step (optional columns `tokens_computed_per_step` and
    /// `attention_squares_per_step`, from its summary.json): the rows over the global batch and
    /// their sequences' Σ len². Absent: tokensPerStep rows of seq tokens.
    public var tokensComputedPerStep: Int? = nil, squaresPerStep: Int? = nil

    /// Rows the run computed per step.
    public var rowsPerStep: Int { tokensComputedPerStep ?? tokensPerStep }
    /// Training FLOPs of one step over the world: of its rows and, when known, their Σ len².
    public func flopsPerStep(_ cfg: GPTConfig) -> Double {
        let loraParams = method == .lora ? trainable : 0
        if let squares = squaresPerStep {
            return FlopCount.trainPerPass(
                cfg, rows: rowsPerStep, squares: squares, method: method, loraParams: loraParams)
        }
        return FlopCount.trainPerToken(cfg, seq: seq, method: method, loraParams: loraParams) * Double(tokensPerStep)
    }

    /// What is left of the step once the ledger's timed communication is taken out.
    public var computeSeconds: Double { secondsPerStep - gradSyncSeconds - activationSeconds }
    /// Runs with the same key are repeats of one configuration.
    public var key: String { "\(rate) \(hosts)x\(ranksPerHost) \(method.modeName) \(model)" }

    static let columns = [
        "hosts", "ranks_per_host", "world", "tp", "dp", "rate", "method", "model", "seq",
        "tokens_per_step", "seconds_per_step", "grad_sync_s", "activation_comm_s", "grad_bytes", "trainable"
    ]

    /// Parses the CSV; a missing column or a malformed number names the line.
    public static func parseCSV(_ text: String, source: String) throws -> [MeasuredRun] {
        let lines = text.split(whereSeparator: \.isNewline).map {
            $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        }
        guard let header = lines.first else { throw IOError.corrupt(source, "empty CSV") }
        for c in columns where !header.contains(c) { throw IOError.corrupt(source, "no column \(c)") }
        return try lines.dropFirst().enumerated().map { (i, fields) in
            let row = Dictionary(zip(header, fields), uniquingKeysWith: { a, _ in a })
            func int(_ k: String) throws -> Int {
                guard let v = Int(row[k] ?? "") else {
                    throw IOError.corrupt(source, "line \(i + 2): \(k) is not an integer")
                }
                return v
            }
            func dbl(_ k: String) throws -> Double {
                guard let v = Double(row[k] ?? ""), v.isFinite else {
                    throw IOError.corrupt(source, "line \(i + 2): \(k) is not a number")
                }
                return v
            }
            func optionalInt(_ k: String) throws -> Int? {
                guard let v = row[k], !v.isEmpty else { return nil }
                return try int(k)
            }
            guard let method = Method(modeName: row["method"] ?? "") else {
                throw IOError.corrupt(source, "line \(i + 2): unknown method \(row["method"] ?? "")")
            }
            return MeasuredRun(
                hosts: try int("hosts"), ranksPerHost: try int("ranks_per_host"), world: try int("world"),
                tp: try int("tp"), dp: try int("dp"), rate: row["rate"] ?? "", method: method,
                model: row["model"] ?? "", seq: try int("seq"), tokensPerStep: try int("tokens_per_step"),
                secondsPerStep: try dbl("seconds_per_step"), gradSyncSeconds: try dbl("grad_sync_s"),
                activationSeconds: try dbl("activation_comm_s"), gradBytes: try int("grad_bytes"),
                trainable: try int("trainable"), tokensComputedPerStep: try optionalInt("tokens_computed_per_step"),
                squaresPerStep: try optionalInt("attention_squares_per_step"))
        }
    }

    /// Repeats of one configuration folded into one run of median times, with the spread of the step time.
    public static func medianByCase(_ runs: [MeasuredRun]) -> [(
        run: MeasuredRun, repeats: Int, min: Double, max: Double
    )] {
        var order: [String] = []
        var groups: [String: [MeasuredRun]] = [:]
        for r in runs {
            if groups[r.key] == nil { order.append(r.key) }
            groups[r.key, default: []].append(r)
        }
        return order.map { k in
            let g = groups[k]!
            var m = g[0]
            m.secondsPerStep = median(g.map(\.secondsPerStep))
            m.gradSyncSeconds = median(g.map(\.gradSyncSeconds))
            m.activationSeconds = median(g.map(\.activationSeconds))
            let s = g.map(\.secondsPerStep)
            return (m, g.count, s.min()!, s.max()!)
        }
    }
}

/// Median of a non-empty list (upper median for an even count); 0 for an empty one.
public func median(_ a: [Double]) -> Double {
    let s = a.sorted()
    return s.isEmpty ? 0 : s[s.count / 2]
}

/// The cost model calibrated on measured runs: one α–β link per rate, fitted to the gradient
/// AllReduces the ledger timed, and sustained FLOP/s of one core per method, from what is left of
/// each step once communication is taken out. The simulated hosts share this machine's `cores`,
/// so each of W ranks gets min(1, cores/W) of a core.
public struct Calibration: Sendable {
    public var links: [String: LinkModel]
    public var flopsPerCore: [Method: Double]
    /// How many runs each per-method compute figure is the median of.
    public var computeSamples: [Method: Int]
    public var cores: Int

    public func coreShare(world: Int) -> Double { min(1, Double(cores) / Double(max(1, world))) }

    public static func fit(_ runs: [MeasuredRun], cores: Int) -> Calibration {
        var links: [String: LinkModel] = [:]
        for rate in Set(runs.map(\.rate)) {
            let samples = runs.filter { $0.rate == rate && $0.world > 1 && $0.gradSyncSeconds > 0 }
                .map { (bytes: Double($0.gradBytes), ranks: $0.world, seconds: $0.gradSyncSeconds) }
            if let l = LinkModel.fitAllReduce(samples) { links[rate] = l }
        }
        var c = Calibration(links: links, flopsPerCore: [:], computeSamples: [:], cores: cores)
        var perMethod: [Method: [Double]] = [:]
        for r in runs {
            guard let cfg = GPTConfig.named(r.model), r.computeSeconds > 0 else { continue }
            let flops = r.flopsPerStep(cfg) / Double(r.world)
            perMethod[r.method, default: []].append(flops / r.computeSeconds / c.coreShare(world: r.world))
        }
        for (m, f) in perMethod {
            c.flopsPerCore[m] = median(f)
            c.computeSamples[m] = f.count
        }
        return c
    }

    /// The model of a measured run's configuration, or nil when its rate, method or model shape
    /// was not calibrated.
    public func model(for r: MeasuredRun) -> StepCostModel? {
        guard let cfg = GPTConfig.named(r.model), let link = links[r.rate], let f = flopsPerCore[r.method] else {
            return nil
        }
        var m = StepCostModel(
            config: cfg, seq: r.seq, batchPerReplica: r.tokensPerStep / max(1, r.seq) / max(1, r.dp),
            tp: r.tp, dp: r.dp, method: r.method, flopsPerRank: f * coreShare(world: r.world),
            intra: link, inter: link)
        m.trainable = r.trainable
        // What each replica computed: its rows, and when the run recorded them its sequences' Σ len².
        m.tokensPerReplica = r.rowsPerStep / max(1, r.dp)
        m.squaresPerReplica = r.squaresPerStep.map { $0 / max(1, r.dp) }
        return m
    }

    /// Each case predicted by a calibration that never saw it (fitted on every other case's runs):
    /// the honest check of the model against measurement. Cases whose rate or method then has no
    /// calibration are left out.
    public static func leaveOneCaseOut(_ runs: [MeasuredRun], cores: Int) -> [(run: MeasuredRun, predicted: Double)] {
        MeasuredRun.medianByCase(runs).compactMap { c in
            let cal = fit(runs.filter { $0.key != c.run.key }, cores: cores)
            return cal.model(for: c.run).map { (c.run, $0.predict().total) }
        }
    }
}
