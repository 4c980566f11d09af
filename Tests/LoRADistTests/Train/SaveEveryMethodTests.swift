import XCTest

@testable import LoRADist

/// Every method saves what it trained, at any TP degree: bottleneck adapters and BitFit's biases
/// in OUT/adapter.safetensors (gathered whole from the TP shards), full fine-tuning as the HF
/// directory OUT/model/. Loaded back (`GPTModel.forDecoding`, which generate and evaluate use),
/// each gives the trained model's own logits; TP 2 saves what TP 1 saves; merge writes BitFit's
/// biases into the base and refuses a bottleneck adapter, saying why.
final class SaveEveryMethodTests: XCTestCase {
    static let base = Launcher.root.appendingPathComponent("models/tiny-base.safetensors").path
    static let tokens: [Int32] = Array("name=Zizzi|food=Indian\nZizzi serves".utf8).map { Int32($0) }

    /// What one in-process run saved, and how far the reloaded model's logits are from the trained model's.
    struct Saved {
        var logitDiff: Float
        var logitScale: Float
        var tensors: [String: [Float]]
        /// The trained model's logits on this rank (its vocabulary columns), and the run directory.
        var trained: [Float] = []
        var out = ""
    }

    static func spec(_ method: Method, _ out: String) -> BaseSpec {
        method == .full ? .file(out + "/model") : .file(base)
    }
    static func file(_ method: Method, _ out: String) -> String? {
        method == .full ? nil : out + "/adapter.safetensors"
    }

    static func logits(_ m: GPTModel) throws -> [Float] {
        let n = tokens.count
        let acts = try m.activations(batch: 1, seq: n, training: false)
        var pass = try tokens.withUnsafeBufferPointer {
            try m.forward(tokens: $0.baseAddress!, batch: 1, len: n, into: acts)
        }
        _ = try m.lossForward(&pass, targets: tokens, weights: [Float](repeating: 0, count: n), backward: false)
        return Array(UnsafeBufferPointer(start: acts.logits, count: n * m.layout.localVocab))
    }

    static func options(_ method: Method, tp: Int, out: String) -> RunOptions {
        var o = RunOptions(base: .file(base), out: out)
        o.train.method = method
        o.train.steps = 3
        o.train.globalBatch = 4
        o.train.microBatch = 4
        o.train.seq = 168
        o.train.lr = 1e-2
        o.train.warmup = 1
        // At TP 2 Houlsby's are sharded (the file is gathered from the ranks' columns and rows) and
        // Lin's on TP rank 0 alone (owner).
        o.adapters = method.adapters(
            bottleneck: 8, placement: tp == 1 ? .replicated : method == .adapterL ? .owner : .sharded)
        o.tp = tp
        o.evalExamples = 0
        o.validLimit = 2
        o.quiet = true
        return o
    }

