import XCTest

@testable import LoRADist

/// Packed passes beyond the training step: the validation loss packed (no padding computed) equals
/// the one of one example per padded row, on GPT-2 and a Llama-family model at TP 1 and 2 and over
/// two data-parallel replicas.
final class PackedPassesTests: XCTestCase {
    static let seq = 12
    /// Tokens with a target of each example: Σ 79, Σ len² 693.
    static let lengths = [5, 12, 3, 9, 7, 2, 11, 4, 12, 6, 8]

    /// Random examples of `lengths` tokens with a target, the first two tokens of each a context.
    static func dataset(vocab: Int, seed: UInt64 = 5) -> TokenDataset {
        var rng = RNG(seed: seed)
        let ex = lengths.map {
            TokenizedExample(tokens: Fixtures.randomTokens($0 + 1, below: vocab, rng: &rng), lossFrom: 2)
        }
        return TokenDataset(tokenized: ex, seq: seq, source: "test")
    }

    /// The validation loss over every example in passes of `microBatch`, packed or one example per
    /// row, in activations of micro-batch × seq.
    func validationLoss(_ cfg: GPTConfig, world: Int, tp: Int, packing: Bool, microBatch: Int = 4) throws -> [Double] {
        let data = Self.dataset(vocab: cfg.vocabSize)
        let lora = cfg.family == .llama ? PackingTests.llamaLoRA : PackingTests.lora
        return try InProcessCommunicator.run(ranks: world) { comm in
            let grid = try ProcessGrid(world: comm, tp: tp)
            let m = try Fixtures.randomModel(
                cfg, grid.tp, trainable: Fixtures.trainable(.lora, lora: lora), baseSeed: 5)
            if let l = m.lora { Fixtures.initLoRA(l, seed: 9, nonZeroB: 0.5, bSeed: 4) }
            let acts = try m.activations(batch: microBatch, seq: Self.seq)
            return try Evaluate.loss(
                model: m, acts: acts, data: data, grid: grid, batch: MicroBatch(batch: microBatch, seq: Self.seq),
                packing: packing)
        }
    }

    func comparePackedValidationLoss(_ cfg: GPTConfig, world: Int? = nil, tp: Int) throws {
        let world = world ?? tp
        let label = "\(cfg.family) world \(world) tp \(tp)"
        let packed = try validationLoss(cfg, world: world, tp: tp, packing: true)
        let unpacked = try validationLoss(cfg, world: world, tp: tp, packing: false)
        XCTAssertEqual(packed.count, world, label)
        for (p, u) in zip(packed, unpacked) {
            XCTAssertTrue(u.isFinite && u > 1, "\(label): a random model's loss is about ln 61 (\(u))")
            XCTAssertEqual(p, u, accuracy: 1e-5 * abs(u), label)
        }
        XCTAssertEqual(Set(packed).count, 1, "\(label): every rank has the same loss")
    }

    func testGPT2PackedValidationLossAtTP1() throws { try comparePackedValidationLoss(Fixtures.tiny, tp: 1) }
    func testGPT2PackedValidationLossAtTP2() throws { try comparePackedValidationLoss(Fixtures.tiny, tp: 2) }
    func testLlamaPackedValidationLossAtTP1() throws { try comparePackedValidationLoss(Fixtures.llamaTiny, tp: 1) }
    func testLlamaPackedValidationLossAtTP2() throws { try comparePackedValidationLoss(Fixtures.llamaTiny, tp: 2) }
    func testPackedValidationLossOverTwoReplicas() throws {
        try comparePackedValidationLoss(Fixtures.tiny, world: 2, tp: 1)
    }
}
