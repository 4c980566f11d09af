import Foundation
import XCTest

@testable import LoRADist
@testable import LoRADistServe

/// Serving bottleneck adapters (Houlsby's adapter-h, Lin's adapter-l) through the same
/// continuous-batching engine, in process (rank 0's scheduler, the other ranks following its
/// plans): greedy completions equal `Generator` on the model `generate` builds with that file, at
/// TP 1, 2 and 4 and every placement, GPT-2 and the Llama family; and the ledger shows what the
/// adapters cost a sharded model per step, against the bare base's step: replicated nothing, sharded
/// one AllReduce per adapter at `adapter-out`, owner one Broadcast per adapter at `adapter-owner`
/// (where LoRA, served the same way, adds nothing: BatchingEngineTests). A BitFit file is served the
/// same way.
final class BottleneckServeTests: XCTestCase {
    static let dir = makeTempDir("bottleneck-serve")

    static func path(_ kind: AdapterKind, _ family: ModelFamily, width: Int) -> String {
        dir + "/\(family)-\(kind.rawValue)-\(width).safetensors"
    }

    /// A bottleneck adapter file of `kind` (bottleneck `width`) on the engine tests' random base of
    /// `family`, every tensor non-zero (W_up too, so the adapters change the output), written once.
    static func write(_ kind: AdapterKind, _ family: ModelFamily, width: Int = 8) throws -> String {
        let p = path(kind, family, width: width)
        if !FileManager.default.fileExists(atPath: p) {
            try write(
                kind, width: width, config: BatchingEngineTests.config(family),
                base: BatchingEngineTests.identity(family), to: p)
        }
        return p
    }

    /// A bottleneck adapter file of `kind` and `width` for the base `base` of `cfg`, its tensors
    /// drawn from a hash (LayerNorm's weights about 1).
    static func write(_ kind: AdapterKind, width: Int, config cfg: GPTConfig, base: BaseIdentity, to p: String) throws {
        let config = AdapterConfig(kind: kind, bottleneck: width, placement: .replicated)
        try InProcessCommunicator.run(ranks: 1) { comm in
            let ad = AdapterWeights(config: config, layout: try TPLayout(config: cfg, degree: 1, rank: 0))
            for i in 0..<ad.arena.count {
                ad.arena.base[i] = hashNormal(21, stream: UInt64(kind == .lin ? 1 : 0), index: UInt64(i), std: 0.3)
            }
            for s in ad.slots where s.lnw >= 0 {
                for j in 0..<cfg.nEmbd { ad.ptr(s.lnw)[j] += 1 }
            }
            try TrainedFile.saveBottleneck(
                try TrainedFile.wholeAdapters(ad, tp: comm), config: config, base: base, to: p)
        }
    }

    static let requests: [(String, Int)] = [
        ("hello", 6), ("a longer prompt here", 5), ("xy", 7), ("zz top", 4), ("the quick brown f", 8)
    ]

    struct Served {
        var tokens: [[Int32]]
        var reference: [[Int32]]
        var bare: [[Int32]]
        var metrics: EngineMetrics
        var ledger: [Ledger.Row]
    }

    /// The requests (all queued before the first step) through an engine serving the file at
    /// `path` as "h" on `tp` ranks with `placement`; on every rank, `Generator` on
    /// `GPTModel.forDecoding` with the file (replicated, as `generate` builds it) and without.
    static func serve(
        _ family: ModelFamily, path: String, tp: Int, placement: AdapterPlacement, reference: Bool = true
    ) throws -> Served {
        let base = BaseSpec.random(BatchingEngineTests.config(family), seed: 8)
        let requests = Self.requests.map {
            CompletionRequest(adapter: nil, model: "h", prompt: $0.0, maxTokens: $0.1, temperature: 0, seed: 0)
        }
        let out = try InProcessCommunicator.run(ranks: tp) { raw -> Served in
            let comm = RecordingCommunicator(raw)
            let runner = try StepRunner(
                comm: comm, base: base, adapters: [], maxAdapters: 4, maxBatch: 3, tokenBudget: 8,
                layers: .init(path: path, placement: placement))
            XCTAssertNil(runner.set)
            comm.ledger.reset()
            var served = Served(tokens: [], reference: [], bare: [], metrics: EngineMetrics(), ledger: [])
            if comm.rank == 0 {
                let engine = try BatchingEngine(
                    runner: runner, tokenizer: ByteTokenizer(), baseName: "h", heartbeat: 0.2)
                let streams = try requests.map { try engine.submit($0) }
                engine.stop()
                try engine.run()
                served.tokens = try streams.map {
                    BatchingEngineTests.tokens(try BatchingEngineTests.drain($0).get())
                }
                served.metrics = engine.metrics()
                served.ledger = comm.ledger.summary()
            } else {
                try runner.follow()
            }
            guard reference else { return served }
            let tok = ByteTokenizer()
            for file in [path, nil] {
                let m = try GPTModel.forDecoding(base, adapter: file, tp: raw, precision: .fp32)
                let ids = try requests.map {
                    try Generator(m).greedy(prompt: tok.encodeStart($0.prompt), maxNew: $0.maxTokens, stop: tok.eot)
                }
                if file == nil { served.bare = ids } else { served.reference = ids }
            }
            return served
        }
        return out[0]
    }

