import XCTest

@testable import LoRADist

/// The Llama family's tokenizer.json variants: reference/make_llama_fixture.py (run once per class
/// into a temporary directory) trains a Llama-3-style, a Qwen2-style and a SmolLM2-style byte-level
/// BPE with `tokenizers` and records the ids, the post-processor's tokens and the text `tokenizers`
/// gives for the GPT-2 test's varied corpus and strings aimed at these pre-tokenizers. Also: the
/// pre-tokenizer regexes on hand-checked strings, GPT-2's regex as a Split step, the end-of-text
/// token, linear time on long runs, and refusals naming the key of what is not implemented.
/// Needs Python with tokenizers, transformers and regex; without them these tests fail, never skip.
final class LlamaTokenizerTests: XCTestCase {
    static let styles = ["llama3", "qwen2", "smollm2"]

    static let fixture: Result<String, Error> = Result {
        let dir = makeTempDir("llama-tokenizers")
        _ = try PythonReference.check("make_llama_fixture.py", [dir, "--tokenizers-only"])
        return dir + "/tokenizers"
    }

    override class func tearDown() {
        if case .success(let dir) = fixture {
            try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent)
        }
        super.tearDown()
    }

    func expected(_ style: String) throws -> (dir: String, want: [String: Any]) {
        let dir = try Self.fixture.get() + "/" + style
        let o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/expected.json")))
        return (dir, o as! [String: Any])
    }

    func ids(_ o: Any?) -> [Int32] { (o as! [Int]).map(Int32.init) }

    func checkMatchesTokenizers(_ t: GPT2Tokenizer, _ want: [String: Any], _ style: String) {
        XCTAssertEqual(t.eot, Int32(want["eot"] as! Int), style)
        XCTAssertEqual(t.vocabSize, want["vocab_size"] as! Int, style)
        let cases = want["cases"] as! [[String: Any]]
        XCTAssertGreaterThan(cases.count, 500)
        var failures = 0  // the first few are enough to read
        for c in cases where failures < 20 {
            let text = c["text"] as! String
            let got = t.encode(text)
            let checks: [(Bool, String)] = [
                (got == ids(c["ids"]), "ids \(got), tokenizers \(ids(c["ids"]))"),
                (
                    t.encode(text, addSpecialTokens: true) == ids(c["ids_special"]),
                    "ids with the post-processor's tokens"
                ),
                // Bytes, not String ==, which would accept a canonically equivalent text.
                (Array(t.decode(got).utf8) == Array((c["decoded"] as! String).utf8), "decoded text"),
                (
                    got.map { Array(t.decode([$0]).utf8) } == (c["pieces"] as! [String]).map { Array($0.utf8) },
                    "each id decoded alone"
                )
            ]
            for (ok, what) in checks where !ok {
                failures += 1
                XCTFail("\(style), \(text.debugDescription): \(what)")
            }
        }
        for c in want["lossy"] as! [[String: Any]] {
            XCTAssertEqual(
                Array(t.decode(ids(c["ids"])).utf8), Array((c["decoded"] as! String).utf8), "\(style): lossy decode")
        }
    }

    func testIdsMatchTokenizersForEachStyle() throws {
        for style in Self.styles {
            let (dir, want) = try expected(style)
            checkMatchesTokenizers(try GPT2Tokenizer.load(dir + "/tokenizer.json"), want, style)
            // From the directory, with its tokenizer_config.json: the same tokenizer.
            let t = try GPT2Tokenizer.load(dir)
            XCTAssertEqual(t.eot, Int32(want["eot"] as! Int))
            XCTAssertTrue(t.description.hasPrefix("byte-level BPE ("), t.description)
        }
    }

    /// Each style's ids depend on what sets it apart: ignore_merges, NFC, the digit rules.
    func testTheVariantsDiffer() throws {
        let llama = try GPT2Tokenizer.load(try expected("llama3").dir)
        let qwen = try GPT2Tokenizer.load(try expected("qwen2").dir)
        let smol = try GPT2Tokenizer.load(try expected("smollm2").dir)
        XCTAssertEqual(
            llama.description.contains("Split(Llama-3), ByteLevel(no regex), ignore_merges"), true, llama.description)
        XCTAssertEqual(qwen.description.contains("NFC, Split(Qwen2), ByteLevel(no regex)"), true, qwen.description)
        XCTAssertEqual(smol.description.contains("Digits(individual), ByteLevel"), true, smol.description)
        XCTAssertEqual(llama.encode("12345"), llama.encode("123") + llama.encode("45"), "digits in threes")
        for t in [qwen, smol] {
            XCTAssertEqual(t.encode("12345"), "12345".flatMap { t.encode(String($0)) }, "each digit alone")
        }
        XCTAssertEqual(qwen.encode("cafe\u{301}"), qwen.encode("caf\u{e9}"), "NFC first")
        XCTAssertNotEqual(llama.encode("cafe\u{301}"), llama.encode("caf\u{e9}"))
        XCTAssertEqual(
            qwen.encode("<\u{2126}>"), qwen.encode("<\u{3a9}>"), "a normalized added token is found in the NFC text")
        XCTAssertEqual(qwen.encode("<\u{3a9}>").count, 1)
        XCTAssertEqual(llama.encode("x", addSpecialTokens: true), llama.prefix + llama.encode("x"))
    }

    func pieces(_ p: BPEPreTokenizer, _ s: String) -> [String] {
        var out: [String] = []
        p.pieces(ArraySlice(s.utf8)) { out.append(String(decoding: $0, as: UTF8.self)) }
        return out
    }

    /// Hand-checked splits (the same `tokenizers` gives): contractions in any case (ſ folds to s),
    /// letters after one non-letter, digits in threes or ones, line breaks ending whitespace runs.
    func testPreTokenizersSplitLikeTheirRegexes() {
        let llama = BPEPreTokenizer(stages: [.split(.llama3)], byteLevelRegex: false)
        let qwen = BPEPreTokenizer(stages: [.split(.qwen2)], byteLevelRegex: false)
        XCTAssertEqual(
            pieces(llama, "Hello  world's\n\n x 12345 IT'S"),
            ["Hello", " ", " world", "'s", "\n\n", " x", " ", "123", "45", " IT", "'S"])
        XCTAssertEqual(
            pieces(qwen, "Hello  world's\n\n x 12345 IT'S"),
            ["Hello", " ", " world", "'s", "\n\n", " x", " ", "1", "2", "3", "4", "5", " IT", "'S"])
        XCTAssertEqual(pieces(llama, "a \r\n b!!\n\n?\t\tc"), ["a", " \r\n", " b", "!!\n\n", "?", "\t", "\tc"])
        XCTAssertEqual(pieces(llama, "'\u{17f}x 'Ll's"), ["'\u{17f}", "x", " '", "Ll", "'s"])
        XCTAssertEqual(pieces(llama, "'RE'Ve'x"), ["'RE", "'Ve", "'x"])
        XCTAssertEqual(pieces(llama, "  \n  x\n"), ["  \n", " ", " x", "\n"])
        XCTAssertEqual(pieces(llama, ""), [])
        let smol = BPEPreTokenizer(stages: [.digits(individual: true)])
        XCTAssertEqual(pieces(smol, "abc 123 x1"), ["abc", " ", "1", "2", "3", " x", "1"])
        // add_prefix_space puts a space before every piece the byte-level step gets.
        XCTAssertEqual(
            pieces(BPEPreTokenizer(stages: [.digits(individual: true)], addPrefixSpace: true), "ab12 cd"),
            [" ab", " 1", " 2", " cd"])
    }

    /// GPT-2's regex as a Split step before a ByteLevel without one gives GPT-2's ids.
    func testGPT2RegexAsASplitGivesGPT2sIds() throws {
        guard let gpt2 = TokenizerFixtures.gpt2 else {
            return XCTFail("no GPT-2 tokenizer fixture (reference/make_tokenizer_fixture.py failed)")
        }
        var root =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: gpt2 + "/tokenizer.json")))
            as! [String: Any]
        root["pre_tokenizer"] = [
            "type": "Sequence",
            "pretokenizers": [
                [
                    "type": "Split", "pattern": ["Regex": BPEPreTokenizer.Pattern.gpt2.rawValue],
                    "behavior": "Isolated", "invert": false
                ],
                ["type": "ByteLevel", "add_prefix_space": false, "use_regex": false]
            ]
        ]
        let d = makeTempDir("split-gpt2")
        try JSONSerialization.data(withJSONObject: root).write(to: URL(fileURLWithPath: d + "/tokenizer.json"))
        let t = try GPT2Tokenizer.load(d)
        let want =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: gpt2 + "/expected.json")))
            as! [String: Any]
        for c in want["cases"] as! [[String: Any]] {
            XCTAssertEqual(t.encode(c["text"] as! String), ids(c["ids"]), (c["text"] as! String).debugDescription)
        }
    }

    /// Long runs of one class cost linear time: each scanner moves forward only, and looks no
    /// further than its piece needs (rescanning the rest of a digit run for each piece made a
    /// 300,000-digit number take half a minute; linear, it takes hundredths of a second).
    func testLongRunsEncodeInLinearTime() throws {
        for style in Self.styles {
            let t = try GPT2Tokenizer.load(try expected(style).dir)
            let t0 = Date()
            let unit = style == "llama3" ? "777" : "7"
            XCTAssertEqual(
                t.encode(String(repeating: "7", count: 600_000)),
                Array(repeating: t.encode(unit), count: 600_000 / unit.count).flatMap { $0 })
            XCTAssertEqual(
                t.encode(String(repeating: " ", count: 200_000) + "x"),
                t.encode(String(repeating: " ", count: 199_999)) + t.encode(" x"))
            XCTAssertEqual(
                t.decode(t.encode(String(repeating: " \n", count: 100_000))), String(repeating: " \n", count: 100_000))
            XCTAssertEqual(
                t.decode(t.encode(String(repeating: "'", count: 200_000))), String(repeating: "'", count: 200_000))
            XCTAssertLessThan(Date().timeIntervalSince(t0), 4, style)
        }
    }

    func write(_ o: Any, _ path: String) throws {
        try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: path))
    }

    /// tokenizer_config.json's eos_token chooses the end-of-text token, and must be a token.
    func testEndOfTextFollowsTokenizerConfig() throws {
        let (dir, _) = try expected("llama3")
        let d = makeTempDir("llama-eos")
        try FileManager.default.copyItem(atPath: dir + "/tokenizer.json", toPath: d + "/tokenizer.json")
        let plain = try GPT2Tokenizer.load(d)
        XCTAssertEqual(plain.decode([plain.eot]), "<|end_of_text|>")
        try write(["eos_token": ["content": "<|eot_id|>", "special": true]], d + "/tokenizer_config.json")
        let chat = try GPT2Tokenizer.load(d)
        XCTAssertEqual(chat.decode([chat.eot]), "<|eot_id|>")
        XCTAssertEqual(chat.encode("<|eot_id|>"), [chat.eot])
        try write(["eos_token": "<|nope|>"], d + "/tokenizer_config.json")
        XCTAssertThrowsError(try GPT2Tokenizer.load(d)) {
            XCTAssertTrue("\($0)".contains("eos_token \"<|nope|>\" is not a token of"), "\($0)")
        }
    }

    /// What lora-dist does not implement is refused, naming the key.
    func testUnimplementedPartsAreRefusedByKey() throws {
        let (dir, _) = try expected("llama3")
        let base =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/tokenizer.json")))
            as! [String: Any]
        let d = makeTempDir("llama-refused")
        func refused(_ edit: (inout [String: Any]) -> Void, _ parts: [String], line: UInt = #line) throws {
            var root = base
            edit(&root)
            try write(root, d + "/tokenizer.json")
            XCTAssertThrowsError(try GPT2Tokenizer.load(d + "/tokenizer.json"), line: line) { e in
                for p in parts + ["lora-dist reads byte-level BPE tokenizers only"] {
                    XCTAssertTrue("\(e)".contains(p), "\"\(e)\" should say \(p)", line: line)
                }
            }
        }
        func split(_ f: [String: Any]) -> [String: Any] {
            ["type": "Sequence", "pretokenizers": [f, ["type": "ByteLevel", "use_regex": false]]]
        }
        let llamaSplit: [String: Any] = [
            "type": "Split", "pattern": ["Regex": BPEPreTokenizer.Pattern.llama3.rawValue], "behavior": "Isolated",
            "invert": false
        ]
        try refused({ $0["normalizer"] = ["type": "NFKC"] }, ["the normalizer is NFKC (normalizer.type)"])
        try refused(
            { $0["normalizer"] = ["type": "Sequence", "normalizers": [["type": "NFC"], ["type": "Lowercase"]]] },
            ["(normalizer.normalizers[1].type)"])
        try refused(
            { $0["pre_tokenizer"] = split(["type": "Metaspace"]) },
            ["the pre-tokenizer is Metaspace (pre_tokenizer.pretokenizers[0].type)"])
        try refused(
            { $0["pre_tokenizer"] = split(["type": "Split", "pattern": ["Regex": "\\s+"], "behavior": "Isolated"]) },
            [
                "the Split regex (pre_tokenizer.pretokenizers[0].pattern.Regex) is not one lora-dist implements",
                "\"\\s+\""
            ])
        try refused(
            { $0["pre_tokenizer"] = split(["type": "Split", "pattern": ["String": " "], "behavior": "Isolated"]) },
            ["pre_tokenizer.pretokenizers[0].pattern is not a Regex"])
        try refused(
            {
                var s = llamaSplit
                s["behavior"] = "Removed"
                $0["pre_tokenizer"] = split(s)
            }, ["pre_tokenizer.pretokenizers[0].behavior is Removed"])
        try refused(
            {
                var s = llamaSplit
                s["invert"] = true
                $0["pre_tokenizer"] = split(s)
            }, ["pre_tokenizer.pretokenizers[0].invert is set"])
        try refused(
            { $0["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [llamaSplit]] },
            ["does not end in ByteLevel (pre_tokenizer)"])
        try refused(
            { $0["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [["type": "ByteLevel"], llamaSplit]] },
            ["pre_tokenizer.pretokenizers[0] is ByteLevel before the last step"])
        try refused({ $0["decoder"] = ["type": "Metaspace"] }, ["the decoder is Metaspace (decoder.type)"])
        try refused(
            { $0["post_processor"] = ["type": "RobertaProcessing"] },
            ["the post-processor RobertaProcessing (post_processor.type)"])
        try refused(
            {
                $0["post_processor"] = [
                    "type": "TemplateProcessing", "single": [["SpecialToken": ["id": "<x>", "type_id": 0]]]
                ]
            },
            ["post_processor.single[0] is neither a SpecialToken of its special_tokens nor the one sequence A"])
        try refused(
            {
                var m = $0["model"] as! [String: Any]
                m["byte_fallback"] = true
                $0["model"] = m
            }, ["model.byte_fallback is set"])
        try refused(
            {
                var a = $0["added_tokens"] as! [[String: Any]]
                a[1]["lstrip"] = true
                $0["added_tokens"] = a
            }, ["(added_tokens[1].lstrip)"])
        // A template token beyond the vocabulary.
        var root = base
        var post = root["post_processor"] as! [String: Any]
        var procs = post["processors"] as! [[String: Any]]
        procs[1]["special_tokens"] = [
            "<|begin_of_text|>": ["id": "<|begin_of_text|>", "ids": [99_999], "tokens": ["<|begin_of_text|>"]]
        ]
        post["processors"] = procs
        root["post_processor"] = post
        try write(root, d + "/tokenizer.json")
        XCTAssertThrowsError(try GPT2Tokenizer.load(d + "/tokenizer.json")) {
            XCTAssertTrue("\($0)".contains("the post-processor's prefix token id 99999 is not a token"), "\($0)")
        }
    }
}
