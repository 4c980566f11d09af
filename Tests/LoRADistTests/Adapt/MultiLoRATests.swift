import XCTest

@testable import LoRADist

/// Several LoRA adapters served side by side (`MultiLoRASet`): a batch whose sequences use adapters
/// of different ranks and targets, and the bare base, gives row by row the logits of a model with
/// only that adapter (training's LoRA, unmerged, to 1e-5; merged, to 2e-5) and, on base rows, the
/// base model's logits bit for bit; TP 1, 2 and 4 in-process agree; GPT-2 and the Llama family;
/// the ledger of a mixed batch equals the base's. Loading and refusals: lora-dist files and PEFT
/// directories, another base, NaN, a duplicate name, a full set, the memory budget.
final class MultiLoRATests: XCTestCase {
    static let seq = 7
    /// Five sequences: A, B, base, B, A (A and B of different ranks and targets).
    static let plan: [String?] = ["A", "B", nil, "B", "A"]
    static let batch = plan.count

    static func configs(_ family: ModelFamily) -> (model: GPTConfig, a: LoRAConfig, b: LoRAConfig) {
        let model = family == .gpt2 ? Fixtures.tiny : Fixtures.llamaTiny
        let a = LoRAConfig(rank: 3, alpha: 6, targets: LoRATarget.available(in: family))
        let b = LoRAConfig(rank: 5, alpha: 20, targets: family == .gpt2 ? [.q, .v, .mlpOut] : [.k, .o, .up, .down])
        return (model, a, b)
    }

    /// The adapter `name` of `family` on `model`, with a non-zero B (the same draws on every rank).
    static func weights(_ name: String, _ family: ModelFamily) -> LoRAWeights {
        let c = configs(family)
        let w = LoRAWeights(config: name == "A" ? c.a : c.b, model: c.model)
        Fixtures.initLoRA(w, seed: name == "A" ? 3 : 4, nonZeroB: 0.5, bSeed: name == "A" ? 6 : 7)
        return w
    }

    static func tokens(_ cfg: GPTConfig) -> [Int32] {
        Fixtures.randomTokens(batch * seq, below: cfg.vocabSize, seed: 2)
    }

    /// This rank's logits [n, localVocab] of one forward over the batch.
    static func logits(_ m: GPTModel) throws -> [Float] {
        let toks = tokens(m.config)
        let acts = try m.activations(batch: batch, seq: seq, training: false)
        var pass = try toks.withUnsafeBufferPointer {
            try m.forward(tokens: $0.baseAddress!, batch: batch, len: seq, into: acts)
        }
        let n = batch * seq
        _ = try m.lossForward(&pass, targets: toks, weights: [Float](repeating: 0, count: n), backward: false)
        return Array(UnsafeBufferPointer(start: acts.logits, count: n * m.layout.localVocab))
    }

    /// A serving model holding A and B, rows assigned as `plan`.
    static func served(_ family: ModelFamily, _ comm: Communicator) throws -> GPTModel {
        let m = try Fixtures.randomModel(
            configs(family).model, comm, trainable: .multiLoRA(maxAdapters: 4), training: false, baseSeed: 8)
        let set = try XCTUnwrap(m.multiLoRA)
        try set.add("A", weights("A", family))
        try set.add("B", weights("B", family))
        try set.assign(try .sequences(plan, length: seq))
        return m
    }

    /// A model with only adapter `name` (training's LoRA), or the base alone (nil).
    static func single(_ name: String?, _ family: ModelFamily, _ comm: Communicator) throws -> GPTModel {
        let c = configs(family)
        guard let name else { return try Fixtures.randomModel(c.model, comm, training: false, baseSeed: 8) }
        let w = weights(name, family)
        let m = try Fixtures.randomModel(c.model, comm, trainable: .lora(w.config), training: false, baseSeed: 8)
        m.lora!.arena.base.update(from: w.arena.base, count: w.count)
        return m
    }

    struct RankLogits {
        var mixed: [Float], unmerged: [String: [Float]], merged: [String: [Float]], base: [Float]
        var localVocab: Int, vocabStart: Int
    }

    static func run(_ family: ModelFamily, tp: Int) throws -> [RankLogits] {
        try InProcessCommunicator.run(ranks: tp) { comm in
            let mixed = try logits(try served(family, comm))
            var unmerged: [String: [Float]] = [:]
            var merged: [String: [Float]] = [:]
            for name in ["A", "B"] {
                let m = try single(name, family, comm)
                unmerged[name] = try logits(m)
                m.loraRuntime!.merge()
                merged[name] = try logits(m)
            }
            let base = try single(nil, family, comm)
            return RankLogits(
                mixed: mixed, unmerged: unmerged, merged: merged, base: try logits(base),
                localVocab: base.layout.localVocab, vocabStart: base.layout.vocabRange.lowerBound)
        }
    }

