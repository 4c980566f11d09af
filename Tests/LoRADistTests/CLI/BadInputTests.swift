import XCTest

@testable import LoRADist

/// The bad-input catalogue: each gets one specific message naming the problem and the file or
/// option, a non-zero exit (on every rank under mpirun), and nothing on disk is damaged.
final class BadInputTests: XCTestCase {
    func tmp() -> String { makeTempDir("bad") }

    static let quick = ["--steps", "2", "--batch", "2", "--eval-examples", "0", "--valid-limit", "2"]

    func expectFailure(
        _ args: [String], _ message: String, mpi: Int? = nil, file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let r = mpi.map { try? Launcher.mpirun($0, args, timeout: 120) } ?? (try? Launcher.lora(args, timeout: 120))
        guard let r else { return XCTFail("could not run", file: file, line: line) }
        XCTAssertFalse(r.timedOut, "hung: \(args)", file: file, line: line)
        XCTAssertNotEqual(r.status, 0, "must fail: \(args)\n\(r.output)", file: file, line: line)
        XCTAssertTrue(r.output.contains(message), "expected \"\(message)\" in:\n\(r.output)", file: file, line: line)
        // Under mpirun every rank says it, not only the first to fail.
        for k in 0..<(mpi ?? 0) {
            XCTAssertTrue(
                r.output.split(separator: "\n").contains {
                    $0.hasPrefix("lora-dist: error: rank \(k): ") && $0.contains(message)
                },
                "rank \(k) must say \"\(message)\":\n\(r.output)", file: file, line: line)
        }
    }

    func writeData(_ dir: String, train: String, valid: String? = nil) {
        FileManager.default.createFile(atPath: dir + "/train.jsonl", contents: Data(train.utf8))
        FileManager.default.createFile(atPath: dir + "/valid.jsonl", contents: Data((valid ?? train).utf8))
    }

    func testUnknownRecomputeSetting() throws {
        try expectFailure(
            ["train", "--recompute", "foo"] + Self.quick, "The value 'foo' is invalid for '--recompute <recompute>'")
        try expectFailure(
            ["bench", "train", "--recompute", "all", "--models", "tiny"], "The value 'all' is invalid for '--recompute")
    }

    func testMissingDataFile() throws {
        let d = tmp()
        try expectFailure(["train", "--data", d] + Self.quick, "data file \(d)/train.jsonl does not exist")
    }

    func testBadJSONLine() throws {
        let d = tmp()
        writeData(d, train: "{\"context\": \"a\", \"completion\": \"b\"}\n{not json\n")
        try expectFailure(["train", "--data", d] + Self.quick, "\(d)/train.jsonl line 2: not a JSON object")
    }

    func testMissingKey() throws {
        let d = tmp()
        writeData(d, train: "{\"context\": \"a\"}\n")
        try expectFailure(
            ["train", "--data", d] + Self.quick, "line 1: needs string fields \"context\" and \"completion\"")
    }

    func testDatasetWithNoUsableExamples() throws {
        let d = tmp()
        let long = String(repeating: "x", count: 400)
        writeData(d, train: "{\"context\": \"\(long)\", \"completion\": \"y\"}\n")
        try expectFailure(
            ["train", "--data", d, "--seq", "168"] + Self.quick,
            "has no usable examples: all 1 examples are longer than the context of 168 tokens")
        // Without --seq the model's context (the built-in base's 192) bounds the examples.
        try expectFailure(
            ["train", "--data", d] + Self.quick,
            "has no usable examples: all 1 examples are longer than the context of 192 tokens")
    }

    func testTooLongExamplesAreDroppedAndCounted() throws {
        let d = tmp()
        let out = tmp()
        let long = String(repeating: "x", count: 400)
        var lines = "{\"context\": \"\(long)\", \"completion\": \"y\"}\n"
        for i in 0..<8 { lines += "{\"context\": \"name=\(i)\\n\", \"completion\": \"ok \(i)\"}\n" }
        writeData(d, train: lines)
        let r = try Launcher.lora(["train", "--data", d, "--seq", "168", "--out", out] + Self.quick, timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("data: dropped 1 training examples longer than --seq 168 tokens"), r.output)
        // Without --seq: the longest example that fits the context sets the length.
        let byData = try Launcher.lora(["train", "--data", d, "--out", tmp()] + Self.quick, timeout: 120)
        XCTAssertEqual(byData.status, 0, byData.output)
        XCTAssertTrue(
            byData.output.contains(
                "data: dropped 1 of 9 training examples longer than the model's context of 192 tokens"),
            byData.output)
    }

