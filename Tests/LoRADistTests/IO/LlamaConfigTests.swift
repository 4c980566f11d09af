import Foundation
import XCTest

@testable import LoRADist

/// Llama-family config.json files as transformers 4 and 5 write them (Llama 3 with its rope
/// scaling, Qwen2 with q/k/v biases, Mistral with a sliding window), what is refused and why, the
/// shape's parameter count against the published sizes, its tensor-parallel key/value layout, and
/// the GPT-2 shape's bytes and text kept as before (adapter files and run fingerprints hold them).
final class LlamaConfigTests: XCTestCase {
    func parse(_ json: String) throws -> GPTConfig { try ModelFiles.parse(Data(json.utf8), source: "config.json") }

    func assertRefused(_ json: String, _ message: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(json), file: file, line: line) {
            XCTAssertTrue("\($0)".contains(message), "\($0)\nwanted: \(message)", file: file, line: line)
        }
    }

    static let llama3 = """
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 160,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
         "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": false,
         "attention_bias": false, "mlp_bias": false, "rope_theta": 500000.0,
         "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64}}
        """

    func testLlama3ConfigAsTransformers4WroteIt() throws {
        let c = try parse(Self.llama3)
        XCTAssertEqual(
            c,
            .llama(
                nLayer: 2, nEmbd: 64, nHead: 4, nKVHead: 2, ffn: 160, vocabSize: 300, nPositions: 128, normEps: 1e-5,
                ropeTheta: 500_000,
                ropeScaling: .init(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 64),
                tiedHead: false, qkvBias: false))
        XCTAssertEqual(c.family, .llama)
        XCTAssertEqual(c.headDim, 16)
    }

    func testRopeParametersAsTransformers5WritesThem() throws {
        let c = try parse(
            """
            {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, \
            "num_attention_heads": 4,
             "vocab_size": 300, "max_position_embeddings": 128,
             "rope_parameters": {"rope_type": "llama3", "rope_theta": 250000.0, "factor": 4.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 2.0, "original_max_position_embeddings": 32}}
            """)
        XCTAssertEqual(c.ropeTheta, 250_000)
        XCTAssertEqual(c.ropeScaling, .init(factor: 4, lowFreqFactor: 1, highFreqFactor: 2, originalMaxPositions: 32))
        XCTAssertEqual(c.nKVHead, 4, "num_key_value_heads defaults to the query heads")
        XCTAssertEqual(c.lnEps, 1e-6, "rms_norm_eps defaults to transformers' 1e-6")
        let plain = try parse(
            """
            {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, \
            "num_attention_heads": 4,
             "vocab_size": 300, "max_position_embeddings": 128, "rope_parameters": {"rope_type": "default", \
            "rope_theta": 10000.0}}
            """)
        XCTAssertNil(plain.ropeScaling)
        XCTAssertEqual(plain.ropeTheta, 10_000)
    }

    func testQwen2HasQKVBiasesAndMistralsSlidingWindowBoundsTheContext() throws {
        let q = try parse(
            """
            {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, \
            "num_attention_heads": 4,
             "num_key_value_heads": 1, "vocab_size": 300, "max_position_embeddings": 256, "rope_theta": 1000000.0,
             "tie_word_embeddings": true, "use_sliding_window": false, "sliding_window": 32, "rms_norm_eps": 1e-6}
            """)
        XCTAssertTrue(q.qkvBias && q.tiedHead)
        XCTAssertEqual(q.nKVHead, 1)
        XCTAssertEqual(q.nPositions, 256, "the window is off: the whole context")
        let m = try parse(
            """
            {"model_type": "mistral", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, \
            "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 1024, "sliding_window": 96}
            """)
        XCTAssertFalse(m.qkvBias || m.tiedHead)
        XCTAssertEqual(m.nPositions, 96, "sequences up to the window compute as full attention")
    }

    func testWhatWouldComputeSomethingElseIsRefusedByName() {
        // (text of the Llama 3 config, replaced by, the message)
        let cases: [(String, String, String)] = [
            (#""silu""#, #""gelu""#, "hidden_act gelu"),
            (#""mlp_bias": false"#, #""mlp_bias": true"#, "mlp_bias = true"),
            (
                #""attention_bias": false"#, #""attention_bias": true"#,
                "attention_bias = true (biases on q, k, v and o_proj)"
            ),
            (
                #""hidden_act": "silu""#, #""hidden_act": "silu", "head_dim": 32"#,
                "head_dim 32 differs from hidden_size / num_attention_heads = 16"
            ),
            (#""llama3""#, #""yarn""#, "rope type yarn"),
            (#""num_key_value_heads": 2"#, #""num_key_value_heads": 3"#, "do not form groups over 3 key/value heads"),
            (
                #""llama""#, #""gemma""#,
                "model_type gemma: lora-dist runs GPT-2 (gpt2) and the Llama family (llama, qwen2, mistral)"
            ),
            (
                #""hidden_size": 64"#, #""hidden_size": "64""#,
                #"hidden_size must be a whole number, got the string "64""#
            ),
            (
                #""vocab_size": 300"#, #""vocab_size": 1000000000"#,
                "vocab_size 1000000000 is beyond any Llama-family model"
            ),
            (
                #""original_max_position_embeddings": 64"#, #""original_max": 64"#,
                "rope type llama3 needs original_max_position_embeddings"
            ),
            (#""rms_norm_eps": 1e-5"#, #""rms_norm_eps": -1"#, "rms_norm_eps must be a small positive number, got -1")
        ]
        for (text, replaced, message) in cases {
            XCTAssertTrue(Self.llama3.contains(text), text)
            assertRefused(Self.llama3.replacingOccurrences(of: text, with: replaced), message)
        }
    }

    /// The published sizes of SmolLM2-135M (134,515,008 parameters) and Qwen2.5-0.5B (494,032,768),
    /// both tied; and an untied shape counted by hand.
    func testParameterCountsEqualThePublishedSizes() {
        XCTAssertEqual(GPTConfig.named("smollm2-135m")!.parameterCount, 134_515_008)
        XCTAssertEqual(GPTConfig.named("qwen2.5-0.5b")!.parameterCount, 494_032_768)
        let c = GPTConfig.llama(nLayer: 2, nEmbd: 8, nHead: 2, nKVHead: 1, ffn: 12, vocabSize: 10, nPositions: 16)
        // embed + head 2·80; per layer: 2 norms 16, q 64, k 32, v 32, o 64, gate/up/down 3·96; final norm 8.
        XCTAssertEqual(c.parameterCount, 160 + 2 * (16 + 64 + 32 + 32 + 64 + 288) + 8)
    }

    /// Key/value heads split when the degree divides them; each kept whole on the ranks whose
    /// query heads read it when there are fewer of them than ranks; refused otherwise.
    func testKeyValueHeadsOfEachRankServeItsQueryHeads() throws {
        for (heads, kv, degrees) in [(4, 2, [1, 2, 4]), (4, 1, [1, 2, 4]), (8, 4, [2, 4, 8]), (14, 2, [2])] {
            let c = GPTConfig.llama(
                nLayer: 1, nEmbd: 16 * heads, nHead: heads, nKVHead: kv, ffn: 64, vocabSize: 64, nPositions: 8)
            for p in degrees {
                var held = [Int](repeating: 0, count: kv)
                for r in 0..<p {
                    let t = try TPLayout(config: c, degree: p, rank: r)
                    XCTAssertEqual(t.kvHeadRange.count, t.localKVHeads)
                    XCTAssertEqual(t.kvReplicated, kv < p)
                    for h in (r * t.localHeads)..<((r + 1) * t.localHeads) {
                        XCTAssertTrue(
                            t.kvHeadRange.contains(h / (heads / kv)),
                            "heads \(heads) kv \(kv) tp \(p) rank \(r): query head \(h)")
                    }
                    t.kvHeadRange.forEach { held[$0] += 1 }
                }
                XCTAssertEqual(
                    held, [Int](repeating: max(1, p / kv), count: kv),
                    "every key/value head held by p / kv ranks (or one)")
            }
        }
        let c = GPTConfig.llama(nLayer: 1, nEmbd: 96, nHead: 6, nKVHead: 3, ffn: 64, vocabSize: 64, nPositions: 8)
        XCTAssertThrowsError(try TPLayout(config: c, degree: 2, rank: 0)) {
            XCTAssertTrue(
                "\($0)".contains("--tp 2 neither divides the 3 key/value heads nor is a multiple of them"), "\($0)")
        }
        XCTAssertThrowsError(try TPLayout(config: GPTConfig.named("smollm2-135m")!, degree: 2, rank: 0)) {
            XCTAssertTrue("\($0)".contains("--tp 2 does not divide the number of heads 9"), "\($0)")
        }
    }

    /// A GPT-2 shape is written and printed exactly as before the Llama family (the text of a run's
    /// fingerprint, the bytes of an adapter's metadata); a Llama shape round-trips whole.
    func testGPT2ShapesKeepTheirBytesAndLlamaShapesRoundTrip() throws {
        let tiny = GPTConfig.named("tiny")!
        XCTAssertEqual(
            "\(tiny)", "GPTConfig(nLayer: 4, nEmbd: 128, nHead: 4, vocabSize: 257, nPositions: 192, lnEps: 1e-05)")
        // The encoding Swift synthesised for the six fields before.
        struct Before: Codable {
            var nLayer, nEmbd, nHead, vocabSize, nPositions: Int
            var lnEps: Float
        }
        XCTAssertEqual(
            try compactJSON(tiny),
            try compactJSON(Before(nLayer: 4, nEmbd: 128, nHead: 4, vocabSize: 257, nPositions: 192, lnEps: 1e-5)))
        XCTAssertEqual(try JSONDecoder().decode(GPTConfig.self, from: Data(try compactJSON(tiny).utf8)), tiny)
        // The command line changes a named shape's fields after building it: GPT-2's MLP width and
        // key/value heads follow, so the shape equals one built with those values.
        var changed = tiny
        changed.nLayer = 1
        changed.nEmbd = 8
        changed.nHead = 2
        XCTAssertEqual(changed, GPTConfig(nLayer: 1, nEmbd: 8, nHead: 2, vocabSize: 257, nPositions: 192))
        XCTAssertEqual(changed.ffn, 32)
        XCTAssertEqual(changed.nKVHead, 2)
        let q = try parse(Self.llama3)
        let back = try JSONDecoder().decode(GPTConfig.self, from: Data(try compactJSON(q).utf8))
        XCTAssertEqual(back, q)
        XCTAssertTrue("\(q)".contains("family: llama, nKVHead: 2, ffn: 160"), "\(q)")
    }
}