    /// Row by row, each sequence's logits against the model with its adapter alone.
    func checkMixedBatch(_ family: ModelFamily) throws {
        var full: [Int: [Float]] = [:]
        for tp in [1, 2, 4] {
            let ranks = try Self.run(family, tp: tp)
            for r in ranks {
                let vl = r.localVocab
                for (i, name) in Self.plan.enumerated() {
                    let rows = (i * Self.seq * vl)..<((i + 1) * Self.seq * vl)
                    let got = Array(r.mixed[rows])
                    let label = "\(family) tp \(tp) rank \(r.vocabStart / vl) sequence \(i) (\(name ?? "base"))"
                    guard let name else {
                        XCTAssertEqual(got, Array(r.base[rows]), "base rows are the base's bit for bit: \(label)")
                        continue
                    }
                    let alone = Array(r.unmerged[name]![rows])
                    let effect = zip(alone, r.base[rows]).map { abs($0 - $1) }.max()!
                    XCTAssertGreaterThan(effect, 1e-2, "adapter \(name) must change the logits: \(label)")
                    TensorParallelModelTests.assertClose(got, alone, tol: 1e-5, "vs \(name) alone, unmerged: \(label)")
                    TensorParallelModelTests.assertClose(
                        got, Array(r.merged[name]![rows]), tol: 2e-5, "vs \(name) merged: \(label)")
                }
            }
            // The whole vocabulary of each row, from the ranks' shards, against TP 1.
            let V = Self.configs(family).model.vocabSize
            var rowsFull = [Float](repeating: 0, count: Self.batch * Self.seq * V)
            for r in ranks {
                for i in 0..<(Self.batch * Self.seq) {
                    for j in 0..<r.localVocab where r.vocabStart + j < V {
                        rowsFull[i * V + r.vocabStart + j] = r.mixed[i * r.localVocab + j]
                    }
                }
            }
            full[tp] = rowsFull
            if tp > 1 {
                TensorParallelModelTests.assertClose(rowsFull, full[1]!, tol: 2e-5, "\(family) tp \(tp) vs tp 1")
            }
        }
    }

    func testMixedBatchEqualsEachAdapterAloneGPT2() throws { try checkMixedBatch(.gpt2) }

    func testMixedBatchEqualsEachAdapterAloneLlama() throws { try checkMixedBatch(.llama) }

    /// Greedy decoding with every row on one adapter (`RowAssignment.all`) is that adapter's.
    func testGeneratorOnOneAdapterEqualsItAlone() throws {
        for family in [ModelFamily.gpt2, .llama] {
            for tp in [1, 2] {
                let res = try InProcessCommunicator.run(ranks: tp) { comm -> [[Int32]] in
                    let m = try Self.served(family, comm)
                    let prompt: [Int32] = [5, 17, 3, 44]
                    var out: [[Int32]] = []
                    for name in ["A", "B", nil] as [String?] {
                        try m.multiLoRA!.assign(.all(name))
                        out.append(try Generator(m).greedy(prompt: prompt, maxNew: 8, stop: nil))
                        let alone = try Self.single(name, family, comm)
                        out.append(try Generator(alone).greedy(prompt: prompt, maxNew: 8, stop: nil))
                    }
                    return out
                }
                for r in res {
                    XCTAssertEqual(r[0], r[1], "\(family) tp \(tp) A")
                    XCTAssertEqual(r[2], r[3], "\(family) tp \(tp) B")
                    XCTAssertEqual(r[4], r[5], "\(family) tp \(tp) base")
                    XCTAssertEqual(r[0].count, 8)
                }
                XCTAssertNotEqual(res[0][0], res[0][4], "\(family): adapter A must change the greedy tokens")
            }
        }
    }