    func checkGreedy(_ kind: AdapterKind, _ family: ModelFamily) throws {
        let p = try Self.write(kind, family)
        var byCase: [String: [[Int32]]] = [:]
        for (tp, placement) in [(1, AdapterPlacement.replicated), (2, .sharded), (2, .owner), (4, .sharded)] {
            let label = "\(family) \(kind.rawValue) tp \(tp) \(placement)"
            let s = try Self.serve(family, path: p, tp: tp, placement: placement)
            XCTAssertEqual(s.tokens, s.reference, label)
            XCTAssertTrue(s.tokens.allSatisfy { !$0.isEmpty }, label)
            XCTAssertNotEqual(s.reference, s.bare, "\(label): the adapters must change the greedy tokens")
            XCTAssertEqual(s.metrics.batchSizes.keys.max(), 3, label)
            XCTAssertEqual(s.metrics.completionsByAdapter, ["": Self.requests.count], label)
            byCase[label] = s.tokens
        }
        XCTAssertEqual(Set(byCase.values).count, 1, "every degree and placement gives the same tokens")
    }

    func testHoulsbyGreedyEqualsGenerateGPT2() throws { try checkGreedy(.houlsby, .gpt2) }

    /// A BitFit file (every bias of the GPT-2 base, drawn from a hash) is served the same way: its
    /// greedy tokens are `generate`'s with the file, at TP 1 and 2, and differ from the base's.
    func testBitFitGreedyEqualsGenerate() throws {
        let cfg = BatchingEngineTests.config(.gpt2)
        let p = Self.dir + "/bitfit.safetensors"
        let layout = BaseLayout(layout: try TPLayout(config: cfg, degree: 1, rank: 0))
        var tensors: [String: (shape: [Int], data: [Float])] = [:]
        for (k, slot) in layout.slots.filter({ BiasParameters.trains($0.name) }).enumerated() {
            let n = slot.shape.reduce(1, *)
            tensors[slot.name] = (
                slot.shape, (0..<n).map { hashNormal(5, stream: UInt64(k), index: UInt64($0), std: 0.5) }
            )
        }
        XCTAssertGreaterThan(tensors.count, 4)
        try TrainedFile.saveBitFit(tensors, base: BatchingEngineTests.identity(.gpt2), to: p)
        var byTP: [[[Int32]]] = []
        for tp in [1, 2] {
            let s = try Self.serve(.gpt2, path: p, tp: tp, placement: .replicated)
            XCTAssertEqual(s.tokens, s.reference, "bitfit tp \(tp)")
            XCTAssertNotEqual(s.reference, s.bare, "the biases must change the greedy tokens")
            byTP.append(s.tokens)
        }
        XCTAssertEqual(byTP[0], byTP[1])
    }

    func testLinGreedyEqualsGenerateGPT2() throws { try checkGreedy(.lin, .gpt2) }

    func testHoulsbyGreedyEqualsGenerateLlama() throws { try checkGreedy(.houlsby, .llama) }

    /// Per step with work: the bare base's collectives by site (one step of the base alone) plus
    /// the adapters' own, 2 per layer for Houlsby and 1 for Lin: none replicated, one AllReduce
    /// each at `adapter-out` sharded, one Broadcast each at `adapter-owner` owner, each carrying
    /// the step's rows × d floats; and one plan broadcast per step.
    func testLedgerShowsTheAdaptersCollectivesPerStep() throws {
        let family = ModelFamily.gpt2
        let cfg = BatchingEngineTests.config(family)
        for kind in [AdapterKind.houlsby, .lin] {
            let p = try Self.write(kind, family)
            for (tp, placement) in [(2, AdapterPlacement.replicated), (2, .sharded), (2, .owner), (4, .sharded)] {
                let s = try Self.serve(family, path: p, tp: tp, placement: placement, reference: false)
                let base = try BatchingEngineTests.bareBaseStep(cfg, tp: tp)
                let label = "\(kind.rawValue) tp \(tp) \(placement)"
                let work = s.metrics.batchSizes.values.reduce(0, +)
                XCTAssertGreaterThan(work, 4, label)
                let perStep = cfg.nLayer * AdapterConfig(kind: kind).positions.count
                var expected: [String: Int] = [:]
                for row in base { expected["\(row.site) \(row.op)", default: 0] += row.count * work }
                expected["serve-plan broadcast"] = s.metrics.steps
                switch placement {
                case .replicated: break
                case .sharded: expected["adapter-out allReduce"] = perStep * work
                case .owner: expected["adapter-owner broadcast"] = perStep * work
                }
                var got: [String: Int] = [:]
                for row in s.ledger { got["\(row.site) \(row.op)", default: 0] += row.count }
                XCTAssertEqual(got, expected, label)
                let rows = s.metrics.passesByRows.reduce(0) { $0 + $1.key * $1.value }
                let adapterBytes = s.ledger.filter { $0.site.hasPrefix("adapter-") }.reduce(0) { $0 + $1.bytes }
                XCTAssertEqual(adapterBytes, placement == .replicated ? 0 : rows * 4 * cfg.nEmbd * perStep, label)
            }
        }
    }

    /// A sharded placement needs the TP degree to divide the bottleneck (6 over 4 ranks, which
    /// divide the base's heads); the refusal comes on every rank at start.
    func testShardedPlacementThatDoesNotDivideIsRefused() throws {
        let p = try Self.write(.houlsby, .gpt2, width: 6)
        let errors = try InProcessCommunicator.run(ranks: 4) { raw -> String in
            do {
                _ = try StepRunner(
                    comm: raw, base: .random(BatchingEngineTests.config(.gpt2), seed: 8), adapters: [],
                    maxAdapters: 1, maxBatch: 2, tokenBudget: 4, layers: .init(path: p, placement: .sharded))
                return "started"
            } catch { return "\(error)" }
        }
        for e in errors { XCTAssertTrue(e.contains("does not divide the adapter bottleneck 6"), e) }
    }
}