    /// Trains `method` at `tp` in process, then loads what it saved on the same ranks.
    func trainAndReload(_ method: Method, tp: Int) throws -> Saved {
        let out = makeTempDir("save-\(method.rawValue)-tp\(tp)")
        let o = Self.options(method, tp: tp, out: out)
        let saved = method == .full ? out + "/model/model.safetensors" : out + "/adapter.safetensors"
        let res = try InProcessCommunicator.run(ranks: tp) { comm -> Saved in
            let run = try TrainRun(world: RecordingCommunicator(comm), options: o)
            let summary = try run.run()
            let trained = try Self.logits(run.model)
            let loaded = try GPTModel.forDecoding(
                Self.spec(method, out), adapter: Self.file(method, out), tp: run.grid.tp, precision: .fp32)
            let again = try Self.logits(loaded)
            var tensors: [String: [Float]] = [:]
            if comm.rank == 0 {
                let f = try SafeTensorsFile(path: saved)
                for n in f.names { tensors[n] = try f.floats(n) }
                if method != .full {
                    XCTAssertEqual(
                        summary.adapterFileBytes,
                        (try FileManager.default.attributesOfItem(atPath: saved)[.size] as! NSNumber).intValue)
                }
            }
            return Saved(
                logitDiff: zip(trained, again).map { abs($0 - $1) }.max()!, logitScale: trained.map { abs($0) }.max()!,
                tensors: tensors,
                trained: trained, out: out)
        }
        for (r, s) in res.enumerated() {
            XCTAssertLessThan(
                s.logitDiff, 2e-5 * max(1, s.logitScale),
                "\(method.rawValue) tp \(tp) rank \(r): reloaded logits = trained logits")
        }
        if tp > 1 {
            // The file gathered from the TP shards, loaded whole at TP 1, gives the TP-sharded trained model's logits.
            let whole = try InProcessCommunicator.run(ranks: 1) { comm in
                try Self.logits(
                    try GPTModel.forDecoding(
                        Self.spec(method, out), adapter: Self.file(method, out), tp: comm, precision: .fp32))
            }[0]
            let n = Self.tokens.count
            let local = res[0].trained.count / n
            let vocab = 257
            var worst: Float = 0
            for r in 0..<n {
                let row = res.flatMap { $0.trained[(r * local)..<((r + 1) * local)] }
                for v in 0..<vocab { worst = max(worst, abs(row[v] - whole[r * row.count + v])) }
            }
            XCTAssertLessThan(
                worst, 2e-5 * max(1, res[0].logitScale), "\(method.rawValue): saved at TP \(tp), loaded at TP 1")
        }
        return res[0]
    }

    func compare(_ method: Method) throws {
        let one = try trainAndReload(method, tp: 1)
        let two = try trainAndReload(method, tp: 2)
        XCTAssertFalse(one.tensors.isEmpty)
        XCTAssertEqual(
            Set(one.tensors.keys), Set(two.tensors.keys), "\(method.rawValue): TP 2 saves the tensors TP 1 saves")
        var worst: Float = 0
        let d = 128
        for (k, a) in one.tensors {
            let b = two.tensors[k]!
            XCTAssertEqual(a.count, b.count, k)
            for i in 0..<a.count {
                // The key bias shifts every score of a query alike, which softmax ignores: its
                // gradient is 0 but for rounding, which AdamW's g/√v scales up to ±lr differently at each degree.
                if k.hasSuffix("attn.c_attn.bias") && (d..<(2 * d)).contains(i) { continue }
                worst = max(worst, abs(a[i] - b[i]))
            }
        }
        // lr 1e-2 over 3 steps moves a weight by up to 3e-2.
        XCTAssertLessThan(worst, 5e-4, "\(method.rawValue): TP 2's saved tensors equal TP 1's (same seed and data)")
        // What was saved is trained, not the initial values.
        let f = try SafeTensorsFile(path: Self.base)
        switch method {
        case .adapterH, .adapterL:
            let ups = one.tensors.filter { $0.key.hasSuffix(".up.weight") }
            XCTAssertEqual(
                ups.count, 4 * (method == .adapterH ? 2 : 1), "one adapter per position and block of the 4-block base")
            XCTAssertGreaterThan(
                ups.values.flatMap { $0 }.map { abs($0) }.max()!, 1e-3, "W_up starts at 0 and has trained")
        case .bitfit, .full:
            let name = "transformer.h.0.mlp.c_fc.bias"
            let initial = try f.floats(f.infos[name] != nil ? name : String(name.dropFirst("transformer.".count)))
            XCTAssertGreaterThan(
                zip(initial, one.tensors[name]!).map { abs($0 - $1) }.max()!, 1e-3, "\(name) has trained")
            if method == .bitfit {
                XCTAssertTrue(one.tensors.keys.allSatisfy { $0.hasSuffix(".bias") }, "BitFit saves biases only")
            }
        default: break
        }
    }