    func testTPThatDoesNotDivideTheHeadsFailsOnEveryRank() throws {
        try expectFailure(["train", "--tp", "3"] + Self.quick, "--tp 3 does not divide the number of heads 4", mpi: 3)
    }

    /// A degree the layout cannot take names the ones it can: every constraint of the shape (query
    /// heads, key/value heads, MLP width, padded vocabulary) and the world, here on a Qwen2.5-0.5B-like
    /// shape (14 heads, 2 key/value heads, an MLP width 7 does not divide: only 1 and 2 remain).
    func testTPThatDoesNotDivideNamesTheDegreesThatDo() throws {
        let d = tmp()
        let cfg = GPTConfig.llama(nLayer: 1, nEmbd: 56, nHead: 14, nKVHead: 2, ffn: 76, vocabSize: 257, nPositions: 192)
        _ = try InProcessCommunicator.run(ranks: 1) { comm in
            let m = try Fixtures.randomModel(cfg, comm, training: false, baseSeed: 2)
            try ModelFiles.save(m.base, to: d + "/model.safetensors", hfConfig: true)
        }
        XCTAssertEqual(TPLayout.degrees(for: cfg), [1, 2])
        try expectFailure(
            ["train", "--base", d, "--local-ranks", "4"] + Self.quick,
            """
            --tp 4 does not divide the number of heads 14: use --tp 1 or 2 (the degrees that divide the 14 query \
            heads\u{20}
            """
                + """
                (and divide the 2 key/value heads or are a multiple of them), the MLP width 76, the padded \
                vocabulary 264 and the world of 4 ranks)
                """
        )
        // GPT-2's shape with 3 heads: 3 would fit the model but not a world of 2, so only 1 is named, by every rank.
        try expectFailure(
            ["train", "--model", "tiny", "--heads", "3", "--dim", "96"] + Self.quick,
            """
            --tp 2 does not divide the number of heads 3: use --tp 1 (the degree that divides the 3 query heads, the \
            MLP width 384,\u{20}
            """
                + "the padded vocabulary 264 and the world of 2 ranks)", mpi: 2)
        XCTAssertEqual(
            TPLayout.degrees(for: GPTConfig(nLayer: 1, nEmbd: 96, nHead: 3, vocabSize: 257, nPositions: 192)), [1, 3])
    }

    func testWorldNotDivisibleByTP() throws {
        try expectFailure(
            ["train", "--tp", "2"] + Self.quick,
            "the world of 3 ranks is not divisible by --tp 2: use --tp 1 (the degree that divides "
                + "the 4 query heads, the MLP width 512, the padded vocabulary 264 and the world of 3 ranks)", mpi: 3)
    }

    func testRankLargerThanTheMatrix() throws {
        try expectFailure(["train", "--lora-rank", "200"] + Self.quick, "--lora-rank 200 exceeds min(in, out) = 128")
    }

    func testNegativeLearningRate() throws {
        try expectFailure(["train", "--lr=-1"] + Self.quick, "--lr must be positive (got -1.0)")
    }

    func testUnwritableOutputDirectory() throws {
        let f = tmp() + "/file"
        FileManager.default.createFile(atPath: f, contents: Data("x".utf8))
        try expectFailure(["train", "--out", f + "/run"] + Self.quick, f)
        XCTAssertEqual(try String(contentsOfFile: f, encoding: .utf8), "x", "nothing on disk is damaged")
    }

    func testMissingBaseModel() throws {
        try expectFailure(
            ["train", "--base", "/nonexistent/model.safetensors"] + Self.quick,
            "cannot read /nonexistent/model.safetensors")
    }

    func testCorruptBaseModel() throws {
        let p = tmp() + "/model.safetensors"
        FileManager.default.createFile(atPath: p, contents: Data([1, 2, 3, 4, 5, 6, 7, 8, 9]))
        try expectFailure(["train", "--base", p] + Self.quick, "\(p): header length")
    }

    func testUnknownTarget() throws {
        try expectFailure(["train", "--lora-targets", "q,z"] + Self.quick, "unknown target z")
    }

    // MARK: - Files as people have them

