import Foundation
import XCTest

@testable import LoRADist
@testable import LoRADistServe

/// The serving engine's greedy tokens equal PEFT's, GPT-2 and the Llama family: three LoRA adapters
/// of ranks 2, 5 and 8 with A and B both non-zero, loaded as PEFT directories, serve their prompts
/// and the bare base's in one mixed batch at TP 1 and TP 2 (the in-process communicator); each
/// prompt's tokens equal PEFT's `generate` on that prompt alone with its adapter, from the same
/// prompt ids (reference/peft_greedy_tokens.py), and the adapters change the tokens. GPT-2: the
/// built-in base models/tiny-base.safetensors and adapters PEFT itself wrote at random
/// (reference/peer_serve_peft.py --make-adapters). Llama: the fixture of
/// reference/make_llama_fixture.py (made by this class: LlamaParityTests removes its own when it
/// ends; its own tokenizer) and random adapters PEFTAdapter.save exports. Without Python it fails.
final class ServePEFTParityTests: XCTestCase {
    static let dir = makeTempDir("serve-peft-parity")
    static let llamaFixture: Result<String, Error> = Result {
        let d = dir + "/llama-fixture"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        _ = try PythonReference.check("make_llama_fixture.py", [d])
        return d
    }
    static let maxTokens = 12

    override class func tearDown() {
        try? FileManager.default.removeItem(atPath: dir)
        super.tearDown()
    }

    /// (adapter name or nil for the base, prompt); cases 0 and 3, 2 and 5 share a prompt.
    static let cases: [(String?, String)] = [
        ("r2", "name=Blue"), ("r5", "food=Thai|area=riverside"), ("r8", "hello"), (nil, "name=Blue"),
        ("r8", "the quick brown fox"), (nil, "hello")
    ]

    /// The base of `family` and its PEFT adapter directories of ranks 2, 5 and 8 (alpha 2r), by name.
    static func setUpFamily(_ family: ModelFamily) throws -> (base: String, adapters: [String: String]) {
        var out: [String: String] = [:]
        if family == .gpt2 {
            let base = Launcher.root.appendingPathComponent("models/tiny-base.safetensors").path
            for rank in [2, 5, 8] {
                let d = dir + "/gpt2-r\(rank)"
                _ = try PythonReference.check(
                    "peer_serve_peft.py",
                    [
                        "--base", base, "--make-adapters", d, "--count", "1", "--rank", String(rank), "--alpha",
                        String(2 * rank), "--seed", String(rank)
                    ])
                out["r\(rank)"] = d + "/a0"
            }
            return (base, out)
        }
        let base = try llamaFixture.get() + "/llama/base"
        let (cfg, _) = try LlamaFiles.open(base)
        let targets: [(Int, [LoRATarget])] = [
            (2, [.q, .v]), (5, LoRATarget.available(in: .llama)), (8, [.k, .o, .up, .down])
        ]
        for (rank, t) in targets {
            let d = dir + "/llama-r\(rank)"
            let l = LlamaPEFTTests.filled(
                LoRAConfig(rank: rank, alpha: Float(2 * rank), targets: t), cfg, seed: UInt64(rank))
            try PEFTAdapter.save(l, to: d, baseModel: base)
            out["r\(rank)"] = d
        }
        return (base, out)
    }

    /// PEFT's greedy tokens, each case alone (a batch of one, no padding), from `tokenizer`'s ids.
    static func peftTokens(
        _ family: ModelFamily, base: String, adapters: [String: String], tokenizer: any Tokenizer
    ) throws -> [[Int32]] {
        let spec: [[String: Any]] = cases.map {
            ["adapter": $0.0.map { adapters[$0]! } ?? NSNull(), "ids": tokenizer.encodeStart($0.1).map { Int($0) }]
        }
        let file = dir + "/\(family)-cases.json"
        try JSONSerialization.data(withJSONObject: spec).write(to: URL(fileURLWithPath: file))
        let out = try PythonReference.check(
            "peft_greedy_tokens.py",
            [
                "--base", base, "--cases", file, "--max-tokens", String(maxTokens), "--eos",
                String(tokenizer.eot)
            ])
        let line = try XCTUnwrap(out.split(separator: "\n").last { $0.hasPrefix("{") }, out)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        let rows = try XCTUnwrap(json["tokens"] as? [[Int]], line.description)
        return rows.map { $0.map { Int32($0) } }
    }

    /// Every case submitted together to one engine on `tp` ranks (one step holds them all).
    static func served(
        base: String, adapters: [String: String], tokenizer: any Tokenizer, tp: Int
    ) throws -> (tokens: [[Int32]], metrics: EngineMetrics) {
        let list = adapters.keys.sorted().map { (name: $0, path: adapters[$0]!) }
        let out = try InProcessCommunicator.run(ranks: tp) { comm -> ([[Int32]], EngineMetrics)? in
            let runner = try StepRunner(
                comm: comm, base: .file(base), adapters: list, maxAdapters: 4, maxBatch: cases.count,
                tokenBudget: 128)
            guard comm.rank == 0 else {
                try runner.follow()
                return nil
            }
            let engine = try BatchingEngine(runner: runner, tokenizer: tokenizer, heartbeat: 0.2)
            let streams = try cases.map {
                try engine.submit(
                    CompletionRequest(
                        adapter: $0.0, model: $0.0 ?? "base", prompt: $0.1, maxTokens: maxTokens, temperature: 0))
            }
            engine.stop()
            try engine.run()
            let tokens = try streams.map { BatchingEngineTests.tokens(try BatchingEngineTests.drain($0).get()) }
            return (tokens, engine.metrics())
        }
        let first = try XCTUnwrap(out[0])
        return (first.0, first.1)
    }

    func check(_ family: ModelFamily) throws {
        let (base, adapters) = try Self.setUpFamily(family)
        let tokenizer = try TokenizerChoice.forBase(.file(base), override: nil)
        if family == .llama { XCTAssertFalse(tokenizer is ByteTokenizer, "the fixture's own tokenizer") }
        let peft = try Self.peftTokens(family, base: base, adapters: adapters, tokenizer: tokenizer)
        XCTAssertEqual(peft.count, Self.cases.count)
        // The adapters change the tokens: the same prompt on r2 and on the base, r8 and the base.
        XCTAssertNotEqual(peft[0], peft[3], "\(family): adapter r2 must change PEFT's greedy tokens")
        XCTAssertNotEqual(peft[2], peft[5], "\(family): adapter r8 must change PEFT's greedy tokens")
        for tp in [1, 2] {
            let s = try Self.served(base: base, adapters: adapters, tokenizer: tokenizer, tp: tp)
            let label = "\(family) tp \(tp)"
            XCTAssertEqual(s.tokens.count, Self.cases.count, label)
            for (i, c) in Self.cases.enumerated() {
                XCTAssertEqual(s.tokens[i], peft[i], "\(label) case \(i) (\(c.0 ?? "base"), \(c.1)) vs PEFT")
                XCTAssertFalse(s.tokens[i].isEmpty, "\(label) case \(i)")
            }
            // All six were in one step: a mixed batch of three adapters and the base.
            XCTAssertEqual(s.metrics.batchSizes.keys.max(), Self.cases.count, "\(label) \(s.metrics.batchSizes)")
            XCTAssertEqual(s.metrics.completionsByAdapter, ["r2": 1, "r5": 1, "r8": 2, "": 2], label)
        }
    }

    func testMixedBatchGreedyTokensEqualPEFTGenerateGPT2() throws { try check(.gpt2) }

    func testMixedBatchGreedyTokensEqualPEFTGenerateLlama() throws { try check(.llama) }
}
