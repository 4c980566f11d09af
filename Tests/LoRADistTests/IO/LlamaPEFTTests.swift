import Foundation
import XCTest

@testable import LoRADist

/// PEFT adapters of the Llama family out and back in, and per-module ranks and alphas in
/// lora-dist's own files: an export (random non-zero A and B, with rank and alpha patterns) loads
/// in PEFT on the HF checkpoint with the per-module r and scaling lora-dist uses and PEFT's logits
/// and loss equal ours (reference/llama_peft_logits.py; tolerances as LlamaParityTests'); export →
/// PEFTAdapter.load is bit-identical, as is PEFT's own lora-all through lora-dist and back.
final class LlamaPEFTTests: XCTestCase {
    /// All seven targets, ranks 4/6/2 and alphas 16/8/3 by module name as PEFT matches them.
    static func patterned(rsLoRA: Bool) -> LoRAConfig {
        LoRAConfig(
            rank: 4, alpha: 16, targets: LoRATarget.available(in: .llama), rsLoRA: rsLoRA,
            rankPattern: ["up_proj": 6, "layers.1.self_attn.v_proj": 2],
            alphaPattern: ["q_proj": 8, "layers.0.mlp.down_proj": 3])
    }

    /// `config`'s LoRA on `model` with every A and B element drawn N(0, 0.1²) (B = 0 would test nothing).
    static func filled(_ config: LoRAConfig, _ model: GPTConfig, seed: UInt64) -> LoRAWeights {
        let l = LoRAWeights(config: config, model: model)
        var rng = RNG(seed: seed)
        for i in 0..<l.count { l.arena.base[i] = 0.1 * rng.normal() }
        return l
    }

    static func json(_ path: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    }

    static func bits(_ l: LoRAWeights) -> [UInt32] { (0..<l.count).map { l.arena.base[$0].bitPattern } }

