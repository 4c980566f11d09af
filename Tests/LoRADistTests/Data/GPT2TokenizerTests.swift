import XCTest

@testable import LoRADist

/// GPT-2 byte-level BPE: the ids Hugging Face gives (reference/make_tokenizer_fixture.py trains a
/// small tokenizer and encodes a varied corpus three ways), whether read from vocab.json +
/// merges.txt or tokenizer.json; decoding back; a hand-checked merge order; clear errors for
/// missing and broken files; and `train` picking the BPE up from an HF-style base directory.
final class GPT2TokenizerTests: XCTestCase {
    static func tmp(_ name: String) -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    struct NoFixture: Error {}
    struct Expected {
        var eot: Int32
        var vocabSize: Int
        var cases: [[String: Any]]
        var lossy: [[String: Any]]
    }

    func expected() throws -> (String, Expected) {
        guard let d = TokenizerFixtures.gpt2 else {
            XCTFail(
                """
                no tokenizer fixture: reference/make_tokenizer_fixture.py failed (its output is reported by the first \
                test that ran it)
                """
            )
            throw NoFixture()
        }
        let o =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: d + "/expected.json")))
            as! [String: Any]
        return (
            d,
            Expected(
                eot: Int32(o["eot"] as! Int), vocabSize: o["vocab_size"] as! Int,
                cases: o["cases"] as! [[String: Any]], lossy: o["lossy"] as! [[String: Any]])
        )
    }

    func checkMatchesHuggingFace(_ t: GPT2Tokenizer, _ want: Expected) {
        XCTAssertEqual(t.eot, want.eot)
        XCTAssertEqual(t.vocabSize, want.vocabSize)
        XCTAssertGreaterThan(want.cases.count, 60)
        for c in want.cases {
            let text = c["text"] as! String
            let ids = t.encode(text)
            XCTAssertEqual(ids, (c["ids"] as! [Int]).map(Int32.init), "ids of \(text.debugDescription)")
            // Bytes, not String ==, which would accept a canonically equivalent text.
            XCTAssertEqual(Array(t.decode(ids).utf8), Array(text.utf8), "decode(encode(\(text.debugDescription)))")
            XCTAssertEqual(Array(t.decode(ids).utf8), Array((c["decoded"] as! String).utf8))
            XCTAssertEqual(
                ids.map { Array(t.decode([$0]).utf8) }, (c["pieces"] as! [String]).map { Array($0.utf8) },
                "each id of \(text.debugDescription) alone")
        }
        for c in want.lossy {
            let ids = (c["ids"] as! [Int]).map(Int32.init)
            XCTAssertEqual(Array(t.decode(ids).utf8), Array((c["decoded"] as! String).utf8), "lossy decode of \(ids)")
        }
    }

    func testIdsMatchHuggingFaceFromVocabAndMerges() throws {
        let (d, want) = try expected()
        checkMatchesHuggingFace(try GPT2Tokenizer(vocabFile: d + "/vocab.json", mergesFile: d + "/merges.txt"), want)
    }

    func testIdsMatchHuggingFaceFromTokenizerJSON() throws {
        let (d, want) = try expected()
        checkMatchesHuggingFace(try GPT2Tokenizer.load(d + "/tokenizer.json"), want)
    }

    func testPreTokenizerSplitsLikeGPT2sRegex() {
        func pieces(_ s: String) -> [String] {
            let b = Array(s.utf8)
            return GPT2PreTokenizer.pieces(s).map { String(decoding: b[$0], as: UTF8.self) }
        }
        // A whitespace run before a word gives its last character to the word; "'S" is no contraction.
        XCTAssertEqual(
            pieces("Hello  world's\n\n x 3rd IT'S"),
            ["Hello", " ", " world", "'s", "\n\n", " x", " 3", "rd", " IT", "'", "S"])
        XCTAssertEqual(pieces("a  "), ["a", "  "])
        XCTAssertEqual(pieces("\t\tx"), ["\t", "\t", "x"])
        XCTAssertEqual(pieces("?'s ''ll"), ["?'", "s", " ''", "ll"])
        XCTAssertEqual(pieces("cafe\u{301}"), ["cafe", "\u{301}"])
        XCTAssertEqual(pieces(""), [])
    }

    func checkHandWritten(_ t: GPT2Tokenizer) {
        XCTAssertEqual(t.encode(" the"), [258])
        // "he" (rank 1) is merged before "ll" (rank 3), so "e ll" never applies.
        XCTAssertEqual(t.encode(" hello"), [32, 257, 259, 111])
        XCTAssertEqual(t.encode("aaa"), [261, 97], "equal ranks merge leftmost first")
        XCTAssertEqual(t.encode("aaaa"), [261, 261])
        XCTAssertEqual(t.encode("x<|endoftext|> the"), [120, 262, 258])
        XCTAssertEqual(t.eot, 262)
        XCTAssertEqual(t.vocabSize, 263)
        XCTAssertEqual(t.decode([120, 262, 258]), "x<|endoftext|> the")
    }

    func write(_ s: String, _ path: String) { try! Data(s.utf8).write(to: URL(fileURLWithPath: path)) }

    func json(_ o: Any) -> String { String(decoding: try! JSONSerialization.data(withJSONObject: o), as: UTF8.self) }

    func testHandWrittenMergesApplyInRankOrder() throws {
        let d = Self.tmp("bpe-hand")
        write(json(TokenizerFixtures.handVocab), d + "/vocab.json")
        write("#version: 0.2\n" + TokenizerFixtures.handMerges.joined(separator: "\n") + "\n", d + "/merges.txt")
        checkHandWritten(try GPT2Tokenizer.load(d))
        // Files without <|endoftext|>: it comes after the last id, as transformers adds it.
        let bare = Self.tmp("bpe-hand")
        var v = TokenizerFixtures.handVocab
        v["<|endoftext|>"] = nil
        write(json(v), bare + "/vocab.json")
        write(TokenizerFixtures.handMerges.joined(separator: "\n"), bare + "/merges.txt")
        let t = try GPT2Tokenizer.load(bare)
        XCTAssertEqual(t.eot, 262)
        XCTAssertEqual(t.encode("a<|endoftext|>"), [97, 262])
        // The same in tokenizer.json, with merges as "a b" strings (older files) and as pairs (newer).
        let hand = TokenizerFixtures.handMerges
        for merges in [hand as [Any], hand.map { $0.split(separator: " ").map(String.init) } as [Any]] {
            write(
                json([
                    "model": [
                        "type": "BPE", "vocab": TokenizerFixtures.handVocab, "merges": merges,
                        "dropout": NSNull()
                    ],
                    "added_tokens": [["id": 262, "content": "<|endoftext|>", "special": true]],
                    "normalizer": NSNull(), "pre_tokenizer": ["type": "ByteLevel", "add_prefix_space": false]
                ]),
                d + "/tokenizer.json")
            checkHandWritten(try GPT2Tokenizer.load(d + "/tokenizer.json"))
        }
    }

    func testLongPiecesMergeInLinearithmicTime() throws {
        let merges = TokenizerFixtures.handMerges.map {
            let p = $0.split(separator: " ")
            return (String(p[0]), String(p[1]))
        }
        let t = try GPT2Tokenizer(
            vocab: TokenizerFixtures.handVocab, merges: merges,
            added: [:], addPrefixSpace: false, source: "hand", mergeName: { "\($0)" }, description: { _, _ in "" })
        let t0 = Date()
        XCTAssertEqual(t.encode(String(repeating: "a", count: 200_001)), [Int32](repeating: 261, count: 100_000) + [97])
        XCTAssertLessThan(Date().timeIntervalSince(t0), 5)
    }

    func checkError(
        _ body: @autoclosure () throws -> Any, _ parts: [String], file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertThrowsError(try body(), file: file, line: line) { e in
            for p in parts { XCTAssertTrue("\(e)".contains(p), "\"\(e)\" should say \(p)", file: file, line: line) }
        }
    }

    func testMissingAndBrokenFilesAreNamed() throws {
        let d = Self.tmp("bpe-broken")
        checkError(try GPT2Tokenizer.load(d + "/nope"), ["cannot read \(d)/nope", "no such file"])
        checkError(try GPT2Tokenizer.load(d), ["cannot read \(d)", "no tokenizer.json, and no vocab.json + merges.txt"])
        write("{\"a\": ", d + "/vocab.json")
        write("#version: 0.2\n", d + "/merges.txt")
        checkError(try GPT2Tokenizer.load(d), ["\(d)/vocab.json is corrupt", "not valid JSON"])
        write(json(TokenizerFixtures.handVocab), d + "/vocab.json")
        write("#version: 0.2\nh e\nq zz\n", d + "/merges.txt")
        checkError(
            try GPT2Tokenizer.load(d), ["merges.txt is corrupt", "line 3", "\"zz\", which is not in the vocabulary"])
        write("#version: 0.2\nh e\nhe e\n", d + "/merges.txt")
        checkError(try GPT2Tokenizer.load(d), ["line 3", "makes \"hee\", which is not in the vocabulary"])
        write("h e x\n", d + "/merges.txt")
        checkError(try GPT2Tokenizer.load(d), ["line 1 is not two tokens"])
        var v = TokenizerFixtures.handVocab
        v["Ā"] = nil  // byte 0x00
        write(json(v), d + "/vocab.json")
        write("#version: 0.2\n", d + "/merges.txt")
        checkError(try GPT2Tokenizer.load(d), ["no token for byte 0x0"])
        write(json(["model": ["type": "WordPiece", "vocab": [:]]]), d + "/tokenizer.json")
        checkError(try GPT2Tokenizer.load(d), ["\(d)/tokenizer.json is corrupt", "the model is WordPiece, not BPE"])
        let hand: [String: Any] = ["type": "BPE", "vocab": TokenizerFixtures.handVocab, "merges": []]
        write(
            json(["model": hand, "normalizer": ["type": "NFKC"], "pre_tokenizer": ["type": "ByteLevel"]]),
            d + "/tokenizer.json")
        checkError(try GPT2Tokenizer.load(d), ["the normalizer is NFKC (normalizer.type)"])
        write(json(["model": hand, "pre_tokenizer": ["type": "Metaspace"]]), d + "/tokenizer.json")
        checkError(try GPT2Tokenizer.load(d), ["pre-tokenizer is Metaspace"])
    }

    func testTokenizerFollowsTheBase() throws {
        let d = Self.tmp("bpe-choice")
        write(json(TokenizerFixtures.handVocab), d + "/vocab.json")
        write(TokenizerFixtures.handMerges.joined(separator: "\n"), d + "/merges.txt")
        write("not read", d + "/model.safetensors")
        XCTAssertTrue(try TokenizerChoice.forBase(.file(d), override: nil) is GPT2Tokenizer)
        XCTAssertTrue(try TokenizerChoice.forBase(.file(d + "/model.safetensors"), override: nil) is GPT2Tokenizer)
        XCTAssertTrue(try TokenizerChoice.forBase(.random(.named("tiny")!, seed: 1), override: nil) is ByteTokenizer)
        XCTAssertTrue(try TokenizerChoice.forBase(.file(Self.tmp("bpe-empty")), override: nil) is ByteTokenizer)
        XCTAssertTrue(try TokenizerChoice.forBase(.random(.named("tiny")!, seed: 1), override: d) is GPT2Tokenizer)
        checkError(
            try TokenizerChoice.check(try GPT2Tokenizer.load(d), fits: 257),
            ["the tokenizer has 263 ids but the base's vocabulary only 257"])
    }

    /// An HF-style directory (config.json, model.safetensors, vocab.json, merges.txt): `train`
    /// reads its text with the BPE and says so; a base whose vocabulary is too small is refused.
    func testTrainOnAnHFDirectoryUsesItsBPE() throws {
        let (fixture, want) = try expected()
        func baseDir(vocab: Int) throws -> String {
            let d = Self.tmp("bpe-base")
            let cfg = GPTConfig(nLayer: 1, nEmbd: 16, nHead: 2, vocabSize: vocab, nPositions: 64)
            _ = try InProcessCommunicator.run(ranks: 1) { comm in
                let m = try Fixtures.randomModel(cfg, comm, training: false, baseSeed: 5)
                try ModelFiles.save(m.base, to: d + "/model.safetensors", hfConfig: true)
            }
            for f in ["vocab.json", "merges.txt"] {
                try FileManager.default.copyItem(atPath: fixture + "/" + f, toPath: d + "/" + f)
            }
            return d
        }
        let text = Self.tmp("bpe-text") + "/text.txt"
        write(
            (want.cases.map { $0["text"] as! String } + ["The café's 3rd floor: 1,000.5 m² 👍🏽"]).joined(
                separator: "\n\n"), text)
        func run(_ base: String) throws -> RunSummary {
            var o = RunOptions(base: .file(base), out: Self.tmp("bpe-run"))
            o.textFile = text
            o.train.steps = 3
            o.train.globalBatch = 2
            o.train.microBatch = 2
            o.train.seq = 32
            o.train.lora = LoRAConfig(rank: 2, alpha: 4, targets: [.q, .v])
            o.quiet = true
            var s: RunSummary?
            _ = try InProcessCommunicator.run(ranks: 1) { comm in
                s = try TrainRun(world: RecordingCommunicator(comm), options: o).run()
            }
            return s!
        }
        let s = try run(try baseDir(vocab: want.vocabSize + 7))
        XCTAssertTrue(s.tokenizer?.hasPrefix("GPT-2 BPE from ") == true, s.tokenizer ?? "no tokenizer in the summary")
        XCTAssertTrue(s.trainLossFirst!.isFinite && s.trainLossFinal!.isFinite)
        checkError(
            try run(try baseDir(vocab: 300)),
            ["the tokenizer has \(want.vocabSize) ids but the base's vocabulary only 300"])
    }

    /// The byte tokenizer may train a small random model on text whose bytes fit; bytes that do not are refused.
    func testDataBeyondTheVocabularyIsRefused() throws {
        let text = Self.tmp("bpe-bytes") + "/text.txt"
        write(String(repeating: "plain ascii and then ÿ ", count: 20), text)
        var o = RunOptions(
            base: .random(GPTConfig(nLayer: 1, nEmbd: 16, nHead: 2, vocabSize: 128, nPositions: 16), seed: 1),
            out: Self.tmp("bpe-run"))
        o.textFile = text
        o.train.seq = 16
        o.quiet = true
        checkError(
            try InProcessCommunicator.run(ranks: 1) { comm in
                _ = try TrainRun(world: RecordingCommunicator(comm), options: o).run()
            },
            ["holds token id 195, beyond the base's vocabulary of 128"])
    }
}
