import XCTest

@testable import LoRADist

/// Parity with checkpoints transformers and PEFT write themselves: reference/make_hf_fixture.py
/// (run once per class into a temporary directory) saves a random-init GPT2LMHeadModel, PEFT
/// LoRAs with non-zero B, and what transformers/PEFT compute with them, in float64 from the float32
/// weights. Tolerances: logits 1e-4 of the largest |logit|, loss 1e-5 relative, gradients 1e-3 of
/// the largest entry of each tensor. The measured worst differences are printed ("parity: ...").
/// Needs Python with torch, transformers, peft and safetensors (launch/setup --no-build --python);
/// without them these tests fail, they never skip.
final class HFParityTests: XCTestCase {
    /// Runs the reference script with `args`.
    static func reference(_ args: [String]) throws {
        _ = try PythonReference.check("make_hf_fixture.py", args)
    }

    static let fixture: Result<String, Error> = Result {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hf-parity-\(UUID().uuidString)").path
        try reference(["fixture", dir])
        return dir
    }

    struct Case {
        let dir: String, expected: SafeTensorsFile, model: GPTConfig
        let ids: [Int32], targets: [Int32]
        var base: String { dir + "/base" }
        init() throws {
            dir = try HFParityTests.fixture.get()
            expected = try SafeTensorsFile(path: dir + "/expected.safetensors")
            model = try BaseFiles.open(.file(dir + "/base")).config
            ids = try expected.int64s("input_ids").map { Int32($0) }
            targets = try expected.int64s("targets").map { Int32($0) }
        }
    }

    struct Pass {
        var logits: [Float]
        var vocab: Range<Int>
        var loss: Double
        var grads: [Float]
    }

    /// One forward (and backward) of the HF base `base` with a LoRA set by `fill`, on `tp` ranks in-process;
    /// gradients are all-reduced over the ranks, so each rank returns the whole A/B gradient.
    static func pass(
        _ c: Case, tp: Int, base: String? = nil, lora: LoRAConfig?, merged: Bool = false, backward: Bool = false,
        precision: Precision = .fp32, round: ((Float) -> Float)? = nil,
        fill: @escaping (LoRAWeights) throws -> Void = { _ in }
    ) throws -> [Pass] {
        let B = 2
        let T = c.ids.count / 2
        let w = [Float](repeating: 1 / Float(c.ids.count), count: c.ids.count)
        return try InProcessCommunicator.run(ranks: tp) { comm in
            let opened = try BaseFiles.open(.file(base ?? c.base))
            let (cfg, source) = (opened.config, opened.weights)
            let m = try GPTModel(
                config: cfg, tp: comm, trainable: lora.map { .lora($0) }, training: backward,
                precision: precision)
            let acts = try m.activations(batch: B, seq: T, training: backward)
            try m.base.load(from: round.map { RoundedSource(inner: source, round: $0) } ?? source)
            if let l = m.lora { try fill(l) }
            if merged { m.loraRuntime?.merge() }
            var pass = try c.ids.withUnsafeBufferPointer {
                try m.forward(tokens: $0.baseAddress!, batch: B, len: T, into: acts)
            }
            let loss = try m.lossForward(&pass, targets: c.targets, weights: w, backward: false)
            let logits = Array(UnsafeBufferPointer(start: acts.logits, count: c.ids.count * m.layout.localVocab))
            var grads: [Float] = []
            if backward, let g = m.trainable?.loraGradients {
                // The logits' buffer becomes their gradient.
                _ = try m.lossForward(&pass, targets: c.targets, weights: w, backward: true)
                try c.ids.withUnsafeBufferPointer { try m.backward(pass, tokens: $0.baseAddress!) }
                try comm.allReduce(g.buffer, op: .sum)
                grads = Array(g.buffer)
            }
            return Pass(logits: logits, vocab: m.layout.vocabRange, loss: loss, grads: grads)
        }
    }

    /// Worst |Δ| between a rank's vocabulary slice of the logits and `want` [n, V], and the largest |want|.
    static func logitError(_ p: Pass, _ want: [Float], V: Int) -> (worst: Float, scale: Float) {
        let vl = p.vocab.count
        let n = want.count / V
        var worst: Float = 0
        for i in 0..<n {
            for j in 0..<vl where p.vocab.lowerBound + j < V {
                worst = max(worst, abs(p.logits[i * vl + j] - want[i * V + p.vocab.lowerBound + j]))
            }
        }
        return (worst, want.map(abs).max()!)
    }