    func testExportedAdapterLoadsInPEFTWithOurLogits() throws {
        for (v, rs) in [("llama", false), ("qwen2", true)] {
            let dir = try LlamaParityTests.fixture.get() + "/" + v
            let (cfg, _) = try LlamaFiles.open(dir + "/base")
            let l = Self.filled(Self.patterned(rsLoRA: rs), cfg, seed: 7)
            let out = makeTempDir("llama-peft-export")
            defer { try? FileManager.default.removeItem(atPath: out) }
            try PEFTAdapter.save(l, to: out + "/peft", baseModel: dir + "/base")
            let c = try Self.json(out + "/peft/adapter_config.json")
            XCTAssertEqual(c["base_model_name_or_path"] as? String, dir + "/base")
            XCTAssertEqual(
                c["target_modules"] as? [String],
                ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"])
            XCTAssertEqual(
                (c["rank_pattern"] as? [String: NSNumber])?.mapValues(\.intValue),
                ["up_proj": 6, "layers.1.self_attn.v_proj": 2])

            _ = try PythonReference.check(
                "llama_peft_logits.py",
                [dir + "/base", out + "/peft", dir + "/expected.safetensors", out + "/theirs.safetensors"])
            let theirs = try SafeTensorsFile(path: out + "/theirs.safetensors")
            // PEFT's r and scaling per module (layer-major, targets in canonical order) are each slot's.
            let ranks = try theirs.floats("ranks")
            let scalings = try theirs.floats("scalings")
            XCTAssertEqual(ranks, l.slots.map { Float($0.rank) }, v)
            for (s, want) in zip(l.slots, scalings) {
                XCTAssertEqual(s.scale, want, accuracy: 1e-6 * want, "\(v) layer \(s.layer) \(s.target) scale")
            }
            XCTAssertEqual(Set(l.slots.map(\.rank)), [2, 4, 6], "\(v): the patterns give three ranks")

            // Ours, from the exported directory (bit-identical to `l`, testRoundTripIsBitIdentical), at TP 1 and 2.
            let base = try LlamaParityTests.expected(v).floats("logits")
            XCTAssertGreaterThan(
                zip(try theirs.floats("logits"), base).map { abs($0 - $1) }.max()!, 1e-2,
                "\(v): the adapter changes the logits")
            for tp in [1, 2] {
                try LlamaParityTests.checkLossAndLogits(
                    try LlamaParityTests.run(v, tp: tp, lora: out + "/peft"), theirs, "", "\(v) export TP \(tp)")
            }
        }
    }

    func testRoundTripIsBitIdentical() throws {
        let dir = try LlamaParityTests.fixture.get() + "/llama"
        let (cfg, _) = try LlamaFiles.open(dir + "/base")
        let out = makeTempDir("llama-peft-roundtrip")
        defer { try? FileManager.default.removeItem(atPath: out) }
        for (k, lc) in [
            Self.patterned(rsLoRA: false), Self.patterned(rsLoRA: true),
            LoRAConfig(rank: 3, alpha: 5, targets: [.k, .down], dropout: 0.1, initA: .kaiming)
        ].enumerated() {
            let l = Self.filled(lc, cfg, seed: UInt64(k + 1))
            try PEFTAdapter.save(l, to: out + "/\(k)", baseModel: nil)
            let back = try PEFTAdapter.load(dir: out + "/\(k)", model: cfg)
            XCTAssertEqual(back.config, lc, "case \(k)")
            let m = LoRAWeights(config: back.config, model: cfg)
            try PEFTAdapter.apply(back, to: m)
            XCTAssertEqual(Self.bits(m), Self.bits(l), "case \(k)")
        }

        // PEFT's own lora-all through lora-dist and back: the same tensors and patterns.
        let peft = try PEFTAdapter.load(dir: dir + "/lora-all", model: cfg)
        let l = LoRAWeights(config: peft.config, model: cfg)
        try PEFTAdapter.apply(peft, to: l)
        try PEFTAdapter.save(l, to: out + "/all", baseModel: nil)
        let a = try SafeTensorsFile(path: dir + "/lora-all/adapter_model.safetensors")
        let b = try SafeTensorsFile(path: out + "/all/adapter_model.safetensors")
        XCTAssertEqual(Set(a.names), Set(b.names))
        XCTAssertEqual(a.names.count, 2 * 7 * 2)
        for n in a.names {
            XCTAssertEqual(try a.info(n).shape, try b.info(n).shape, n)
            XCTAssertEqual(try a.floats(n).map(\.bitPattern), try b.floats(n).map(\.bitPattern), n)
        }
        let theirs = try Self.json(dir + "/lora-all/adapter_config.json")
        let ours = try Self.json(out + "/all/adapter_config.json")
        for key in ["r", "lora_alpha", "use_rslora"] { XCTAssertEqual("\(theirs[key]!)", "\(ours[key]!)", key) }
        for key in ["rank_pattern", "alpha_pattern"] {
            XCTAssertEqual(
                (theirs[key] as! [String: NSNumber]).mapValues(\.doubleValue),
                (ours[key] as! [String: NSNumber]).mapValues(\.doubleValue), key)
        }
        XCTAssertEqual(Set(theirs["target_modules"] as! [String]), Set(ours["target_modules"] as! [String]))
    }

    /// target_modules as a regular expression (matched against the whole module name, as PEFT's
    /// re.fullmatch does) and pattern keys as regular expressions read as the list and names do.
    func testRegularExpressionsSelectAsPEFTsDo() throws {
        let dir = try LlamaParityTests.fixture.get() + "/llama"
        let (cfg, _) = try LlamaFiles.open(dir + "/base")
        let want = try PEFTAdapter.load(dir: dir + "/lora-all", model: cfg)
        var c = try Self.json(dir + "/lora-all/adapter_config.json")
        c["target_modules"] = ".*\\.(q|k|v|o|gate|up|down)_proj"
        c["rank_pattern"] = ["g[a-z]+_proj": 8, "layers\\.1\\.self_attn\\.o_proj": 2]
        let d = makeTempDir("llama-peft-regex")
        defer { try? FileManager.default.removeItem(atPath: d) }
        try FileManager.default.copyItem(
            atPath: dir + "/lora-all/adapter_model.safetensors", toPath: d + "/adapter_model.safetensors")
        try JSONSerialization.data(withJSONObject: c).write(to: URL(fileURLWithPath: d + "/adapter_config.json"))
        let got = try PEFTAdapter.load(dir: d, model: cfg)
        XCTAssertEqual(got.config.targets, want.config.targets)
        for l in 0..<cfg.nLayer {
            for t in want.config.targets {
                let (a, b) = (
                    got.config.slot(layer: l, target: t, family: .llama),
                    want.config.slot(layer: l, target: t, family: .llama)
                )
                XCTAssertEqual(a.rank, b.rank, "\(l) \(t)")
                XCTAssertEqual(a.scale, b.scale, "\(l) \(t)")
            }
        }
        // A pattern must match the whole name: "proj" alone matches no module.
        XCTAssertEqual("model.layers.0.mlp.gate_proj".wholeMatch(regex: "(.*\\.)?(proj)"), false)
        XCTAssertEqual("model.layers.0.mlp.gate_proj".wholeMatch(regex: "(.*\\.)?(gate_proj)"), true)
    }

    /// What the Llama reader cannot compute exactly is refused, naming the reason.
    func testUnmappableLlamaAdaptersAreRefused() throws {
        let dir = try LlamaParityTests.fixture.get() + "/llama"
        let (cfg, _) = try LlamaFiles.open(dir + "/base")
        let src = try Self.json(dir + "/lora-all/adapter_config.json")
        let cases: [(String, Any, String)] = [
            ("use_dora", true, "DoRA"), ("modules_to_save", ["lm_head"], "modules_to_save"),
            ("bias", "lora_only", "bias"),
            ("rank_pattern", ["gate_proj": 8, "layers.0.mlp.gate_proj": 4], "several pattern keys"),
            ("rank_pattern", ["gate_proj": 6], "has rank 8 but adapter_config.json gives it 6"),
            ("target_modules", ["q_proj", "v_proj"], "does not select self_attn.k_proj"),
            ("init_lora_weights", "pissa", "modified base"),
            ("target_modules", ".*(q_proj", "is not a regular expression"),
            ("rank_pattern", ["gate_(proj": 8], "is not a regular expression")
        ]
        for (key, value, message) in cases {
            let d = makeTempDir("llama-peft-refuse")
            defer { try? FileManager.default.removeItem(atPath: d) }
            try FileManager.default.copyItem(
                atPath: dir + "/lora-all/adapter_model.safetensors", toPath: d + "/adapter_model.safetensors")
            var c = src
            c[key] = value
            try JSONSerialization.data(withJSONObject: c).write(to: URL(fileURLWithPath: d + "/adapter_config.json"))
            XCTAssertThrowsError(try PEFTAdapter.load(dir: d, model: cfg), key) {
                XCTAssertTrue("\($0)".contains(message), "\(key): \($0)")
            }
        }

        // A target in one layer only (layers_to_transform), and an adapter of another shape (k/v out =
        // n_kv_head·head_dim).
        let f = try SafeTensorsFile(path: dir + "/lora-all/adapter_model.safetensors")
        func write(_ names: [String], reshape: String? = nil) throws -> String {
            let d = makeTempDir("llama-peft-refuse")
            try JSONSerialization.data(withJSONObject: src).write(to: URL(fileURLWithPath: d + "/adapter_config.json"))
            let tensors = try names.map { n -> (name: String, shape: [Int], data: [Float]) in
                let s = try f.info(n).shape
                let v = try f.floats(n)
                return n == reshape ? (n, [s[0] / 2, s[1] * 2], v) : (n, s, v)
            }
            try SafeTensorsFile.write(
                path: d + "/adapter_model.safetensors", tensors: tensors, metadata: ["format": "pt"])
            return d
        }
        let layer1 = try write(f.names.filter { !$0.contains("layers.1.mlp.up_proj") })
        XCTAssertThrowsError(try PEFTAdapter.load(dir: layer1, model: cfg)) {
            XCTAssertTrue("\($0)".contains("in layers [0] only"), "\($0)")
        }
        let kB = PEFTAdapter.llamaKey(0, .k) + ".lora_B.weight"
        XCTAssertEqual(try f.info(kB).shape, [cfg.nKVHead * cfg.headDim, 4])
        let wrong = try write(f.names, reshape: kB)
        XCTAssertThrowsError(try PEFTAdapter.load(dir: wrong, model: cfg)) {
            XCTAssertTrue("\($0)".contains("do not fit this base model"), "\($0)")
        }
        for d in [layer1, wrong] { try? FileManager.default.removeItem(atPath: d) }
    }

    /// Our own adapter file keeps the patterns (and a file written before they existed still reads):
    /// per-slot shapes, the config back equal, the weights back bit for bit, the parameter count the
    /// sum of r·(in + out) over the slots.
    func testAdapterFileRoundTripsPatterns() throws {
        let dir = try LlamaParityTests.fixture.get() + "/llama"
        let (cfg, _) = try LlamaFiles.open(dir + "/base")
        let lc = Self.patterned(rsLoRA: false)
        let l = Self.filled(lc, cfg, seed: 3)
        let id = BaseIdentity(config: cfg, fingerprint: "test", source: "llama")
        let out = makeTempDir("llama-adapter-file")
        defer { try? FileManager.default.removeItem(atPath: out) }
        try AdapterFile.save(l, base: id, to: out + "/a.safetensors")
        let (back, backID) = try AdapterFile.header(out + "/a.safetensors")
        XCTAssertEqual(back, lc)
        XCTAssertEqual(backID, id)
        let m = LoRAWeights(config: back, model: cfg)
        try AdapterFile.load(out + "/a.safetensors", into: m, expecting: id)
        XCTAssertEqual(Self.bits(m), Self.bits(l))
        let f = try SafeTensorsFile(path: out + "/a.safetensors")
        XCTAssertEqual(try f.info("lora.h.1.up.A").shape, [6, cfg.nEmbd])
        XCTAssertEqual(try f.info("lora.h.1.v.B").shape, [cfg.nKVHead * cfg.headDim, 2])
        XCTAssertEqual(try f.info("lora.h.0.v.B").shape, [cfg.nKVHead * cfg.headDim, 4])
        let bySlot = (0..<cfg.nLayer).reduce(0) { n, layer in
            n
                + lc.targets.reduce(0) { n, t in
                    let r = t == .up ? 6 : (layer == 1 && t == .v ? 2 : 4)
                    return n + r * (t.inDim(cfg) + t.outDim(cfg))
                }
        }
        XCTAssertEqual(lc.parameterCount(for: cfg), bySlot)
        XCTAssertEqual(l.count, bySlot)
        XCTAssertNotEqual(bySlot, LoRAConfig(rank: 4, alpha: 16, targets: lc.targets).parameterCount(for: cfg))

        // A config without patterns encodes and prints as before they existed (file metadata, run fingerprint).
        let plain = LoRAConfig(rank: 4, alpha: 32, targets: [.q, .v])
        let old = #"{"alpha":32,"dropout":0,"initA":"gaussian","rank":4,"rsLoRA":false,"targets":["q","v"]}"#
        XCTAssertEqual(try JSONDecoder().decode(LoRAConfig.self, from: Data(old.utf8)), plain)
        XCTAssertEqual(try compactJSON(plain), old)
        XCTAssertEqual(
            "\(plain)",
            """
            LoRAConfig(rank: 4, alpha: 32.0, targets: [LoRADist.LoRATarget.q, LoRADist.LoRATarget.v], dropout: 0.0, \
            initA: LoRADist.LoRAInit.gaussian, rsLoRA: false)
            """
        )
        XCTAssertTrue("\(lc)".contains("rankPattern: [") && "\(lc)".contains("alphaPattern: ["), "\(lc)")
    }

    /// A checkpoint of a LoRA with patterns restores its arena bit for bit, and a run whose LoRA
    /// lacks the patterns (another arena size) is refused.
    func testCheckpointRoundTripsPatternedLoRA() throws {
        let (cfg, _) = try LlamaFiles.open(try LlamaParityTests.fixture.get() + "/llama/base")
        let lc = Self.patterned(rsLoRA: true)
        let l = Self.filled(lc, cfg, seed: 11)
        let out = makeTempDir("llama-lora-checkpoint")
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try InProcessCommunicator.run(ranks: 1) { comm in
            let grid = try ProcessGrid(world: comm, tp: 1)
            let opt = AdamW(count: l.count)
            for i in 0..<l.count {
                opt.m.base[i] = Float(i)
                opt.v.base[i] = 1
            }
            let state = CheckpointState(
                step: 5, loader: LoaderPosition(cursor: 3), fingerprint: "\(lc)", world: 1, tp: 1)
            try Checkpoint.save(
                out: out, state: state, params: l.arena.base, count: l.count, optimizer: opt, grid: grid,
                replicated: true, keep: 1)
            let m = LoRAWeights(config: lc, model: cfg)
            let back = AdamW(count: m.count)
            let got = try Checkpoint.load(
                Checkpoint.dir(out, step: 5), params: m.arena.base, count: m.count, optimizer: back, grid: grid,
                replicated: true, fingerprint: "\(lc)")
            XCTAssertEqual(got, state)
            XCTAssertEqual(Self.bits(m), Self.bits(l))
            XCTAssertEqual(Array(back.m.buffer), Array(opt.m.buffer))
            let plain = LoRAWeights(
                config: LoRAConfig(rank: 4, alpha: 16, targets: lc.targets, rsLoRA: true), model: cfg)
            XCTAssertNotEqual(plain.count, l.count)
            XCTAssertThrowsError(
                try Checkpoint.load(
                    Checkpoint.dir(out, step: 5), params: plain.arena.base, count: plain.count,
                    optimizer: AdamW(count: plain.count),
                    grid: grid, replicated: true, fingerprint: "\(plain.config)")
            ) {
                XCTAssertTrue("\($0)".contains("another configuration"), "\($0)")
            }
        }
    }
}
