import XCTest

@testable import LoRADist

/// The fuzz targets (what launch/fuzz runs under libFuzzer with AddressSanitizer) over real files
/// and random mutations of them, and the inputs the fuzzer found, each now refused with its message.
final class FuzzTargetTests: XCTestCase {
    func tmp() -> String { makeTempDir("fuzzt") }

    /// Real files of each target, written by lora-dist itself.
    func seeds() throws -> [(String, Data)] {
        let d = tmp()
        let cfg = GPTConfig(nLayer: 2, nEmbd: 8, nHead: 2, vocabSize: 16, nPositions: 8)
        let lora = LoRAWeights(
            config: LoRAConfig(rank: 2, alpha: 4, targets: LoRATarget.available(in: .gpt2)), model: cfg)
        lora.initialize(seed: 3)
        try AdapterFile.save(
            lora, base: BaseIdentity(config: cfg, fingerprint: "f", source: "s"), to: d + "/adapter.safetensors")
        try PEFTAdapter.save(lora, to: d + "/peft", baseModel: nil)
        let llama = LoRAWeights(
            config: LoRAConfig(
                rank: 2, alpha: 4, targets: LoRATarget.available(in: .llama), rankPattern: ["gate_proj": 3]),
            model: FuzzTargets.peftLlamaModel)
        llama.initialize(seed: 3)
        try PEFTAdapter.save(llama, to: d + "/peft-llama", baseModel: nil)
        let state = CheckpointState(step: 2, loader: LoaderPosition(), fingerprint: "f", world: 1, tp: 1)
        let v = (0..<16).map { Float($0) }
        try SafeTensorsFile.write(
            path: d + "/rank-0.safetensors", tensors: [("params", [16], v), ("adam.m", [16], v), ("adam.v", [16], v)],
            metadata: [
                "format": Checkpoint.format, "checksum": Checkpoint.checksum([v, v, v]), "adam_t": "2",
                "state": try compactJSON(state)
            ])
        let (handVocab, handMerges) = (TokenizerFixtures.handVocab, TokenizerFixtures.handMerges)
        let vocab = try JSONSerialization.data(withJSONObject: handVocab)
        let merges = Data(("#version: 0.2\n" + handMerges.joined(separator: "\n")).utf8)
        let tok = try JSONSerialization.data(withJSONObject: [
            "model": ["type": "BPE", "vocab": handVocab, "merges": handMerges],
            "pre_tokenizer": ["type": "ByteLevel", "add_prefix_space": false]
        ])
        // The Llama-3 variant: Split by its regex, ByteLevel without one, ignore_merges, NFC, <|begin_of_text|> before
        // the text.
        let llamaTok = try JSONSerialization.data(withJSONObject: [
            "model": ["type": "BPE", "vocab": handVocab, "merges": handMerges, "ignore_merges": true],
            "normalizer": ["type": "NFC"],
            "pre_tokenizer": [
                "type": "Sequence",
                "pretokenizers": [
                    [
                        "type": "Split", "pattern": ["Regex": BPEPreTokenizer.Pattern.llama3.rawValue],
                        "behavior": "Isolated", "invert": false
                    ],
                    ["type": "ByteLevel", "add_prefix_space": false, "use_regex": false]
                ]
            ],
            "added_tokens": [
                ["id": 262, "content": "<|endoftext|>", "special": true, "normalized": false],
                ["id": 263, "content": "<|begin_of_text|>", "special": true, "normalized": false]
            ],
            "post_processor": [
                "type": "TemplateProcessing",
                "single": [
                    ["SpecialToken": ["id": "<|begin_of_text|>", "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]]
                ],
                "special_tokens": [
                    "<|begin_of_text|>": ["id": "<|begin_of_text|>", "ids": [263], "tokens": ["<|begin_of_text|>"]]
                ]
            ],
            "decoder": ["type": "ByteLevel"]
        ])
        func read(_ p: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: p)) }
        return [
            ("safetensors", try read(d + "/adapter.safetensors")), ("adapter", try read(d + "/adapter.safetensors")),
            ("checkpoint", try read(d + "/rank-0.safetensors")), ("safetensors", try read(d + "/rank-0.safetensors")),
            ("config", try JSONSerialization.data(withJSONObject: ModelFiles.hfConfigJSON(.named("gpt2")!))),
            ("peft-config", try read(d + "/peft/adapter_config.json")),
            ("peft-config-llama", try read(d + "/peft-llama/adapter_config.json")),
            ("tokenizer-json", tok), ("tokenizer-json", llamaTok),
            ("vocab-merges", vocab + Data([0]) + merges),
            ("jsonl", Data(try JSONLines.encode(BuiltinTask.splits(train: 8, valid: 1, test: 1, seed: 1).train).utf8))
        ]
    }