    /// Whole logits [n, V] from the ranks' vocabulary slices.
    static func gather(_ ps: [Pass], V: Int) -> [Float] {
        let n = ps[0].logits.count / ps[0].vocab.count
        var out = [Float](repeating: 0, count: n * V)
        for p in ps {
            for i in 0..<n {
                for j in 0..<p.vocab.count where p.vocab.lowerBound + j < V {
                    out[i * V + p.vocab.lowerBound + j] = p.logits[i * p.vocab.count + j]
                }
            }
        }
        return out
    }

    /// A lora-dist LoRA PEFT has no exact twin of: separate q and v (no k), o and both MLP matrices,
    /// A per the init and B non-zero.
    static let ownConfig = LoRAConfig(rank: 4, alpha: 16, targets: [.q, .v, .o, .mlpIn, .mlpOut])
    static func fillOwn(_ l: LoRAWeights) {
        l.initialize(seed: 5)
        var rng = RNG(seed: 6)
        for s in l.slots { for i in 0..<(s.outDim * l.config.rank) { l.ptr(s.b)[i] = 0.05 * rng.normal() } }
    }

    /// `back` holds `lora`'s A and B for every slot, bit for bit.
    static func assertSameLoRA(
        _ back: PEFTAdapter.Loaded, _ lora: LoRAWeights, file: StaticString = #filePath, line: UInt = #line
    ) {
        for s in lora.slots {
            let t = back.tensors["\(s.layer).\(s.target.rawValue)"]!
            XCTAssertEqual(
                t.a, Array(UnsafeBufferPointer(start: lora.ptr(s.a), count: t.a.count)), "A \(s.layer).\(s.target)",
                file: file, line: line)
            XCTAssertEqual(
                t.b, Array(UnsafeBufferPointer(start: lora.ptr(s.b), count: t.b.count)), "B \(s.layer).\(s.target)",
                file: file, line: line)
        }
    }

    /// The LoRA above as an adapter file made for the fixture's base (what `train` writes).
    static func ownAdapter(_ c: Case, in dir: String) throws -> String {
        let id = try BaseFiles.open(.file(c.base)).identity
        let l = LoRAWeights(config: ownConfig, model: c.model)
        fillOwn(l)
        let path = dir + "/adapter.safetensors"
        try AdapterFile.save(l, base: id, to: path)
        return path
    }

    /// A new directory inside the fixture's (removed with it after the class).
    static func scratch() throws -> String {
        let d = try fixture.get() + "/out-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    override class func tearDown() {
        if case .success(let dir) = fixture { try? FileManager.default.removeItem(atPath: dir) }
        super.tearDown()
    }

    func testPEFTAdapterMatchesPEFTLogitsLossAndGradients() throws {
        let c = try Case()
        let V = c.model.vocabSize
        let peft = try PEFTAdapter.load(dir: c.dir + "/peft", model: c.model)
        XCTAssertEqual(peft.config.rank, 4)
        XCTAssertEqual(peft.config.alpha, 16)
        XCTAssertEqual(Set(peft.config.targets), Set(LoRATarget.available(in: .gpt2)))
        let want = try c.expected.floats("peft.logits")
        let wantLoss = Double(try c.expected.floats("peft.loss")[0])
        let base = try c.expected.floats("base.logits")
        XCTAssertGreaterThan(zip(want, base).map { abs($0 - $1) }.max()!, 1e-2, "the adapter changes the logits")
        for tp in [1, 2, 4] {
            let res = try Self.pass(c, tp: tp, lora: peft.config, backward: true) {
                try PEFTAdapter.apply(peft, to: $0)
            }
            var worstLogit: Float = 0
            var logitScale: Float = 0
            var worstLoss = 0.0
            var worstGrad: Float = 0
            let lora = LoRAWeights(config: peft.config, model: c.model)  // the slot layout of the gradients
            for r in res {
                let e = Self.logitError(r, want, V: V)
                XCTAssertLessThan(e.worst, 1e-4 * e.scale, "logits tp \(tp)")
                worstLogit = max(worstLogit, e.worst)
                logitScale = e.scale
                XCTAssertEqual(r.loss, wantLoss, accuracy: 1e-5 * wantLoss, "loss tp \(tp)")
                worstLoss = max(worstLoss, abs(r.loss - wantLoss))
                for (key, got) in Self.peftGradients(r.grads, lora) {
                    let ref = try c.expected.floats("grad." + key)
                    let scale = ref.map(abs).max()!
                    let worst = zip(got, ref).map { abs($0 - $1) }.max()!
                    XCTAssertGreaterThan(scale, 0, key)
                    XCTAssertLessThan(worst, 1e-3 * scale, "\(key) tp \(tp)")
                    worstGrad = max(worstGrad, worst / scale)
                }
            }
            print(
                """
                parity: PEFT adapter on the HF base, tp \(tp): logits max |Δ| = \(worstLogit) (max |logit| \
                \(logitScale)), loss |Δ| = \(worstLoss) (loss \(wantLoss)), A/B gradients max |Δ|/max|grad| = \
                \(worstGrad) (worst of 16 tensors)
                """
            )
        }
    }

