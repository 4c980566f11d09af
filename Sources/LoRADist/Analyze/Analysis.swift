import Foundation

/// `lora-dist analyze`'s results: ΔW against W for each adapter's matrices, and, for two adapters,
/// the subspace similarity of their A's (right-singular vectors) and B's (left-singular vectors)
/// per layer and target.
public struct AnalysisReport: Codable, Sendable {
    public struct AdapterInfo: Codable, Sendable {
        public var path: String
        public var rank: Int
        public var alpha: Float
        public var scale: Float
        public var targets: [String]
    }

    public struct DeltaEntry: Codable, Sendable {
        public var adapter: Int
        public var layer: Int
        public var target: String
        public var figures: DeltaWFigures
    }

    public struct SimilarityEntry: Codable, Sendable {
        public var layer: Int
        public var target: String
        /// "A" (right-singular vectors of A) or "B" (left-singular vectors of B).
        public var matrix: String
        /// phi[i-1][j-1] = φ(i, j), i over the first adapter's rank, j over the second's.
        public var phi: [[Double]]
    }

    public var base: String
    public var adapters: [AdapterInfo]
    public var randomDraws: Int
    public var deltaW: [DeltaEntry]
    public var similarity: [SimilarityEntry]
}

extension LoRAConfig {
    /// α/r (or α/√r) of one slot in float64, for the analysis.
    func scaleDouble(layer: Int, target: LoRATarget, family: ModelFamily) -> Double {
        let r = slot(layer: layer, target: target, family: family).rank
        let a =
            (try? Self.patternValue(alphaPattern ?? [:], target.moduleName(layer: layer, family))).map(Double.init)
            ?? Double(alpha)
        return rsLoRA ? a / Double(r).squareRoot() : a / Double(r)
    }
}

public enum AdapterAnalysis {
    /// Analyses one or two adapters of the same base (`source`, whose identity they must carry).
    public static func run(
        adapters: [AdapterMatrices], source: WeightSource, config: GPTConfig, baseName: String,
        randomDraws: Int = 5, seed: UInt64 = 1
    ) throws -> AnalysisReport {
        guard (1...2).contains(adapters.count) else {
            throw AnalysisError.input("analyze takes one or two adapters (got \(adapters.count))")
        }
        var deltas: [AnalysisReport.DeltaEntry] = []
        var weights: [String: DMatrix] = [:]
        for (k, ad) in adapters.enumerated() {
            for p in ad.pairs {
                let key = "\(p.layer).\(p.target.rawValue)"
                let w = try weights[key] ?? baseWeight(source, config: config, layer: p.layer, target: p.target)
                weights[key] = w
                let f = try DeltaWAnalysis.figures(
                    w: w, a: p.a, b: p.b,
                    scale: ad.config.scaleDouble(layer: p.layer, target: p.target, family: config.family),
                    randomDraws: randomDraws,
                    seed: seed &+ UInt64(p.layer * 64 + LoRATarget.allCases.firstIndex(of: p.target)!))
                deltas.append(.init(adapter: k, layer: p.layer, target: p.target.rawValue, figures: f))
            }
        }
        var sims: [AnalysisReport.SimilarityEntry] = []
        if adapters.count == 2 {
            for p in adapters[0].pairs {
                guard let q = adapters[1].pair(layer: p.layer, target: p.target) else { continue }
                let phiA = SubspaceSimilarity.phi(
                    try SubspaceSimilarity.rightSingular(p.a), try SubspaceSimilarity.rightSingular(q.a))
                let phiB = SubspaceSimilarity.phi(
                    try SubspaceSimilarity.leftSingular(p.b), try SubspaceSimilarity.leftSingular(q.b))
                sims.append(.init(layer: p.layer, target: p.target.rawValue, matrix: "A", phi: phiA))
                sims.append(.init(layer: p.layer, target: p.target.rawValue, matrix: "B", phi: phiB))
            }
        }
        let infos = adapters.map {
            AnalysisReport.AdapterInfo(
                path: $0.path, rank: $0.config.rank, alpha: $0.config.alpha, scale: $0.config.scale,
                targets: $0.config.targets.map(\.rawValue))
        }
        return AnalysisReport(
            base: baseName, adapters: infos, randomDraws: randomDraws, deltaW: deltas, similarity: sims)
    }
}