    func testRealFilesAreAcceptedAndMutationsReadConsistentlyOrRefused() throws {
        var rng = RNG(seed: 77)
        for (target, data) in try seeds() {
            XCTAssertTrue(FuzzTargets.run(target, data), "\(target): the real file is accepted")
            var accepted = 0
            var refused = 0
            for _ in 0..<150 {
                var x = data
                for _ in 0..<(1 + rng.below(3)) {
                    switch rng.below(3) {
                    case 0: x[rng.below(x.count)] = UInt8(rng.below(256))
                    case 1: x.insert(UInt8(rng.below(256)), at: rng.below(x.count + 1))
                    default: x = x.prefix(max(1, rng.below(x.count)))
                    }
                }
                if FuzzTargets.run(target, x) { accepted += 1 } else { refused += 1 }
            }
            XCTAssertGreaterThan(refused, 0, "\(target): some mutations are refused")
        }
    }

    /// What fuzzing found: an empty file (through FileManager.contents(atPath:) this Foundation
    /// leaked a buffer, which LeakSanitizer reported; TextFile reads with read(2)); token ids far
    /// beyond the tokens, which sized the tokenizer's tables by the id (half a gigabyte of RSS in a
    /// mutated tokenizer.json). And what writing the adapter target showed: metadata describing a
    /// huge LoRA would have been allocated before its tensors were found missing.
    func testInputsTheFuzzerFoundAreRefusedWithTheirMessage() throws {
        for t in ["jsonl", "tokenizer-json", "vocab-merges", "peft-config", "peft-config-llama", "config"] {
            XCTAssertFalse(FuzzTargets.run(t, Data()), t)
        }
        let d = tmp()
        var v = TokenizerFixtures.handVocab
        v["far"] = 2_000_000_000
        try JSONSerialization.data(withJSONObject: v).write(to: URL(fileURLWithPath: d + "/vocab.json"))
        try Data("#version: 0.2\n".utf8).write(to: URL(fileURLWithPath: d + "/merges.txt"))
        XCTAssertThrowsError(try GPT2Tokenizer.load(d)) {
            XCTAssertTrue(
                "\($0)".contains("\(d)/vocab.json is corrupt: token id 2000000000 is far beyond the 264 tokens"),
                "\($0)")
        }
        // An adapter file claiming gpt2-xl with rank 1600 on everything, holding a few values.
        let huge = BaseIdentity(config: .named("gpt2-xl")!, fingerprint: "f", source: "s")
        try SafeTensorsFile.write(
            path: d + "/a.safetensors", tensors: [("lora.h.0.q.A", [1, 4], [0, 0, 0, 0])],
            metadata: [
                "format": AdapterFile.format,
                "lora": try compactJSON(LoRAConfig(rank: 1600, targets: LoRATarget.available(in: .gpt2))),
                "base": try compactJSON(huge)
            ])
        XCTAssertThrowsError(try AdapterFile.header(d + "/a.safetensors")) {
            XCTAssertTrue(
                "\($0)".contains(
                    "the file holds 4 values but its LoRA (r 1600 on q,k,v,o,mlp_in,mlp_out, 48 layers, d 1600) has"),
                "\($0)")
        }
        try SafeTensorsFile.write(
            path: d + "/b.safetensors", tensors: [("x", [1], [0])],
            metadata: [
                "format": AdapterFile.format, "lora": try compactJSON(LoRAConfig(rank: 4)),
                "base": try compactJSON(
                    BaseIdentity(
                        config: GPTConfig(nLayer: 1 << 30, nEmbd: 8, nHead: 2, vocabSize: 16, nPositions: 8),
                        fingerprint: "f", source: "s"))
            ])
        XCTAssertThrowsError(try AdapterFile.header(d + "/b.safetensors")) {
            XCTAssertTrue(
                "\($0)".contains("adapter metadata describes no valid LoRA: n_layer 1073741824 is beyond any GPT-2"),
                "\($0)")
        }
    }
}