    /// Gradients in PEFT's parameterisation: c_attn's one A feeds q, k and v, so its gradient is the
    /// sum of theirs; its B is q's, k's and v's rows stacked. Other modules map one to one.
    static func peftGradients(_ g: [Float], _ lora: LoRAWeights) -> [(String, [Float])] {
        var out: [(String, [Float])] = []
        let r = lora.config.rank
        for l in 0..<lora.model.nLayer {
            for (module, targets) in PEFTAdapter.modules {
                let slots = targets.compactMap { lora.slot(layer: l, target: $0) }
                guard !slots.isEmpty else { continue }
                var a = [Float](repeating: 0, count: r * slots[0].inDim)
                var b: [Float] = []
                for s in slots {
                    for i in 0..<a.count { a[i] += g[s.a + i] }
                    b += g[s.b..<(s.b + s.outDim * r)]
                }
                let key = PEFTAdapter.prefix + "\(l).\(module)"
                out += [(key + ".lora_A.weight", a), (key + ".lora_B.weight", b)]
            }
        }
        return out
    }

    func testPerModuleRanksAndAlphasLoadExactly() throws {
        let c = try Case()
        let peft = try PEFTAdapter.load(dir: c.dir + "/peft-patterns", model: c.model)
        XCTAssertEqual(peft.config.rank, 8, "the largest rank (c_fc's rank_pattern)")
        let want = try c.expected.floats("patterns.logits")
        for tp in [1, 2] {
            var worst: Float = 0
            var scale: Float = 0
            for r in try Self.pass(c, tp: tp, lora: peft.config, fill: { try PEFTAdapter.apply(peft, to: $0) }) {
                let e = Self.logitError(r, want, V: c.model.vocabSize)
                XCTAssertLessThan(e.worst, 1e-4 * e.scale, "tp \(tp)")
                worst = max(worst, e.worst)
                scale = e.scale
            }
            print(
                """
                parity: PEFT adapter with rank_pattern/alpha_pattern, tp \(tp): logits max |Δ| = \(worst) (max |logit| \
                \(scale))
                """
            )
        }
    }