    /// The ledger of a forward and argmax over the mixed batch holds exactly the base's collectives.
    func testMixedBatchAddsNoCollective() throws {
        for family in [ModelFamily.gpt2, .llama] {
            for tp in [2, 4] {
                let res = try InProcessCommunicator.run(ranks: tp) { raw -> ([Ledger.Row], [Ledger.Row]) in
                    func rows(_ make: (Communicator) throws -> GPTModel) throws -> [Ledger.Row] {
                        let comm = RecordingCommunicator(raw)
                        let m = try make(comm)
                        comm.ledger.reset()
                        let toks = Self.tokens(m.config)
                        let acts = try m.activations(batch: Self.batch, seq: Self.seq, training: false)
                        let pass = try toks.withUnsafeBufferPointer {
                            try m.forward(tokens: $0.baseAddress!, batch: Self.batch, len: Self.seq, into: acts)
                        }
                        _ = try m.argmaxLast(pass)
                        return comm.ledger.summary().map {
                            var r = $0
                            r.seconds = 0
                            return r
                        }
                    }
                    return (try rows { try Self.served(family, $0) }, try rows { try Self.single(nil, family, $0) })
                }
                for (served, base) in res {
                    XCTAssertFalse(base.isEmpty)
                    XCTAssertEqual(served, base, "\(family) tp \(tp): serving adds no collective")
                }
            }
        }
    }

    func testAddRemoveAndRefusals() throws {
        let (built, training) = try InProcessCommunicator.run(ranks: 1) { comm -> (MultiLoRASet?, Error?) in
            let m = try Fixtures.randomModel(
                Fixtures.tiny, comm, trainable: .multiLoRA(maxAdapters: 2), training: false, baseSeed: 8)
            var refusal: Error?
            do { _ = try GPTModel(config: Fixtures.tiny, tp: comm, trainable: .multiLoRA(maxAdapters: 2)) } catch {
                refusal = error
            }
            return (m.multiLoRA, refusal)
        }[0]
        XCTAssertEqual(training as? AdapterSetError, .inferenceOnly("a model built for training"))
        let set = try XCTUnwrap(built)
        try set.add("A", Self.weights("A", .gpt2))
        XCTAssertThrowsError(try set.add("A", Self.weights("B", .gpt2))) {
            XCTAssertEqual($0 as? AdapterSetError, .duplicate("A"))
        }
        XCTAssertThrowsError(try set.add("bad name", Self.weights("B", .gpt2))) {
            XCTAssertEqual($0 as? AdapterSetError, .badName("bad name"))
        }
        // A Llama-family adapter, and one of another width, on a GPT-2 base.
        XCTAssertThrowsError(try set.add("L", Self.weights("A", .llama))) {
            XCTAssertTrue("\($0)".contains("llama-family model"), "\($0)")
        }
        let wide = LoRAWeights(config: LoRAConfig(rank: 2), model: Fixtures.tiny(vocabSize: 99))
        XCTAssertThrowsError(try set.add("W", wide)) { XCTAssertTrue("\($0)".contains("does not fit"), "\($0)") }
        let nan = Self.weights("B", .gpt2)
        nan.ptr(nan.slots[1].b)[2] = .nan
        XCTAssertThrowsError(try set.add("N", nan)) {
            XCTAssertEqual($0 as? AdapterSetError, .nonFinite("N", "layer 0 v B"))
        }
        try set.add("B", Self.weights("B", .gpt2))
        XCTAssertThrowsError(try set.add("C", Self.weights("B", .gpt2))) {
            XCTAssertEqual($0 as? AdapterSetError, .full(2))
        }
        XCTAssertEqual(set.names, ["A", "B"])
        XCTAssertThrowsError(try set.assign(.all("C"))) { XCTAssertEqual($0 as? AdapterSetError, .unknown("C")) }
        try set.assign(.all("A"))
        try set.remove("A")
        XCTAssertEqual(set.assignment, .all(nil), "removing an adapter takes its rows back to the base")
        XCTAssertThrowsError(try set.remove("A")) { XCTAssertEqual($0 as? AdapterSetError, .unknown("A")) }
        try set.add("C", Self.weights("A", .gpt2))
        XCTAssertEqual(set.names, ["B", "C"])
        XCTAssertThrowsError(
            try RowAssignment(groups: [.init(adapter: "B", rows: 3..<5), .init(adapter: nil, rows: 4..<6)]))
    }

