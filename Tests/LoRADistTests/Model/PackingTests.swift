import XCTest

@testable import LoRADist

/// Packing: a micro-batch's examples laid end to end as its sequences compute what the same examples
/// compute unpacked, each in its own row padded to seq (loss, logits, LoRA's gradients and, in full
/// fine-tuning, the base's, GPT-2's position table included), on GPT-2 and a Llama-family model, at
/// TP 1, 2 and 4; and no token of one example sees another's.
final class PackingTests: XCTestCase {
    /// Five examples of different lengths (tokens with a target) in rows of 12: 36 rows packed, 60
    /// unpacked.
    static let lengths = [5, 9, 3, 12, 7]
    static let seq = 12
    static let lora = LoRAConfig(rank: 2, alpha: 4, targets: LoRATarget.available(in: .gpt2), dropout: 0.1)
    static let llamaLoRA = LoRAConfig(rank: 2, alpha: 4, targets: LoRATarget.available(in: .llama), dropout: 0.1)

    struct Example {
        var tokens: [Int32], targets: [Int32], mask: [Float]
    }

    /// Random examples of `lengths`; the first two tokens of each carry no loss (a context).
    static func examples(_ cfg: GPTConfig, seed: UInt64 = 3) -> [Example] {
        var rng = RNG(seed: seed)
        return lengths.map { len in
            Example(
                tokens: Fixtures.randomTokens(len, below: cfg.vocabSize, rng: &rng),
                targets: Fixtures.randomTokens(len, below: cfg.vocabSize, rng: &rng),
                mask: (0..<len).map { $0 < 2 ? 0 : 1 })
        }
    }

    /// The examples in a micro-batch of `lengths.count` rows of `seq`: packed, or one per row.
    static func microBatch(_ ex: [Example], packed: Bool) -> MicroBatch {
        let mb = MicroBatch(batch: ex.count, seq: seq)
        var r = 0
        for (b, e) in ex.enumerated() {
            let at = packed ? r : b * seq
            for t in 0..<e.tokens.count {
                mb.tokens[at + t] = e.tokens[t]
                mb.targets[at + t] = e.targets[t]
                mb.mask[at + t] = e.mask[t]
            }
            r += e.tokens.count
        }
        if packed { mb.lengths = ex.map(\.tokens.count) }
        return mb
    }

    struct Outcome {
        var loss: Double
        /// This rank's logits shard of each example's tokens, in order [Σ len, Vl].
        var logits: [Float]
        /// LoRA's gradients after the world AllReduce (the base's shard in full fine-tuning).
        var grads: [Float]
    }

    /// One forward, loss and backward of `ex` on `cfg` at TP `tp` (LoRA with dropout, or full
    /// fine-tuning), packed or not, in a training pass.
    static func run(
        _ cfg: GPTConfig, tp: Int, method: Method = .lora, packed: Bool, examples ex: [Example]
    ) throws -> [Outcome] {
        let mb = microBatch(ex, packed: packed)
        let masked = ex.reduce(0) { $0 + $1.mask.reduce(0, +) }
        for i in 0..<mb.rows { mb.weights[i] = mb.mask[i] / masked }
        let lora = cfg.family == .llama ? llamaLoRA : lora
        return try InProcessCommunicator.run(ranks: tp) { comm in
            let m = try Fixtures.randomModel(
                cfg, comm, trainable: Fixtures.trainable(method, lora: lora), baseSeed: 5)
            if let l = m.lora { Fixtures.initLoRA(l, seed: 9, nonZeroB: 0.5, bSeed: 4) }
            let acts = try m.activations(batch: ex.count, seq: seq)
            let context = PassContext(
                training: true, dropoutSeed: 77, dropoutStep: 3, rowOffset: 0, rowKeys: mb.rowKeys)
            var pass = try mb.tokens.withUnsafeBufferPointer {
                try m.forward(tokens: $0.baseAddress!, sequences: mb.sequences, into: acts, context: context)
            }
            XCTAssertEqual(pass.rows, packed ? lengths.reduce(0, +) : ex.count * seq)
            let loss = try m.lossForward(&pass, targets: mb.targets, weights: mb.weights, backward: false)
            let vl = m.layout.localVocab
            var logits: [Float] = []
            for (b, e) in ex.enumerated() {
                let at = packed ? mb.sequences.starts[b] : b * seq
                logits += Array(UnsafeBufferPointer(start: acts.logits + at * vl, count: e.tokens.count * vl))
            }
            _ = try m.lossForward(&pass, targets: mb.targets, weights: mb.weights, backward: true)
            try mb.tokens.withUnsafeBufferPointer { try m.backward(pass, tokens: $0.baseAddress!) }
            let g = m.trainable!.loraGradients ?? m.trainable!.baseGradients!.arena
            if method == .lora { try comm.allReduce(g.buffer, op: .sum) }
            return Outcome(loss: loss, logits: logits, grads: Array(g.buffer))
        }
    }

    /// ‖a − b‖ ≤ rel · ‖b‖ (Euclidean norms, in double): the same sums taken over other rows (a
    /// packed pass's GEMMs reduce over Σ len rows, an unpacked one's over the padded rows too), so
    /// entries that cancel to near zero differ by a few ulps of the whole, not of themselves.
    static func assertClose(_ a: [Float], _ b: [Float], rel: Double, _ label: String) {
        XCTAssertEqual(a.count, b.count, label)
        var diff = 0.0
        var norm = 0.0
        for (x, y) in zip(a, b) {
            diff += Double(x - y) * Double(x - y)
            norm += Double(y) * Double(y)
        }
        XCTAssertGreaterThan(norm.squareRoot(), 1e-3, "\(label): the values must be non-trivial")
        XCTAssertLessThanOrEqual(diff.squareRoot(), rel * norm.squareRoot(), label)
        if ProcessInfo.processInfo.environment["PACKING_ERRORS"] != nil {
            print("\(label): relative error \(diff.squareRoot() / norm.squareRoot())")
        }
    }