    func testAdapterHSavedAtTP1AndTP2LoadsBackWithTheTrainedOutputs() throws { try compare(.adapterH) }
    func testAdapterLSavedAtTP1AndTP2LoadsBackWithTheTrainedOutputs() throws { try compare(.adapterL) }
    func testBitFitSavedAtTP1AndTP2LoadsBackWithTheTrainedOutputs() throws { try compare(.bitfit) }
    func testFullSavedAtTP1AndTP2LoadsBackWithTheTrainedOutputs() throws { try compare(.full) }

    static let small = [
        "--steps", "3", "--batch", "4", "--seq", "168", "--lr", "1e-2", "--warmup", "1", "--eval-examples", "1",
        "--valid-limit", "2"
    ]
    static let prompt = BuiltinTask.splits(train: 4000, valid: 200, test: 200, seed: 42).test[0].context

    /// `generate`'s completion (12 tokens at most) of the first test example's prompt.
    func generate(_ args: [String]) throws -> String {
        let g = try Launcher.lora(["generate", "--prompt", Self.prompt, "--max-tokens", "12"] + args, timeout: 120)
        XCTAssertEqual(g.status, 0, g.output)
        return String(g.output.dropLast())  // print's newline
    }

    /// The run's own generation for that example (predictions.txt) starts as `generate`'s does.
    func assertSameStart(_ generated: String, _ out: String, _ what: String) throws {
        let pred = try String(contentsOfFile: out + "/predictions.txt", encoding: .utf8).split(
            separator: "\n", omittingEmptySubsequences: false)[0]
        let gen = generated.replacingOccurrences(of: "\n", with: " ")
        XCTAssertTrue(
            pred.hasPrefix(gen) || gen.hasPrefix(pred), "\(what): the run generated \"\(pred)\", generate \"\(gen)\"")
        XCTAssertFalse(gen.isEmpty, what)
    }

    /// Bottleneck adapters trained under real mpirun (TP 2, sharded) are saved, run by generate at
    /// TP 1 and TP 2 as the run ran them, and refused by merge with the reason.
    func testAdaptersUnderMpirunAreSavedRunByGenerateAndRefusedByMerge() throws {
        let out = makeTempDir("save-mpi-adapter")
        let r = try Launcher.mpirun(
            2,
            ["train", "--method", "adapter-l", "--placement", "sharded", "--bottleneck", "8"] + Self.small + [
                "--out", out
            ],
            timeout: 300)
        XCTAssertEqual(r.status, 0, r.output)
        let file = out + "/adapter.safetensors"
        XCTAssertTrue(r.output.contains("saved \(file) ("), r.output)
        XCTAssertTrue(r.output.contains("adapter-l adapters, bottleneck 8"), r.output)
        let one = try generate(["--adapter", file])
        let two = try generate(["--adapter", file, "--local-ranks", "2"])
        XCTAssertEqual(one, two, "TP 1 and TP 2 decode the saved adapters alike")
        try assertSameStart(one, out, "adapter-l")
        // Without the adapters the base says something else.
        XCTAssertNotEqual(try generate([]), one, "the adapters change the output")
        let m = try Launcher.lora(["merge", "--adapter", file, "--out", makeTempDir("save-merge")])
        XCTAssertNotEqual(m.status, 0, m.output)
        XCTAssertTrue(m.output.contains("merge cannot fold into the base"), m.output)
        XCTAssertTrue(m.output.contains("generate --adapter \(file) or evaluate --adapter \(file)"), m.output)
        let gm = try Launcher.lora(["generate", "--prompt", "x", "--adapter", file, "--merge"])
        XCTAssertNotEqual(gm.status, 0, gm.output)
        XCTAssertTrue(gm.output.contains("merge cannot fold into the base"), gm.output)
        let e = try Launcher.lora([
            "evaluate", "--adapter", file, "--limit", "1", "--max-tokens", "12", "--out", makeTempDir("save-eval")
        ])
        XCTAssertEqual(e.status, 0, e.output)
        let x = try Launcher.lora(["export-peft", "--adapter", file, "--out", makeTempDir("save-peft")])
        XCTAssertNotEqual(x.status, 0, x.output)
        XCTAssertTrue(x.output.contains("holds what --method adapter-l trained, not a LoRA adapter"), x.output)
    }