    static let bom: [UInt8] = [0xEF, 0xBB, 0xBF]
    /// `text` with CRLF line ends and a UTF-8 byte-order mark, as Windows editors save it.
    static func windows(_ text: String) -> Data {
        Data(bom + Array(text.replacingOccurrences(of: "\n", with: "\r\n").utf8))
    }

    func testCRLFAndBOMInJSONLAreAccepted() throws {
        let d = tmp()
        let out = tmp()
        let lines =
            (0..<6).map { "{\"context\": \"name=\($0)\\n\", \"completion\": \"ok \($0)\"}" }.joined(separator: "\n")
            + "\n"
        FileManager.default.createFile(atPath: d + "/train.jsonl", contents: Self.windows(lines))
        FileManager.default.createFile(atPath: d + "/valid.jsonl", contents: Self.windows(lines))
        let ex = try JSONLines.read(d + "/train.jsonl")
        XCTAssertEqual(ex.count, 6)
        XCTAssertEqual(ex[0].context, "name=0\n")
        XCTAssertEqual(ex[5].completion, "ok 5", "no CR left at the line end")
        let r = try Launcher.lora(["train", "--data", d, "--out", out] + Self.quick, timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
    }

    func testCRLFAndBOMInTextAreAccepted() throws {
        let d = tmp()
        let out = tmp()
        let doc = String(repeating: "the quick brown fox jumps over the lazy dog\n", count: 12)
        let text = (0..<6).map { _ in doc }.joined(separator: "\n")
        FileManager.default.createFile(atPath: d + "/corpus.txt", contents: Self.windows(text))
        let read = try TextFile.read(d + "/corpus.txt")
        XCTAssertEqual(read, text, "BOM dropped, CRLF read as LF")
        let data = try TokenDataset(text: read, tokenizer: ByteTokenizer(), seq: 32, source: "t")
        XCTAssertFalse(data.examples.contains { $0.tokens.contains(13) }, "no CR token reaches the model")
        let r = try Launcher.lora(
            ["train", "--text", d + "/corpus.txt", "--seq", "64", "--out", out] + Self.quick, timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
    }

    func testCRLFAndBOMInVocabAndMergesAreAccepted() throws {
        let d = tmp()
        let json = try JSONSerialization.data(withJSONObject: TokenizerFixtures.handVocab, options: [.prettyPrinted])
        let vocab = String(decoding: json, as: UTF8.self)
        try Self.windows(vocab).write(to: URL(fileURLWithPath: d + "/vocab.json"))
        let merges = "#version: 0.2\n" + TokenizerFixtures.handMerges.joined(separator: "\n") + "\n"
        try Self.windows(merges).write(to: URL(fileURLWithPath: d + "/merges.txt"))
        let t = try GPT2Tokenizer.load(d)
        XCTAssertEqual(t.encode(" the"), [258], "merges read: Ġt, he, Ġthe")
        XCTAssertEqual(t.encode("aaaa"), [261, 261])
        XCTAssertEqual(t.vocabSize, 263)
    }

    func testCRLFAndBOMInConfigJSONAreAccepted() throws {
        let d = try Self.hfDirectory(tmp())
        let cfg = try String(contentsOfFile: d + "/config.json", encoding: .utf8)
        XCTAssertTrue(cfg.contains("\n"))
        try Self.windows(cfg).write(to: URL(fileURLWithPath: d + "/config.json"))
        XCTAssertEqual(try BaseFiles.open(.file(d)).config, Self.small)
    }

    func testEmptyFilesAreNamed() throws {
        let d = tmp()
        writeData(d, train: "")
        try expectFailure(
            ["train", "--data", d] + Self.quick, "\(d)/train.jsonl is empty: a JSONL data file holds one example a line"
        )
        writeData(d, train: "{\"context\": \"a\", \"completion\": \"b\"}\n", valid: "\r\n\n")
        try expectFailure(["train", "--data", d] + Self.quick, "\(d)/valid.jsonl is empty")
        FileManager.default.createFile(atPath: d + "/empty.txt", contents: Data())
        try expectFailure(
            ["train", "--text", d + "/empty.txt"] + Self.quick,
            "\(d)/empty.txt is empty: --text needs plain text to train on")
        let h = try Self.hfDirectory(tmp())
        FileManager.default.createFile(atPath: h + "/config.json", contents: Data(Self.bom))
        try expectFailure(
            ["train", "--base", h] + Self.quick,
            "\(h)/config.json is empty: expected the model's Hugging Face GPT-2 configuration")
        FileManager.default.createFile(atPath: h + "/model.safetensors", contents: Data())
        try expectFailure(["train", "--base", h] + Self.quick, "\(h)/model.safetensors: not a safetensors file")
        let t = tmp()
        FileManager.default.createFile(atPath: t + "/vocab.json", contents: Data())
        FileManager.default.createFile(atPath: t + "/merges.txt", contents: Data("#version: 0.2\n".utf8))
        XCTAssertThrowsError(try GPT2Tokenizer.load(t)) {
            XCTAssertTrue("\($0)".contains("\(t)/vocab.json is empty"), "\($0)")
        }
        try Data(try JSONSerialization.data(withJSONObject: TokenizerFixtures.handVocab))
            .write(to: URL(fileURLWithPath: t + "/vocab.json"))
        FileManager.default.createFile(atPath: t + "/merges.txt", contents: Data("\r\n".utf8))
        XCTAssertThrowsError(try GPT2Tokenizer.load(t)) {
            XCTAssertTrue(
                "\($0)".contains("\(t)/merges.txt is empty: GPT-2's merges.txt holds a #version line"), "\($0)")
        }
    }

    func testInvalidUTF8IsNamedByLineAndColumn() throws {
        let d = tmp()
        FileManager.default.createFile(
            atPath: d + "/t.txt", contents: Data(Array("first line\nsecond\r\nthir".utf8) + [0xFF] + Array("d\n".utf8)))
        try expectFailure(
            ["train", "--text", d + "/t.txt"] + Self.quick,
            "\(d)/t.txt line 3, column 5: byte 0xFF is not UTF-8 text; save the file as UTF-8")
        // A truncated two-byte sequence (é cut after its first byte) in the second example of a JSONL file.
        let ok = "{\"context\": \"a\", \"completion\": \"b\"}\n"
        FileManager.default.createFile(
            atPath: d + "/train.jsonl",
            contents: Data(
                Array((ok + "{\"context\": \"caf").utf8) + [0xC3] + Array("\", \"completion\": \"b\"}\n".utf8)))
        FileManager.default.createFile(atPath: d + "/valid.jsonl", contents: Data(ok.utf8))
        try expectFailure(
            ["train", "--data", d] + Self.quick, "\(d)/train.jsonl line 2, column 17: byte 0xC3 is not UTF-8 text")
        XCTAssertEqual(TextFile.firstInvalidUTF8(Array("aé€😀".utf8)), nil)
        XCTAssertEqual(TextFile.firstInvalidUTF8([0x61, 0xE2, 0x82]), 1, "a truncated sequence at the end")
        XCTAssertEqual(TextFile.firstInvalidUTF8([0xED, 0xA0, 0x80]), 0, "an encoded surrogate")
    }

    // MARK: - config.json

    static let small = Fixtures.tiny(vocabSize: 260, nPositions: 64)

    /// A Hugging Face-style GPT-2 directory in `dir`: model.safetensors (HF names, no shape metadata)
    /// and config.json, random weights of `small`. `prefix: false` and `buffers` make it look like a
    /// hub snapshot of GPT-2 (no "transformer." prefix, attn.bias and attn.masked_bias buffers);
    /// `edit` changes the tensors before they are written.
    static func hfDirectory(
        _ dir: String, config: GPTConfig = small, prefix: Bool = true, buffers: Bool = false,
        edit: (inout [String: (shape: [Int], data: [Float])]) -> Void = { _ in }
    ) throws -> String {
        var tensors = try InProcessCommunicator.run(ranks: 1) { comm in
            let m = try Fixtures.randomModel(config, comm, training: false, baseSeed: 5)
            return try m.base.fullTensors()
        }[0]
        edit(&tensors)
        var list = tensors.map {
            (
                name: prefix ? $0.key : String($0.key.dropFirst("transformer.".count)), shape: $0.value.shape,
                data: $0.value.data
            )
        }
        if buffers {
            for l in 0..<config.nLayer {
                let p = config.nPositions
                list.append(("h.\(l).attn.bias", [1, 1, p, p], (0..<(p * p)).map { Float($0 % p <= $0 / p ? 1 : 0) }))
                list.append(("h.\(l).attn.masked_bias", [], [-1e4]))
            }
        }
        try SafeTensorsFile.write(path: dir + "/model.safetensors", tensors: list, metadata: ["format": "pt"])
        let cfg = try JSONSerialization.data(
            withJSONObject: ModelFiles.hfConfigJSON(config), options: [.prettyPrinted, .sortedKeys])
        try cfg.write(to: URL(fileURLWithPath: dir + "/config.json"))
        return dir
    }

    /// Writes `dir`/config.json as small's with `key` set to `value` (raw JSON text).
    func configWith(_ dir: String, _ key: String, _ value: String) throws {
        var text = String(
            decoding: try JSONSerialization.data(
                withJSONObject: ModelFiles.hfConfigJSON(Self.small), options: [.sortedKeys]), as: UTF8.self)
        text = text.replacingOccurrences(
            of: "\"\(key)\":\((ModelFiles.hfConfigJSON(Self.small)[key] as! NSNumber))", with: "\"\(key)\":\(value)")
        XCTAssertTrue(text.contains("\"\(key)\":\(value)"), text)
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
    }

    /// For each (key, value, message) of `cases`: with `key` set to `value` in `dir`/config.json,
    /// loading the base fails as a corrupt config with `message` (and `also`, when given) in the error.
    func expectCorruptConfig(
        _ dir: String, _ cases: [(key: String, value: String, message: String)], also: String? = nil,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        for (key, value, message) in cases {
            try configWith(dir, key, value)
            XCTAssertThrowsError(try BaseFiles.open(.file(dir)), key, file: file, line: line) { e in
                XCTAssertTrue(
                    "\(e)".contains("\(dir)/config.json is corrupt: \(message)"), "\(e)", file: file, line: line)
                if let also { XCTAssertTrue("\(e)".contains(also), "\(e)", file: file, line: line) }
            }
        }
    }

    func testConfigOfWrongTypesIsRefusedNamingTheKey() throws {
        let d = try Self.hfDirectory(tmp())
        try expectCorruptConfig(
            d,
            [
                ("n_layer", "\"2\"", "n_layer must be a whole number, got the string \"2\""),
                ("n_embd", "32.5", "n_embd must be a whole number, got 32.5"),
                ("n_head", "true", "n_head must be a whole number, got true"),
                (
                    "layer_norm_epsilon", "\"1e-5\"",
                    "layer_norm_epsilon must be a small positive number, got the string \"1e-5\""
                )
            ])
        try configWith(d, "n_head", "true")
        try expectFailure(["train", "--base", d] + Self.quick, "n_head must be a whole number, got true")
        // A whole number written as a float (as some exporters do) is fine.
        try configWith(d, "n_embd", "32.0")
        XCTAssertEqual(try BaseFiles.open(.file(d)).config, Self.small)
    }

    func testAbsurdSizesAreRefusedBeforeAllocating() throws {
        let d = try Self.hfDirectory(tmp())
        try configWith(d, "vocab_size", "1e9")
        let t0 = Date()
        try expectFailure(
            ["train", "--base", d] + Self.quick, "vocab_size 1000000000 is beyond any GPT-2 (at most 16777216 here)")
        XCTAssertLessThan(Date().timeIntervalSince(t0), 20)
        try configWith(d, "n_positions", "123456789012")
        XCTAssertThrowsError(try BaseFiles.open(.file(d))) {
            XCTAssertTrue("\($0)".contains("n_positions 123456789012 is beyond any GPT-2"), "\($0)")
        }
        try configWith(d, "n_layer", "0")
        XCTAssertThrowsError(try BaseFiles.open(.file(d))) {
            XCTAssertTrue("\($0)".contains("n_layer must be at least 1, got 0"), "\($0)")
        }
    }

    func testConfigDisagreeingWithTheTensorsNamesBoth() throws {
        let d = try Self.hfDirectory(tmp())
        try expectCorruptConfig(
            d,
            [
                (
                    "vocab_size", "300",
                    "vocab_size is 300 but tensor transformer.wte.weight in model.safetensors has shape [260, 32]"
                ),
                (
                    "n_positions", "128",
                    "n_positions is 128 but tensor transformer.wpe.weight in model.safetensors has shape [64, 32]"
                ),
                ("n_layer", "3", "n_layer is 3 but model.safetensors holds 2 blocks (h.0 … h.1)"),
                (
                    "n_embd", "64",
                    "n_embd is 64 but tensor transformer.wte.weight in model.safetensors has shape [260, 32]"
                )
            ],
            also: "the config and the weights belong to different models")
        try configWith(d, "n_layer", "3")
        try expectFailure(["train", "--base", d] + Self.quick, "n_layer is 3 but model.safetensors holds 2 blocks")
    }

    func testDirectoryWithoutConfigJSON() throws {
        let d = try Self.hfDirectory(tmp())
        try FileManager.default.removeItem(atPath: d + "/config.json")
        try expectFailure(
            ["train", "--base", d] + Self.quick,
            """
            cannot read \(d)/config.json: no model shape: the checkpoint has no config metadata and there is no \
            config.json beside it; put the config.json the model was published with in \(d)
            """
        )
    }

    // MARK: - Weights

    func testNaNAndInfInBaseWeightsAreNamedByTensor() throws {
        // A NaN in the columns rank 1 of 2 owns (c_fc is column-parallel): that rank finds it.
        let d = try Self.hfDirectory(tmp()) { t in t["transformer.h.1.mlp.c_fc.weight"]!.data[3 * 128 + 100] = .nan }
        XCTAssertThrowsError(
            try InProcessCommunicator.run(ranks: 2) { comm in
                let opened = try BaseFiles.open(.file(d))
                let (cfg, src) = (opened.config, opened.weights)
                let m = try GPTModel(config: cfg, tp: comm, trainable: nil, training: false)
                try m.base.load(from: src)
            }
        ) { e in
            XCTAssertTrue(
                "\(e)".contains(
                    """
                    \(d)/model.safetensors is corrupt: tensor transformer.h.1.mlp.c_fc.weight holds NaN at element [3, \
                    100]: the base weights are damaged
                    """
                ), "\(e)")
        }
        let inf = try Self.hfDirectory(tmp(), prefix: false) { t in t["transformer.wpe.weight"]!.data[5] = -.infinity }
        try expectFailure(
            ["train", "--base", inf, "--seq", "32"] + Self.quick, "tensor wpe.weight holds -Inf at element [0, 5]")
        // Only rank 1 reads that shard; loading is agreed on, so rank 0 reports it too.
        try expectFailure(
            ["train", "--base", d, "--tp", "2", "--seq", "32"] + Self.quick,
            """
            tensor transformer.h.1.mlp.c_fc.weight holds NaN at element [3, 100]: the base weights are damaged \
            (download or convert the checkpoint again) (on rank 1)
            """,
            mpi: 2)
    }

    /// models/tiny-base.safetensors, its identity, and a rank-2 q, v LoRA for it initialised with seed 1.
    static func tinyBaseLoRA() throws -> (base: String, id: BaseIdentity, lora: LoRAWeights) {
        let base = Launcher.root.appendingPathComponent("models/tiny-base.safetensors").path
        let opened = try BaseFiles.open(.file(base))
        let (cfg, id) = (opened.config, opened.identity)
        let lora = LoRAWeights(config: LoRAConfig(rank: 2, alpha: 4, targets: [.q, .v]), model: cfg)
        lora.initialize(seed: 1)
        return (base, id, lora)
    }

    func testNaNInAdapterWeightsIsNamedByTensor() throws {
        let d = tmp()
        let (base, id, lora) = try Self.tinyBaseLoRA()
        let v = lora.slots.first { $0.layer == 1 && $0.target == .v }!
        lora.ptr(v.b)[7] = .infinity
        try AdapterFile.save(lora, base: id, to: d + "/adapter.safetensors")
        try expectFailure(
            ["generate", "--adapter", d + "/adapter.safetensors", "--prompt", "name=x", "--max-tokens", "2"],
            "\(d)/adapter.safetensors is corrupt: tensor lora.h.1.v.B holds +Inf at element [3, 1]")
        try PEFTAdapter.save(lora, to: d + "/peft", baseModel: nil)
        try expectFailure(
            ["import-peft", "--peft", d + "/peft", "--base", base, "--out", d + "/imported.safetensors"],
            "holds +Inf at element")
        XCTAssertFalse(FileManager.default.fileExists(atPath: d + "/imported.safetensors"))
    }

    // MARK: - Directories as people have them

    func testHubSnapshotDirectoryLoads() throws {
        // The hub cache layout: models--org--name/{blobs/, refs/main, snapshots/REV/ → ../../blobs/…}.
        let root = tmp() + "/models--org--tiny-gpt2"
        let rev = "0123456789abcdef0123456789abcdef01234567"
        let snap = root + "/snapshots/" + rev
        let blobs = root + "/blobs"
        for p in [snap, blobs, root + "/refs"] {
            try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        }
        let staging = try Self.hfDirectory(tmp(), prefix: false, buffers: true)
        for (i, f) in ["model.safetensors", "config.json"].enumerated() {
            try FileManager.default.moveItem(atPath: staging + "/" + f, toPath: blobs + "/blob\(i)")
            try FileManager.default.createSymbolicLink(
                atPath: snap + "/" + f, withDestinationPath: "../../blobs/blob\(i)")
        }
        try Data(rev.utf8).write(to: URL(fileURLWithPath: root + "/refs/main"))
        let names = try SafeTensorsFile(path: snap + "/model.safetensors").names
        XCTAssertTrue(
            names.contains("h.0.attn.bias") && names.contains("h.1.attn.masked_bias") && names.contains("wte.weight"))
        XCTAssertFalse(names.contains { $0.hasPrefix("transformer.") })
        let prefixed = try Self.hfDirectory(tmp())
        for spec in [snap, root] {
            let w = try InProcessCommunicator.run(ranks: 2) { comm -> [[Float]] in
                try [spec, prefixed].map { path in
                    let opened = try BaseFiles.open(.file(path))
                    let (cfg, src) = (opened.config, opened.weights)
                    let m = try GPTModel(config: cfg, tp: comm, trainable: nil, training: false)
                    try m.base.load(from: src)
                    return Array(m.base.arena.buffer)
                }
            }
            for r in w { XCTAssertEqual(r[0], r[1], "\(spec): the snapshot loads the same weights") }
        }
        let out = tmp()
        FileManager.default.createFile(
            atPath: out + "/corpus.txt", contents: Data(String(repeating: "a hub snapshot trains. ", count: 40).utf8))
        let r = try Launcher.lora(
            ["train", "--base", root, "--text", out + "/corpus.txt", "--seq", "32", "--out", out] + Self.quick,
            timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
    }

    func testPyTorchOnlyAndShardedDirectoriesSayHowToConvert() throws {
        let d = tmp()
        try Data(ModelFiles.hfConfigJSON(Self.small).description.utf8).write(
            to: URL(fileURLWithPath: d + "/config.json"))
        FileManager.default.createFile(atPath: d + "/pytorch_model.bin", contents: Data([0x80, 0x02]))
        try expectFailure(
            ["train", "--base", d] + Self.quick,
            """
            \(d) cannot be used: it holds pytorch_model.bin but no model.safetensors; lora-dist reads safetensors only \
            (never pickled weights). Convert once with: python3 -c \"from transformers import GPT2LMHeadModel as M; \
            M.from_pretrained('\(d)').save_pretrained('\(d)', max_shard_size='100GB')\"
            """
        )
        let s = tmp()
        FileManager.default.createFile(atPath: s + "/model.safetensors.index.json", contents: Data("{}".utf8))
        XCTAssertThrowsError(try BaseFiles.open(.file(s))) {
            XCTAssertTrue("\($0)".contains("its weights are sharded (model.safetensors.index.json)"), "\($0)")
        }
        let e = tmp()
        XCTAssertThrowsError(try BaseFiles.open(.file(e))) {
            let m =
                "cannot read \(e)/model.safetensors: no such file: --base takes a safetensors file or a Hugging "
                + "Face GPT-2 directory"
            XCTAssertTrue("\($0)".contains(m), "\($0)")
        }
    }

    func testAdapterForAnotherBaseIsRefusedByGenerateMergeAndImport() throws {
        let d = tmp()
        let (_, id, lora) = try Self.tinyBaseLoRA()
        try AdapterFile.save(lora, base: id, to: d + "/adapter.safetensors")
        let other = try Self.hfDirectory(tmp())
        let said =
            """
            \(d)/adapter.safetensors cannot be used: the adapter was trained on base tiny-base.safetensors (4 layers, \
            d 128
            """
        try expectFailure(
            [
                "generate", "--base", other, "--adapter", d + "/adapter.safetensors", "--prompt", "x", "--max-tokens",
                "2"
            ], said)
        try expectFailure(
            [
                "generate", "--model", "tiny", "--adapter", d + "/adapter.safetensors", "--prompt", "x", "--max-tokens",
                "2"
            ],
            "not on random init (4 layers, d 128, fingerprint random-1); pass the --base it was trained on")
        try expectFailure(
            ["merge", "--base", other, "--adapter", d + "/adapter.safetensors", "--out", d + "/merged"], said)
        XCTAssertFalse(FileManager.default.fileExists(atPath: d + "/merged/model.safetensors"))
        try PEFTAdapter.save(lora, to: d + "/peft", baseModel: nil)
        try expectFailure(
            ["import-peft", "--peft", d + "/peft", "--base", other, "--out", d + "/imported.safetensors"],
            "adapts layer 2 but the base has 2 layers: the adapter was made for another base")
        // Same depth, other width: the shapes say it.
        let wide = try Self.hfDirectory(
            tmp(), config: GPTConfig(nLayer: 4, nEmbd: 64, nHead: 4, vocabSize: 260, nPositions: 64))
        try expectFailure(
            ["import-peft", "--peft", d + "/peft", "--base", wide, "--out", d + "/imported.safetensors"],
            "do not fit this base model (in 64, out 192): it was made for another")
    }
}

/// Ctrl-C: the run stops at the next step boundary within seconds, writes a checkpoint, exits 130,
/// and resumes to the uninterrupted run's adapter and losses, bit for bit.
final class InterruptTests: XCTestCase {
    func testSIGINTStopsAtAStepBoundaryWithACheckpoint() throws {
        func tmp() -> String {
            FileManager.default.temporaryDirectory.appendingPathComponent("int-\(UUID().uuidString)").path
        }
        let reference = tmp()
        let out = tmp()
        func args(_ out: String) -> [String] {
            [
                "train", "--steps", "20", "--batch", "2", "--eval-examples", "0", "--valid-limit", "2", "--log-every",
                "1", "--out", out
            ]
        }
        XCTAssertEqual(try Launcher.lora(args(reference), timeout: 120).status, 0)
        let job = try BackgroundLaunch([Launcher.binary] + args(out))
        XCTAssertTrue(job.wait(timeout: 120) { metricsLines(out) >= 3 }, job.output)
        let t = Date()
        kill(job.pid, SIGINT)
        let r = job.finish(timeout: 30, since: t)
        XCTAssertFalse(r.timedOut, "did not stop:\n\(r.output)")
        XCTAssertLessThan(r.seconds, 10, "seconds from Ctrl-C to the exit")
        XCTAssertEqual(r.status, 130, r.output)
        let step = metricsLines(out)
        XCTAssertTrue(
            r.output.contains("interrupted by SIGINT: stopped after step \(step) and wrote \(out)/checkpoints/step-"),
            r.output)
        XCTAssertLessThan(step, 20)
        let dirs = try FileManager.default.contentsOfDirectory(atPath: out + "/checkpoints")
        XCTAssertEqual(
            dirs, ["step-" + String(repeating: "0", count: 8 - String(step).count) + String(step)],
            "one checkpoint, at step \(step)")
        let resumed = try Launcher.lora(args(out) + ["--resume", "latest"], timeout: 120)
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertEqual(metricsLines(out), 20, "the resumed run continues the log to the last step")
        XCTAssertEqual(
            try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map {
                $0.split(separator: ",")[1]
            },
            try String(contentsOfFile: reference + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map {
                $0.split(separator: ",")[1]
            })
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: out + "/adapter.safetensors")),
            try Data(contentsOf: URL(fileURLWithPath: reference + "/adapter.safetensors")), "bit-identical adapter")
    }
}

/// Typed as users type it: `lora-dist` found on PATH, run from another directory, finds its
/// built-in base model.
final class InstalledBinaryTests: XCTestCase {
    func testBinaryRunByNameFromAnotherDirectoryFindsTheBuiltinBase() throws {
        let dir = URL(fileURLWithPath: Launcher.binary).deletingLastPathComponent().path
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("byname-\(UUID().uuidString)").path
        let r = try Launcher.run(
            [
                "env", "PATH=\(dir):" + (ProcessInfo.processInfo.environment["PATH"] ?? ""), "lora-dist", "train",
                "--steps", "1", "--batch", "2", "--eval-examples", "0", "--valid-limit", "2", "--out", out
            ],
            timeout: 120, cwd: "/")
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("lora on tiny-base.safetensors"), r.output)
    }
}