    /// The memory budget (`serve --adapter-memory`): an adapter's bytes are its fp32 A and B, Σ 4·r·(in
    /// + out) over layers and targets (counted here by hand: GPT-2's q, v and mlp_out; the Llama
    /// family's k, whose outputs are its 2 key/value heads', and down); a set holds adapters up to
    /// its budget exactly, and refuses the last with one byte less, until another is removed.
    func testMemoryBudgetCountsEveryWeightAndRefusesPastIt() throws {
        let gpt2 = GPTConfig(nLayer: 2, nEmbd: 32, nHead: 4, vocabSize: 257, nPositions: 32)
        let llama = GPTConfig.llama(
            nLayer: 2, nEmbd: 32, nHead: 4, nKVHead: 2, ffn: 64, vocabSize: 257, nPositions: 32)
        let big = LoRAWeights(config: LoRAConfig(rank: 6, alpha: 12, targets: [.q, .v, .mlpOut]), model: gpt2)
        let small = LoRAWeights(config: LoRAConfig(rank: 2, alpha: 4, targets: [.q]), model: gpt2)
        let kv = LoRAWeights(config: LoRAConfig(rank: 2, alpha: 4, targets: [.k, .down]), model: llama)
        // q, v: 6·(32 + 32) each, mlp_out: 6·(128 + 32); q: 2·(32 + 32); k: 2·(32 + 16), down: 2·(64 + 32).
        XCTAssertEqual(big.bytes, 13_824)
        XCTAssertEqual(small.bytes, 1_024)
        XCTAssertEqual(kv.bytes, 2_304)
        for budget in [13_824 + 1_024, 13_824 + 1_024 - 1] {
            let set = try MultiLoRASet(model: gpt2, maxAdapters: 4, memoryBudget: budget)
            try set.add("B", big)
            XCTAssertEqual(set.loadedBytes, 13_824)
            guard budget < 13_824 + 1_024 else {
                try set.add("S", small)
                XCTAssertEqual(set.loadedBytes, budget, "the budget exactly")
                continue
            }
            XCTAssertThrowsError(try set.add("S", small)) {
                XCTAssertEqual($0 as? AdapterSetError, .memory("S", bytes: 1_024, loaded: 13_824, budget: budget))
                XCTAssertTrue("\($0)".contains("--adapter-memory"), "\($0)")
            }
            XCTAssertEqual(set.names, ["B"])
            try set.remove("B")
            try set.add("S", small)
            XCTAssertEqual(set.loadedBytes, 1_024, "room again once B is gone")
        }
        XCTAssertThrowsError(try MultiLoRASet(model: gpt2, maxAdapters: 4, memoryBudget: 0)) {
            XCTAssertTrue("\($0)".contains("--adapter-memory must be at least 1 byte"), "\($0)")
        }
    }

    /// lora-dist adapter files and PEFT directories load to the same weights; another base and NaN
    /// weights are refused with their messages.
    func testLoadsAdapterFilesAndPEFTDirectories() throws {
        let dir = makeTempDir("multi-lora")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cfg = Fixtures.tiny
        let id = BaseIdentity(config: cfg, fingerprint: "random-8", source: "random init")
        let a = Self.weights("A", .gpt2)
        let file = dir + "/a.safetensors"
        try AdapterFile.save(a, base: id, to: file)
        try PEFTAdapter.save(a, to: dir + "/peft", baseModel: nil)
        let set = try MultiLoRASet(model: cfg, maxAdapters: 3)
        try set.load(name: "file", path: file, base: id)
        try set.load(name: "peft", path: dir + "/peft", base: id)
        XCTAssertEqual(Array(set.adapter("file")!.arena.buffer), Array(a.arena.buffer))
        let p = set.adapter("peft")!
        XCTAssertEqual(p.config.targets, a.config.targets)
        TensorParallelModelTests.assertClose(Array(p.arena.buffer), Array(a.arena.buffer), tol: 1e-6, "PEFT round trip")
        var other = id
        other.fingerprint = "random-9"
        XCTAssertThrowsError(try set.load(name: "other", path: file, base: other)) {
            XCTAssertTrue("\($0)".contains("pass the --base it was trained on"), "\($0)")
        }
        let nan = Self.weights("B", .gpt2)
        nan.ptr(nan.slots[0].a)[0] = .infinity
        try AdapterFile.save(nan, base: id, to: dir + "/nan.safetensors")
        XCTAssertThrowsError(try set.load(name: "nan", path: dir + "/nan.safetensors", base: id)) {
            XCTAssertTrue("\($0)".contains("holds +Inf at element [0, 0]"), "\($0)")
        }
        XCTAssertThrowsError(try set.load(name: "missing", path: dir + "/none", base: id))
        XCTAssertThrowsError(try set.load(name: "file", path: file, base: id)) {
            XCTAssertEqual($0 as? AdapterSetError, .duplicate("file"))
        }
        XCTAssertEqual(set.names, ["file", "peft"])
    }
}
