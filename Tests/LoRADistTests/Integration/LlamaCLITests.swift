import Foundation
import XCTest

@testable import LoRADist

/// The command line on the Llama-family checkpoints reference/make_llama_fixture.py writes (Llama
/// with 2 key/value heads and an untied head; Qwen2 with 1 key/value head, q/k/v biases and a tied
/// head), with their own tokenizers and a small completion data set: training under real mpirun at
/// TP 2 and 4 (key/value heads split and shared) learns, keeps the replicas bit-identical and
/// gives the adapter one process gives; resume is bit-identical; merge writes a directory whose
/// logits in transformers equal ours with the adapter unmerged; generation with the KV cache equals
/// decoding without it; bad checkpoints and options end every rank with their message. Without
/// Python and its reference packages these tests fail, never skip.
final class LlamaCLITests: XCTestCase {
    static let fixture: Result<String, Error> = Result {
        let dir = makeTempDir("llama-cli")
        _ = try PythonReference.check("make_llama_fixture.py", [dir])
        // The built-in task's varied examples (those under --seq 96 with the fixture tokenizers'
        // small vocabularies): repeated identical examples can cancel gradient entries to rounding
        // level, which Adam's first steps turn into updates of either sign in any summation order.
        try BuiltinTask.writeFiles(dir: dir + "/data", train: 300, valid: 8, test: 8, pretrainBytes: 1000, seed: 42)
        return dir
    }

    override class func tearDown() {
        if case .success(let dir) = fixture { try? FileManager.default.removeItem(atPath: dir) }
        super.tearDown()
    }

    static func base(_ variant: String) throws -> String { try fixture.get() + "/\(variant)/base" }
    static func data() throws -> String { try fixture.get() + "/data" }

    /// Six steps of four 96-token sequences: seconds per run.
    static let small = [
        "--steps", "6", "--batch", "4", "--seq", "96", "--eval-examples", "2", "--log-every", "1", "--lr", "1e-2",
        "--warmup", "1"
    ]

    static func train(_ variant: String) throws -> [String] {
        ["train", "--base", try base(variant), "--data", try data()] + small
    }

    func summary(_ out: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/summary.json")))
            as! [String: Any]
    }