    func comparePackedWithUnpacked(_ cfg: GPTConfig, tp: Int, method: Method = .lora) throws {
        let ex = Self.examples(cfg)
        let label = "\(cfg.family) \(method.rawValue) tp \(tp)"
        let packed = try Self.run(cfg, tp: tp, method: method, packed: true, examples: ex)
        let unpacked = try Self.run(cfg, tp: tp, method: method, packed: false, examples: ex)
        for (p, u) in zip(packed, unpacked) {
            XCTAssertEqual(p.loss, u.loss, accuracy: 1e-5 * abs(u.loss), label)
            Self.assertClose(p.logits, u.logits, rel: 1e-5, label + " logits")
            Self.assertClose(p.grads, u.grads, rel: 1e-5, label + " gradients")
        }
    }

    func testGPT2PackedEqualsUnpackedAtTP1() throws { try comparePackedWithUnpacked(Fixtures.tiny, tp: 1) }
    func testGPT2PackedEqualsUnpackedAtTP2() throws { try comparePackedWithUnpacked(Fixtures.tiny, tp: 2) }
    func testGPT2PackedEqualsUnpackedAtTP4() throws { try comparePackedWithUnpacked(Fixtures.tiny, tp: 4) }
    func testLlamaPackedEqualsUnpackedAtTP1() throws { try comparePackedWithUnpacked(Fixtures.llamaTiny, tp: 1) }
    func testLlamaPackedEqualsUnpackedAtTP2() throws { try comparePackedWithUnpacked(Fixtures.llamaTiny, tp: 2) }
    func testLlamaPackedEqualsUnpackedAtTP4() throws { try comparePackedWithUnpacked(Fixtures.llamaTiny, tp: 4) }

    /// Full fine-tuning: the gradient of GPT-2's position table gathers each example's rows at
    /// their own positions (0 at each example's start).
    func testFullFineTuningPositionGradientsRestartPerExample() throws {
        try comparePackedWithUnpacked(Fixtures.tiny, tp: 1, method: .full)
        try comparePackedWithUnpacked(Fixtures.llamaTiny, tp: 2, method: .full)
    }

    /// Tokens of one example never see another's: changing example 1's tokens leaves every other
    /// example's logits in the packed micro-batch bit for bit as they were, and changes its own.
    func testPerturbingOneExampleLeavesTheOthersLogitsBitForBit() throws {
        for cfg in [Fixtures.tiny, Fixtures.llamaTiny] {
            for tp in [1, 2] {
                let ex = Self.examples(cfg)
                var changed = ex
                for t in 0..<changed[1].tokens.count {
                    changed[1].tokens[t] = (changed[1].tokens[t] + 7) % Int32(cfg.vocabSize)
                }
                let a = try Self.run(cfg, tp: tp, packed: true, examples: ex)
                let b = try Self.run(cfg, tp: tp, packed: true, examples: changed)
                for (ra, rb) in zip(a, b) {
                    let vl = ra.logits.count / Self.lengths.reduce(0, +)
                    var r = 0
                    for (k, len) in Self.lengths.enumerated() {
                        let range = (r * vl)..<((r + len) * vl)
                        if k == 1 {
                            XCTAssertNotEqual(Array(ra.logits[range]), Array(rb.logits[range]), "the changed example")
                        } else {
                            XCTAssertEqual(
                                Array(ra.logits[range]), Array(rb.logits[range]), "\(cfg.family) tp \(tp) example \(k)")
                        }
                        r += len
                    }
                }
            }
        }
    }

    /// A batch of rows of one length is one sequence per row: the packed form of equal lengths is
    /// the unpacked pass itself, bit for bit.
    func testEqualLengthsPackedAreTheRowsThemselves() throws {
        let cfg = Fixtures.tiny
        var rng = RNG(seed: 8)
        let n = 3 * Self.seq
        let tokens = Fixtures.randomTokens(n, below: cfg.vocabSize, rng: &rng)
        let targets = Fixtures.randomTokens(n, below: cfg.vocabSize, rng: &rng)
        let weights = Fixtures.meanWeights(n)
        let comm = try InProcessCommunicator.run(ranks: 1) { $0 }[0]
        let m = try Fixtures.randomModel(cfg, comm, trainable: .lora(Self.lora), baseSeed: 5)
        Fixtures.initLoRA(m.lora!, seed: 9, nonZeroB: 0.5, bSeed: 4)
        let acts = try m.activations(batch: 3, seq: Self.seq)
        func loss(_ seqs: Sequences) throws -> (Double, [Float]) {
            var pass = try tokens.withUnsafeBufferPointer {
                try m.forward(tokens: $0.baseAddress!, sequences: seqs, into: acts)
            }
            let l = try m.lossForward(&pass, targets: targets, weights: weights, backward: false)
            return (l, Array(UnsafeBufferPointer(start: acts.logits, count: n * m.layout.localVocab)))
        }
        let rows = try loss(.uniform(batch: 3, length: Self.seq))
        let listed = try loss(Sequences(lengths: [Self.seq, Self.seq, Self.seq]))
        XCTAssertEqual(rows.0, listed.0)
        XCTAssertEqual(rows.1, listed.1)
        let batched = try tokens.withUnsafeBufferPointer {
            try m.forward(tokens: $0.baseAddress!, batch: 3, len: Self.seq, into: acts)
        }
        XCTAssertEqual(batched.sequences, Sequences(lengths: [Self.seq, Self.seq, Self.seq]))
    }
}
