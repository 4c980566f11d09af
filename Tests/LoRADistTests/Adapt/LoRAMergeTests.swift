import XCTest

@testable import LoRADist

/// LoRA's algebra on the model: B = 0 reproduces the base bit for bit; merged and unmerged LoRA
/// give the same logits (tolerance 2e-5 absolute); merge then unmerge restores W0 (to 1e-6, the
/// rounding of adding and subtracting the same product); greedy decoding with the KV cache equals
/// decoding without it — on one rank and on TP=2/4 in-process.
final class LoRAMergeTests: XCTestCase {
    static let cfg = Fixtures.tiny(nPositions: 24)
    static let batch = 2, seq = 9

    static func model(
        _ comm: Communicator, targets: [LoRATarget] = LoRATarget.available(in: .gpt2), nonZeroB: Bool = true
    ) throws -> GPTModel {
        let m = try Fixtures.randomModel(
            cfg, comm, trainable: .lora(LoRAConfig(rank: 3, alpha: 6, targets: targets)),
            training: false, baseSeed: 8)
        if nonZeroB {
            Fixtures.initLoRA(m.lora!, seed: 3, nonZeroB: 0.5, bSeed: 6)
        } else {
            m.lora!.initialize(seed: 3)
        }
        return m
    }

    static let tokens = Fixtures.randomTokens(batch * seq, below: cfg.vocabSize, seed: 2)

    static func logits(_ m: GPTModel) throws -> [Float] {
        let acts = try m.activations(batch: batch, seq: seq, training: false)
        var pass = try tokens.withUnsafeBufferPointer {
            try m.forward(tokens: $0.baseAddress!, batch: batch, len: seq, into: acts)
        }
        let n = batch * seq
        _ = try m.lossForward(&pass, targets: tokens, weights: [Float](repeating: 0, count: n), backward: false)
        return Array(UnsafeBufferPointer(start: acts.logits, count: n * m.layout.localVocab))
    }

    func testZeroBReproducesTheBaseModelExactly() throws {
        for tp in [1, 2, 4] {
            let pairs = try InProcessCommunicator.run(ranks: tp) { comm -> ([Float], [Float]) in
                let base = try Self.model(comm, nonZeroB: false)
                let withLoRA = try Self.logits(base)
                let plain = try Fixtures.randomModel(Self.cfg, comm, training: false, baseSeed: 8)
                return (withLoRA, try Self.logits(plain))
            }
            for (a, b) in pairs { XCTAssertEqual(a, b, "B = 0 must give the base logits bit for bit (tp \(tp))") }
        }
    }

    func testMergedAndUnmergedLoRAGiveTheSameLogits() throws {
        for tp in [1, 2, 4] {
            let res = try InProcessCommunicator.run(ranks: tp) { comm -> (Float, Float, Float) in
                let m = try Self.model(comm)
                let w0 = Array(m.base.arena.buffer)
                let unmerged = try Self.logits(m)
                m.loraRuntime?.merge()
                let merged = try Self.logits(m)
                m.loraRuntime?.unmerge()
                let restored = Array(m.base.arena.buffer)
                let plain = try Fixtures.randomModel(Self.cfg, comm, training: false, baseSeed: 8)
                let base = try Self.logits(plain)
                let diff = zip(unmerged, merged).map { abs($0 - $1) }.max()!
                let effect = zip(unmerged, base).map { abs($0 - $1) }.max()!
                let drift = zip(w0, restored).map { abs($0 - $1) }.max()!
                return (diff, effect, drift)
            }
            for (diff, effect, drift) in res {
                XCTAssertLessThan(diff, 2e-5, "merged vs unmerged, tp \(tp)")
                XCTAssertGreaterThan(effect, 1e-2, "the LoRA must change the logits for the test to mean anything")
                XCTAssertLessThan(drift, 1e-6, "unmerge must restore W0, tp \(tp)")
            }
        }
    }

    func testGreedyDecodingWithKVCacheEqualsDecodingWithout() throws {
        for tp in [1, 2, 4] {
            let res = try InProcessCommunicator.run(ranks: tp) { comm -> ([Int32], [Int32]) in
                let m = try Self.model(comm)
                let prompt: [Int32] = [5, 17, 3, 44]
                let g = Generator(m)
                let a = try g.greedy(prompt: prompt, maxNew: 12, stop: nil, useCache: true)
                let b = try g.greedy(prompt: prompt, maxNew: 12, stop: nil, useCache: false)
                return (a, b)
            }
            for (a, b) in res {
                XCTAssertEqual(a.count, 12)
                XCTAssertEqual(a, b, "tp \(tp)")
                XCTAssertEqual(a, res[0].0, "all TP ranks decode the same tokens")
            }
        }
    }
}