    func losses(_ out: String) throws -> [Double] {
        try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map {
            ((try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any])["loss"] as! NSNumber).doubleValue
        }
    }

    /// Each tensor of two adapter files agrees within `tolerance` of its largest entry.
    func checkAdaptersClose(_ a: String, _ b: String, tolerance: Float, _ label: String) throws {
        let fa = try SafeTensorsFile(path: a)
        let fb = try SafeTensorsFile(path: b)
        XCTAssertEqual(Set(fa.infos.keys), Set(fb.infos.keys), label)
        XCTAssertFalse(fa.infos.isEmpty, label)
        for name in fa.infos.keys.sorted() {
            let x = try fa.floats(name)
            let y = try fb.floats(name)
            XCTAssertEqual(x.count, y.count, "\(label) \(name)")
            let scale = max(x.map(abs).max() ?? 0, 1e-6)
            let worst = zip(x, y).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThan(
                worst / scale, tolerance, "\(label) \(name): max difference \(worst) vs largest entry \(scale)")
        }
    }

    func testTrainingUnderMpirunLearnsWithIdenticalReplicasAndTheAdapterOfOneProcess() throws {
        for variant in ["llama", "qwen2"] {
            let one = makeTempDir("llama-cli-tp1")
            let r1 = try Launcher.lora(try Self.train(variant) + ["--out", one], timeout: 300)
            XCTAssertEqual(r1.status, 0, r1.output)
            XCTAssertEqual((try summary(one))["tp"] as? Int, 1)
            // TP 2 splits Llama's 2 key/value heads and shares Qwen2's one; TP 4 shares both; 2 × 2 is data parallel
            // too.
            for (n, tp) in [(2, 2), (4, 4), (4, 2)] {
                let out = makeTempDir("llama-cli-mpi")
                let r = try Launcher.mpirun(
                    n, try Self.train(variant) + ["--tp", String(tp), "--out", out], timeout: 300)
                let label = "\(variant) -n \(n) --tp \(tp)"
                XCTAssertEqual(r.status, 0, "\(label)\n\(r.output)")
                XCTAssertTrue(r.output.contains("grad-sync"), "\(label): the collectives table is printed\n\(r.output)")
                let s = try summary(out)
                let l = try losses(out)
                XCTAssertEqual(s["world"] as? Int, n, label)
                XCTAssertEqual(s["tp"] as? Int, tp, label)
                XCTAssertEqual(l.count, 6, label)
                XCTAssertLessThan(l.last!, l.first! - 0.5, "\(label): the loss falls \(l)")
                XCTAssertLessThan(s["eval_loss_after"] as! Double, s["eval_loss_before"] as! Double, label)
                let fps = s["replica_fingerprints"] as! [String]
                XCTAssertEqual(fps.count, n, label)
                XCTAssertEqual(Set(fps).count, 1, "\(label): A and B bit-identical on every rank: \(fps)")
                XCTAssertEqual(
                    s["grad_sync_bytes_per_step"] as? Int, 4 * (s["trainable_params"] as! Int),
                    "\(label): one AllReduce of every A/B gradient")
                // Every projection of the family by default: 7 per layer, k and v to the key/value heads.
                XCTAssertTrue(r.output.contains("lora on base (2 layers"), r.output)
                try checkAdaptersClose(
                    one + "/adapter.safetensors", out + "/adapter.safetensors", tolerance: 2e-3, label)
            }
        }
    }

    func testDefaultTargetsAreTheFamilysAndPEFTNamesAreAccepted() throws {
        let a = makeTempDir("llama-cli-targets")
        let b = makeTempDir("llama-cli-targets")
        let quick = try Self.train("llama").map { $0 == "6" ? "1" : $0 } + ["--eval-examples", "0"]
        let r1 = try Launcher.lora(quick + ["--out", a], timeout: 120)
        XCTAssertEqual(r1.status, 0, r1.output)
        let r2 = try Launcher.lora(
            quick + ["--lora-targets", "q_proj,k,v_proj,o,gate_proj,up,down_proj", "--out", b], timeout: 120)
        XCTAssertEqual(r2.status, 0, r2.output)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: a + "/adapter.safetensors")),
            try Data(contentsOf: URL(fileURLWithPath: b + "/adapter.safetensors")), "PEFT's names are the same targets")
        // r 8 on every projection: q, o (64 → 64), k, v (64 → 2 heads · 16), gate, up (64 → 160), down (160 → 64).
        let perLayer = 8 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 160) * 3)
        XCTAssertEqual((try summary(a))["trainable_params"] as? Int, 2 * perLayer)
    }

    /// Llama 3's tokenizer starts each example and prompt with <|begin_of_text|> (its
    /// post-processor's, as transformers' tokenizer(text) does) and ends examples with
    /// tokenizer_config.json's eos_token; Qwen2's adds nothing before.
    func testExamplesAndPromptsStartWithTheModelsLeadingTokens() throws {
        for (variant, style) in [("llama", "llama3"), ("qwen2", "qwen2")] {
            let e =
                try JSONSerialization.jsonObject(
                    with: Data(
                        contentsOf: URL(fileURLWithPath: try Self.fixture.get() + "/tokenizers/\(style)/expected.json"))
                ) as! [String: Any]
            let tok = try TokenizerChoice.forBase(.file(try Self.base(variant)), override: nil)
            XCTAssertEqual(tok.eot, Int32((e["eot"] as! NSNumber).intValue), variant)
            let bos = (e["bos"] as? NSNumber).map { Int32($0.intValue) }
            XCTAssertEqual(tok.leading, style == "llama3" ? [bos!] : [], variant)
            let ex = Example(context: "name=Cotto|food=Thai\n", completion: "Cotto serves Thai food.")
            let d = try TokenDataset(examples: [ex], tokenizer: tok, seq: 96, source: "test")
            let t = d.examples[0].tokens
            XCTAssertEqual(t, tok.leading + tok.encode(ex.context) + tok.encode(ex.completion) + [tok.eot], variant)
            XCTAssertEqual(
                d.examples[0].lossFrom, tok.leading.count + tok.encode(ex.context).count,
                "\(variant): the loss starts at the completion")
            XCTAssertEqual(
                tok.encodeStart(ex.context), Array(t.prefix(d.examples[0].lossFrom)),
                "\(variant): a prompt is encoded as in training")
        }
    }

    /// --model llama-tiny trains from a random initialisation on the byte tokenizer, and a fully
    /// fine-tuned Llama-family model saved in OUT/model/ loads again as --base (the base's config.json
    /// beside it, HF names) holding the trained weights, and decodes under mpirun.
    func testRandomShapeTrainsAndASavedModelLoadsAgain() throws {
        let tiny = makeTempDir("llama-cli-tiny")
        let r = try Launcher.lora(
            [
                "train", "--model", "llama-tiny", "--steps", "2", "--batch", "2", "--seq", "64", "--eval-examples", "0",
                "--valid-limit", "4", "--local-ranks", "2", "--out", tiny
            ], timeout: 300)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("(4 layers, d 128, 4 heads)"), r.output)
        let full = makeTempDir("llama-cli-full")
        let f = try Launcher.lora(
            try Self.train("qwen2").map { $0 == "6" ? "2" : $0 } + [
                "--method", "full", "--save-model", "--eval-examples", "0", "--out", full
            ], timeout: 300)
        XCTAssertEqual(f.status, 0, f.output)
        let saved = full + "/model"
        XCTAssertTrue(f.output.contains("saved \(saved)/ (config.json + model.safetensors"), f.output)
        let cfg = try BaseFiles.open(.file(saved)).config
        let (want, _) = try LlamaFiles.open(try Self.base("qwen2"))
        XCTAssertEqual(cfg, want, "the shape from the file's metadata")
        XCTAssertNotNil(
            try SafeTensorsFile(path: saved + "/model.safetensors").infos["model.layers.1.mlp.down_proj.weight"])
        // Trained: the saved weights are not the base's.
        let before = try SafeTensorsDirectorySource(dir: try Self.base("qwen2"))
        let after = try SafeTensorsFile(path: saved + "/model.safetensors")
        var a = [Float](repeating: 0, count: 64 * 160)
        try before.readBlock("model.layers.1.mlp.down_proj.weight", rows: 0..<64, cols: 0..<160, into: &a)
        XCTAssertGreaterThan(
            zip(a, try after.floats("model.layers.1.mlp.down_proj.weight")).map { abs($0 - $1) }.max()!, 1e-4)
        let prompt = [
            "--prompt", "name=Zizzi|food=Indian\\n", "--max-tokens", "6", "--tokenizer", try Self.base("qwen2")
        ]
        let g = try Launcher.mpirun(2, ["generate", "--base", saved] + prompt, timeout: 120)
        XCTAssertEqual(g.status, 0, g.output)
        XCTAssertFalse(g.output.isEmpty)
    }

    func testResumeUnderMpirunIsBitIdentical() throws {
        let a = makeTempDir("llama-cli-resume")
        let b = makeTempDir("llama-cli-resume")
        let run = try Self.train("llama") + ["--save-every", "2"]
        let whole = try Launcher.mpirun(2, run + ["--out", a], timeout: 300)
        XCTAssertEqual(whole.status, 0, whole.output)
        let killed = try Launcher.mpirun(2, run + ["--out", b, "--inject-exit-at", "3:1"], timeout: 300)
        XCTAssertFalse(killed.timedOut, killed.output)
        XCTAssertEqual(killed.status, 3, "rank 1's exit status\n\(killed.output)")
        let resumed = try Launcher.mpirun(2, run + ["--out", b, "--resume", "latest"], timeout: 300)
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertTrue(resumed.output.contains("resumed from"), resumed.output)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: a + "/adapter.safetensors")),
            try Data(contentsOf: URL(fileURLWithPath: b + "/adapter.safetensors")), "the adapter bit for bit")
        XCTAssertEqual(try losses(a), try losses(b))
    }

    /// Our logits of `ids` (rows of `T`) with `base` and `adapter` unmerged, at TP 1: [rows · T, V].
    static func logits(base: String, adapter: String?, ids: [Int32], T: Int) throws -> (logits: [Float], vocab: Int) {
        try InProcessCommunicator.run(ranks: 1) { comm in
            let m = try GPTModel.forDecoding(.file(base), adapter: adapter, tp: comm, precision: .fp32)
            let V = m.config.vocabSize
            let Vp = m.layout.localVocab
            let acts = try m.activations(batch: 1, seq: T, training: false)
            var out: [Float] = []
            for row in stride(from: 0, to: ids.count, by: T) {
                let r = Array(ids[row..<(row + T)])
                var pass = try r.withUnsafeBufferPointer {
                    try m.forward(tokens: $0.baseAddress!, batch: 1, len: T, into: acts)
                }
                // The head runs with the loss (the targets do not change the logits).
                let zeros = [Int32](repeating: 0, count: T)
                let mean = [Float](repeating: 1 / Float(T), count: T)
                _ = try m.lossForward(&pass, targets: zeros, weights: mean, backward: false)
                for i in 0..<T { out += UnsafeBufferPointer(start: acts.logits + i * Vp, count: V) }
            }
            return (out, V)
        }[0]
    }

    func testMergedDirectoryLoadsInTransformersWithTheUnmergedLogits() throws {
        for variant in ["llama", "qwen2", "qwen2-bf16"] {
            let base = try Self.base(variant)
            let run = makeTempDir("llama-cli-merge")
            let merged = run + "/merged"
            let tr = try Launcher.lora(try Self.train(variant) + ["--eval-examples", "0", "--out", run], timeout: 300)
            XCTAssertEqual(tr.status, 0, tr.output)
            let adapter = run + "/adapter.safetensors"
            let mr = try Launcher.lora(["merge", "--base", base, "--adapter", adapter, "--out", merged], timeout: 120)
            XCTAssertEqual(mr.status, 0, mr.output)
            XCTAssertEqual(
                try Data(contentsOf: URL(fileURLWithPath: merged + "/config.json")),
                try Data(contentsOf: URL(fileURLWithPath: base + "/config.json")),
                "\(variant): config.json as the source had it")
            for f in ["tokenizer.json", "tokenizer_config.json"] {
                XCTAssertTrue(FileManager.default.fileExists(atPath: merged + "/" + f), "\(variant): \(f) copied")
            }
            let T = 16
            let tok = try TokenizerChoice.forBase(.file(base), override: nil)
            var ids = tok.encodeStart("name=Cotto|food=Thai\nCotto serves Thai food. And more text.")
            ids = Array(ids.prefix(T)) + (0..<T).map { Int32(($0 * 37 + 11) % tok.vocabSize) }
            XCTAssertGreaterThanOrEqual(ids.count, 2 * T - 1)
            ids = Array((ids + ids).prefix(2 * T))
            let io = run + "/ids.safetensors"
            try SafeTensorsFile.write(
                path: io, tensors: [(name: "input_ids", shape: [2, T], data: ids.map(Float.init))])
            guard try PythonReference.run("llama_merged_logits.py", [merged, io]) != nil else { continue }
            let f = try SafeTensorsFile(path: io)
            let want = try f.floats("logits")
            XCTAssertEqual(try f.int64s("eos"), [Int64(tok.eot)], "\(variant): transformers' end-of-text is ours")
            let (got, V) = try Self.logits(base: base, adapter: adapter, ids: ids, T: T)
            XCTAssertEqual(got.count, want.count, variant)
            XCTAssertEqual(want.count, 2 * T * V)
            let scale = want.map(abs).max()!
            let worst = zip(got, want).map { abs($0 - $1) }.max()!
            XCTAssertGreaterThan(scale, 0)
            XCTAssertLessThan(
                worst / scale, 1e-5,
                "\(variant): merged logits (transformers) vs ours unmerged: max error \(worst), scale \(scale)")
            // The adapter moved the model: the merged logits are not the base's.
            let (plain, _) = try Self.logits(base: base, adapter: nil, ids: ids, T: T)
            XCTAssertGreaterThan(
                zip(plain, want).map { abs($0 - $1) }.max()!, 1e-3 * scale, "\(variant): the LoRA changes the logits")
            // lora-dist reads the merged directory back and decodes what the unmerged adapter decodes.
            let prompt = ["--prompt", "name=Zizzi|food=Indian\\n", "--max-tokens", "8"]
            let g1 = try Launcher.lora(["generate", "--base", base, "--adapter", adapter] + prompt, timeout: 120)
            let g2 = try Launcher.mpirun(2, ["generate", "--base", merged] + prompt, timeout: 120)
            XCTAssertEqual(g1.status, 0, g1.output)
            XCTAssertEqual(g2.status, 0, g2.output)
            XCTAssertEqual(g1.output, g2.output, "\(variant): merged at TP 2 vs unmerged at TP 1")
            // evaluate runs on the sharded model too.
            let ev = run + "/eval"
            let e = try Launcher.mpirun(
                2,
                [
                    "evaluate", "--base", base, "--adapter", adapter, "--data", try Self.data(), "--split", "valid",
                    "--limit", "2", "--max-tokens", "8", "--out", ev
                ], timeout: 120)
            XCTAssertEqual(e.status, 0, e.output)
            XCTAssertTrue(FileManager.default.fileExists(atPath: ev + "/scores.json"), e.output)
        }
    }

    func testKVCacheDecodingEqualsDecodingWithoutAtEveryTPDegree() throws {
        for variant in ["llama", "qwen2"] {
            let (cfg, source) = try LlamaFiles.open(try Self.base(variant))
            var byDegree: [[Int32]] = []
            for tp in [1, 2, 4] {
                let outs = try InProcessCommunicator.run(ranks: tp) { comm -> [Int32] in
                    let lc = LoRAConfig(rank: 4, alpha: 8, targets: LoRATarget.available(in: .llama))
                    let m = try GPTModel(config: cfg, tp: comm, trainable: .lora(lc), training: false)
                    try m.base.load(from: source)
                    let l = m.lora!
                    l.initialize(seed: 7)
                    // B non-zero (it starts at zero), the same on every rank: the adapter acts on every projection.
                    for s in l.slots {
                        for i in 0..<(l.config.rank * s.outDim) {
                            l.ptr(s.b)[i] = 0.05 * sin(Float(i * 7 + s.layer * 13 + s.b % 101))
                        }
                    }
                    let prompt: [Int32] = [5, 17, 300, 42, 9, 120]
                    let g = Generator(m)
                    let cached = try g.greedy(prompt: prompt, maxNew: 20, stop: nil, useCache: true)
                    let plain = try g.greedy(prompt: prompt, maxNew: 20, stop: nil, useCache: false)
                    XCTAssertEqual(cached, plain, "\(variant) tp \(tp) rank \(comm.rank): with the KV cache vs without")
                    XCTAssertEqual(cached.count, 20)
                    return cached
                }
                XCTAssertEqual(
                    Set(outs.map { $0.map(String.init).joined(separator: ",") }).count, 1,
                    "\(variant) tp \(tp): every rank decodes the same")
                byDegree.append(outs[0])
            }
            XCTAssertEqual(byDegree[0], byDegree[1], "\(variant): TP 2 decodes as TP 1")
            XCTAssertEqual(byDegree[0], byDegree[2], "\(variant): TP 4 decodes as TP 1")
        }
    }

    /// A copy of fixture variant `variant`'s base directory to break.
    func copyBase(_ variant: String) throws -> String {
        let d = makeTempDir("llama-cli-bad") + "/base"
        try FileManager.default.copyItem(atPath: try Self.base(variant), toPath: d)
        return d
    }

    func editConfig(_ dir: String, _ edit: (inout [String: Any]) -> Void) throws {
        let p = dir + "/config.json"
        var o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p))) as! [String: Any]
        edit(&o)
        try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: p))
    }

    /// Each rank says the message and exits with status 1 (none is killed by another's abort).
    func testBadInputEndsEveryRankWithItsMessage() throws {
        let yarn = try copyBase("llama")
        try editConfig(yarn) { $0["rope_parameters"] = ["rope_type": "yarn", "factor": 4.0, "rope_theta": 500_000.0] }
        let gemma = try copyBase("llama")
        try editConfig(gemma) { $0["model_type"] = "gemma" }
        let sharded = try copyBase("llama-rope3")
        let shard = try FileManager.default.contentsOfDirectory(atPath: sharded).filter { $0.hasPrefix("model-0000") }
            .sorted()
        XCTAssertGreaterThan(shard.count, 1, "the llama-rope3 fixture is sharded")
        try FileManager.default.removeItem(atPath: sharded + "/" + shard[0])
        let data = try Self.data()
        let out = makeTempDir("llama-cli-bad-out")
        func train(_ base: String) -> [String] {
            ["train", "--base", base, "--data", data, "--steps", "1", "--seq", "96", "--out", out]
        }
        let cases: [(n: Int, args: [String], message: String)] = [
            (2, train(yarn), "rope type yarn"),
            (2, train(gemma), "model_type gemma"),
            (2, train(sharded), "\(shard[0]): no such file"),
            (4, train(try Self.base("llama")) + ["--tp", "3"], "not divisible by --tp 3"),
            (
                2, train(try Self.base("llama")) + ["--lora-targets", "q,mlp_in"],
                "mlp_in is not a projection of this llama-family model; it has q, k, v, o, gate, up, down"
            ),
            // Llama's 2 key/value heads shared by 2 ranks each at TP 4.
            (
                4, train(try Self.base("llama")) + ["--method", "full"],
                "full fine-tuning at --tp 4 is not supported for this model"
            )
        ]
        for c in cases {
            let r = try Launcher.mpirun(c.n, c.args, timeout: 120)
            XCTAssertFalse(r.timedOut, "\(c.message): the job ended by itself\n\(r.output)")
            XCTAssertNotEqual(r.status, 0, "\(c.message)\n\(r.output)")
            XCTAssertFalse(r.output.contains("MPI_ABORT"), "\(c.message): every rank stopped by itself\n\(r.output)")
            for rank in 0..<c.n {
                XCTAssertTrue(
                    r.output.contains("rank \(rank): ")
                        && r.output.split(separator: "\n").contains {
                            $0.contains("rank \(rank): ") && $0.contains(c.message)
                        },
                    "wanted rank \(rank)'s \"\(c.message)\" in\n\(r.output)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/summary.json"), c.message)
        }
    }
}