    func testExportedAdapterReproducesLoRADistLogitsInPEFT() throws {
        let c = try Case()
        let V = c.model.vocabSize
        let out = try Self.scratch()
        let adapter = try Self.ownAdapter(c, in: out)
        let export = try Launcher.lora(["export-peft", "--adapter", adapter, "--base", c.base, "--out", out + "/peft"])
        XCTAssertEqual(export.status, 0, export.output)
        let cfg =
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: URL(fileURLWithPath: out + "/peft/adapter_config.json"))) as! [String: Any]
        XCTAssertEqual(cfg["base_model_name_or_path"] as? String, c.base)
        XCTAssertEqual(
            ((cfg["rank_pattern"] as? [String: Any])?["c_attn"] as? NSNumber)?.intValue, 8, "q and v stacked: rank 2·4")

        // lora-dist's own logits (TP 2, unmerged) against PEFT's with the exported directory.
        let ours = Self.gather(
            try Self.pass(c, tp: 2, lora: Self.ownConfig) { try AdapterFile.load(adapter, into: $0, expecting: nil) },
            V: V)
        try Self.reference([
            "peft-logits", c.base, out + "/peft", c.dir + "/expected.safetensors", out + "/peft-logits.safetensors"
        ])
        let theirs = try SafeTensorsFile(path: out + "/peft-logits.safetensors").floats("logits")
        let base = try c.expected.floats("base.logits")
        XCTAssertGreaterThan(zip(ours, base).map { abs($0 - $1) }.max()!, 1e-2, "the adapter changes the logits")
        let scale = theirs.map(abs).max()!
        let worst = zip(ours, theirs).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worst, 1e-4 * scale)
        print(
            """
            parity: lora-dist adapter exported to PEFT (q,v stacked into c_attn; o, mlp_in, mlp_out), PeftModel vs \
            lora-dist tp 2: logits max |Δ| = \(worst) (max |logit| \(scale))
            """
        )

        // And back: the export imports to the same LoRA, bit for bit.
        let back = try PEFTAdapter.load(dir: out + "/peft", model: c.model)
        XCTAssertEqual(back.config.rank, 4)
        XCTAssertEqual(back.config.alpha, 16)
        XCTAssertEqual(back.config.targets, Self.ownConfig.targets)
        let l = LoRAWeights(config: Self.ownConfig, model: c.model)
        Self.fillOwn(l)
        Self.assertSameLoRA(back, l)
    }

    func testMergedModelLoadsInTransformersAndMatches() throws {
        let c = try Case()
        let V = c.model.vocabSize
        let out = try Self.scratch()
        let adapter = try Self.ownAdapter(c, in: out)
        let merge = try Launcher.lora(["merge", "--base", c.base, "--adapter", adapter, "--out", out + "/merged"])
        XCTAssertEqual(merge.status, 0, merge.output)
        // The merged config keeps the base's other keys (token ids, ...), so it loads as the base did.
        func json(_ path: String) throws -> [String: Any] {
            try JSONSerialization.jsonObject(with: try Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any]
                ?? [:]
        }
        let baseConfig = try json(c.base + "/config.json")
        let mergedConfig = try json(out + "/merged/config.json")
        let ours = Set(ModelFiles.hfConfigJSON(c.model).keys)
        XCTAssertFalse(baseConfig.keys.filter { !ours.contains($0) }.isEmpty)
        for (k, v) in baseConfig where !ours.contains(k) {
            XCTAssertEqual("\(mergedConfig[k] ?? "missing")", "\(v)", "config.json key \(k)")
        }
        try Self.reference([
            "hf-logits", out + "/merged", c.dir + "/expected.safetensors", out + "/hf-logits.safetensors"
        ])
        let theirs = try SafeTensorsFile(path: out + "/hf-logits.safetensors").floats("logits")
        let scale = theirs.map(abs).max()!
        let unmerged = Self.gather(
            try Self.pass(c, tp: 1, lora: Self.ownConfig) { try AdapterFile.load(adapter, into: $0, expecting: nil) },
            V: V)
        let mergedInMemory = Self.gather(
            try Self.pass(c, tp: 2, lora: Self.ownConfig, merged: true) {
                try AdapterFile.load(adapter, into: $0, expecting: nil)
            }, V: V)
        let mergedFile = Self.gather(try Self.pass(c, tp: 2, base: out + "/merged", lora: nil), V: V)
        for (name, ours) in [
            ("lora-dist unmerged tp 1", unmerged), ("lora-dist merged tp 2", mergedInMemory),
            ("merge output in lora-dist tp 2", mergedFile)
        ] {
            let worst = zip(ours, theirs).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(worst, 1e-4 * scale, name)
            print("parity: merge output in transformers vs \(name): logits max |Δ| = \(worst) (max |logit| \(scale))")
        }
    }

    func testAdaptersRoundTripBitForBit() throws {
        let c = try Case()
        // PEFT's own adapter (one A for q, k, v) through lora-dist and back: the same tensors, rank 4, no patterns.
        let peft = try PEFTAdapter.load(dir: c.dir + "/peft", model: c.model)
        let l = LoRAWeights(config: peft.config, model: c.model)
        try PEFTAdapter.apply(peft, to: l)
        let out = try Self.scratch()
        try PEFTAdapter.save(l, to: out + "/peft", baseModel: nil)
        let a = try SafeTensorsFile(path: c.dir + "/peft/adapter_model.safetensors")
        let b = try SafeTensorsFile(path: out + "/peft/adapter_model.safetensors")
        XCTAssertEqual(a.names, b.names)
        for n in a.names {
            XCTAssertEqual(try a.info(n).shape, try b.info(n).shape, n)
            XCTAssertEqual(try a.floats(n), try b.floats(n), n)
        }
        let cfg =
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: URL(fileURLWithPath: out + "/peft/adapter_config.json"))) as! [String: Any]
        XCTAssertEqual((cfg["r"] as? NSNumber)?.intValue, 4)
        XCTAssertEqual((cfg["rank_pattern"] as? [String: Any])?.isEmpty, true)

        // rsLoRA on separate q, k, v and o: stacked into c_attn (rank 12, α·√3) and split back exactly.
        let rc = LoRAConfig(rank: 4, alpha: 16, targets: [.q, .k, .v, .o], rsLoRA: true)
        let own = LoRAWeights(config: rc, model: c.model)
        Self.fillOwn(own)
        try PEFTAdapter.save(own, to: out + "/rs", baseModel: nil)
        let back = try PEFTAdapter.load(dir: out + "/rs", model: c.model)
        XCTAssertEqual(back.config, rc)
        Self.assertSameLoRA(back, own)
    }

    func testUnmappablePEFTAdaptersAreRefused() throws {
        let c = try Case()
        let cases: [(String, Any, String)] = [
            ("use_dora", true, "DoRA"), ("modules_to_save", ["lm_head"], "modules_to_save"), ("bias", "all", "bias"),
            ("rank_pattern", ["c_attn": 4, "h.0.attn.c_attn": 8], "several pattern keys"),
            ("init_lora_weights", "pissa", "modified base")
        ]
        let src =
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: URL(fileURLWithPath: c.dir + "/peft/adapter_config.json"))) as! [String: Any]
        for (key, value, message) in cases {
            let d = try Self.scratch()
            try FileManager.default.copyItem(
                atPath: c.dir + "/peft/adapter_model.safetensors", toPath: d + "/adapter_model.safetensors")
            var cfg = src
            cfg[key] = value
            try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: d + "/adapter_config.json"))
            XCTAssertThrowsError(try PEFTAdapter.load(dir: d, model: c.model), key) { e in
                XCTAssertTrue("\(e)".contains(message), "\(key): \(e)")
            }
        }
    }

    func testTransformersConfigOfAnotherArchitectureIsRefused() throws {
        let c = try Case()
        let d = try Self.scratch()
        try FileManager.default.copyItem(atPath: c.base + "/model.safetensors", toPath: d + "/model.safetensors")
        var cfg =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: c.base + "/config.json")))
            as! [String: Any]
        cfg["activation_function"] = "relu"
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: d + "/config.json"))
        XCTAssertThrowsError(try BaseFiles.open(.file(d))) {
            XCTAssertTrue("\($0)".contains("activation_function relu"), "\($0)")
        }
    }

    /// transformers' BF16 and F16 checkpoints of the base load as the fp32 file rounded the same
    /// way (round to nearest even), bit for bit, in either precision lora-dist computes in.
    func testBF16AndF16CheckpointsLoadAsTheFP32FileRoundedTheSameWay() throws {
        let c = try Case()
        let cases: [(String, (Float) -> Float)] = [
            ("base-bf16", { BF16.widen(BF16.round($0)) }), ("base-f16", { Float(Float16($0)) })
        ]
        for (dir, round) in cases {
            let file = try SafeTensorsFile(path: c.dir + "/" + dir + "/model.safetensors")
            XCTAssertEqual(file.infos["transformer.h.0.attn.c_attn.weight"]?.dtype, dir == "base-bf16" ? .BF16 : .F16)
            for precision in Precision.allCases {
                let fromFile = try Self.pass(c, tp: 1, base: c.dir + "/" + dir, lora: nil, precision: precision)[0]
                let rounded = try Self.pass(c, tp: 1, lora: nil, precision: precision, round: round)[0]
                let plain = try Self.pass(c, tp: 1, lora: nil, precision: precision)[0]
                XCTAssertEqual(
                    fromFile.logits.map(\.bitPattern), rounded.logits.map(\.bitPattern), "\(dir) at \(precision)")
                XCTAssertNotEqual(
                    fromFile.logits, plain.logits, "\(dir) at \(precision): rounding the base must change something")
            }
        }
    }
}

/// A weight source whose values are rounded as a half-precision checkpoint holds them.
struct RoundedSource: WeightSource {
    let inner: WeightSource
    let round: (Float) -> Float
    func shape(of name: String) throws -> [Int] { try inner.shape(of: name) }
    func readBlock(_ name: String, rows: Range<Int>, cols: Range<Int>, into dst: UnsafeMutablePointer<Float>) throws {
        try inner.readBlock(name, rows: rows, cols: cols, into: dst)
        for i in 0..<(rows.count * cols.count) { dst[i] = round(dst[i]) }
    }
}