    /// Full fine-tuning with --save-model at TP 2 (--local-ranks 2) is no longer refused: OUT/model/
    /// loads as --base and generates what the run generated. BitFit's biases, saved at TP 2 under
    /// mpirun, merge into the base: the merged model generates what the unmerged file does.
    func testFullAtTP2SavesAModelAndBitFitMerges() throws {
        let full = makeTempDir("save-full")
        let r = try Launcher.lora(
            ["train", "--method", "full", "--save-model", "--local-ranks", "2"] + Self.small + ["--out", full],
            timeout: 300)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("saved \(full)/model/ (config.json + model.safetensors"), r.output)
        XCTAssertTrue(FileManager.default.fileExists(atPath: full + "/model/config.json"))
        try assertSameStart(try generate(["--base", full + "/model"]), full, "full")

        let bit = makeTempDir("save-bitfit")
        let b = try Launcher.mpirun(2, ["train", "--method", "bitfit"] + Self.small + ["--out", bit], timeout: 300)
        XCTAssertEqual(b.status, 0, b.output)
        XCTAssertTrue(b.output.contains("saved \(bit)/adapter.safetensors ("), b.output)
        let unmerged = try generate(["--adapter", bit + "/adapter.safetensors"])
        try assertSameStart(unmerged, bit, "bitfit")
        let merged = makeTempDir("save-bitfit-merged")
        let m = try Launcher.lora(["merge", "--adapter", bit + "/adapter.safetensors", "--out", merged])
        XCTAssertEqual(m.status, 0, m.output)
        XCTAssertEqual(try generate(["--base", merged]), unmerged, "the merged base generates as base + BitFit file")
    }

    /// --save-model with a method that leaves the base frozen is refused before anything trains.
    func testSaveModelWithAFrozenBaseIsRefusedBeforeStepOne() throws {
        for (method, says) in [
            ("lora", "lora-dist merge --adapter OUT/adapter.safetensors"),
            ("adapter-h", "bottleneck adapters cannot be merged")
        ] {
            let r = try Launcher.lora(
                ["train", "--method", method, "--save-model", "--local-ranks", "2"] + Self.small + [
                    "--out", makeTempDir("save-refused")
                ])
            XCTAssertNotEqual(r.status, 0, r.output)
            XCTAssertTrue(r.output.contains("--save-model writes the base a method trains (full, bitfit)"), r.output)
            XCTAssertTrue(r.output.contains(says), r.output)
            XCTAssertFalse(r.output.contains("step 1/"), "refused before step 1\n\(r.output)")
        }
    }

    /// Where the trained model or file goes is checked before step 1, on every rank's word.
    func testAFileWhereTheModelGoesIsRefusedBeforeStepOne() throws {
        let out = makeTempDir("save-blocked")
        FileManager.default.createFile(atPath: out + "/model", contents: Data("x".utf8))
        let r = try Launcher.lora(["train", "--method", "full", "--local-ranks", "2"] + Self.small + ["--out", out])
        XCTAssertNotEqual(r.status, 0, r.output)
        XCTAssertTrue(
            r.output.contains("a file is where the trained model's directory goes; remove it or choose another --out"),
            r.output)
        XCTAssertFalse(r.output.contains("step 1/"), "refused before step 1\n\(r.output)")
        try FileManager.default.createDirectory(atPath: out + "/adapter.safetensors", withIntermediateDirectories: true)
        let b = try Launcher.lora(["train", "--method", "bitfit"] + Self.small + ["--out", out])
        XCTAssertNotEqual(b.status, 0, b.output)
        XCTAssertTrue(b.output.contains("a directory is where the trained bitfit file goes"), b.output)
        XCTAssertFalse(b.output.contains("step 1/"), "refused before step 1\n\(b.output)")
    }
}
