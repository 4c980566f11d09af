import XCTest

@testable import LoRADist

/// Packed passes beyond the training step: the validation loss packed (no padding computed) equals
/// the one of one example per padded row, on GPT-2 and a Llama-family model at TP 1 and 2 and over
/// two data-parallel replicas; training's activations are planned for the largest packed micro-batch
/// the run's data makes (`Batcher.packedBound`), a run trains within them, and a micro-batch that
/// would not fit stops its step with a message.
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

    static func options(microBatch: Int, globalBatch: Int, steps: Int = 1) -> TrainOptions {
        var o = TrainOptions()
        o.microBatch = microBatch
        o.globalBatch = globalBatch
        o.seq = seq
        o.steps = steps
        o.seed = 11
        return o
    }

    /// The validation loss over every example in passes of `microBatch`, packed in activations
    /// planned for its largest pass or one example per row in activations of micro-batch × seq.
    func validationLoss(_ cfg: GPTConfig, world: Int, tp: Int, packing: Bool, microBatch: Int = 4) throws -> [Double] {
        let data = Self.dataset(vocab: cfg.vocabSize)
        let o = Self.options(microBatch: microBatch, globalBatch: microBatch * world / tp)
        let bound = Batcher.packedBound(
            train: data, valid: data, validExamples: data.count, options: o, steps: 1, dp: world / tp)
        let lora = cfg.family == .llama ? PackingTests.llamaLoRA : PackingTests.lora
        return try InProcessCommunicator.run(ranks: world) { comm in
            let grid = try ProcessGrid(world: comm, tp: tp)
            let m = try Fixtures.randomModel(
                cfg, grid.tp, trainable: Fixtures.trainable(.lora, lora: lora), baseSeed: 5)
            if let l = m.lora { Fixtures.initLoRA(l, seed: 9, nonZeroB: 0.5, bSeed: 4) }
            let acts = try m.activations(batch: microBatch, seq: Self.seq, packed: packing ? bound : nil)
            XCTAssertEqual(acts.n, packing ? bound.rows : microBatch * Self.seq)
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

    /// One micro-batch of the whole data per step: whatever the shuffle, its rows are Σ len and its
    /// squares Σ len²; the activations hold exactly that.
    func testTheBoundOfOneMicroBatchOfAllTheDataIsItsLengths() throws {
        let data = Self.dataset(vocab: 61)
        let o = Self.options(microBatch: 11, globalBatch: 11, steps: 3)
        let bound = Batcher.packedBound(train: data, options: o, steps: 3, dp: 1)
        XCTAssertEqual(bound, PackedCapacity(rows: 79, squares: 693))
        let (packed, unpacked) = try InProcessCommunicator.run(ranks: 1) { comm in
            let m = try Fixtures.randomModel(
                Fixtures.tiny, comm, trainable: Fixtures.trainable(.lora, lora: PackingTests.lora), baseSeed: 5)
            return (
                try m.activations(batch: 11, seq: Self.seq, packed: bound), try m.activations(batch: 11, seq: Self.seq)
            )
        }[0]
        XCTAssertEqual(packed.n, 79)
        XCTAssertEqual(packed.probabilities, 693)
        XCTAssertEqual(unpacked.n, 11 * 12)
        XCTAssertEqual(unpacked.probabilities, 11 * 12 * 12)
        XCTAssertLessThan(packed.bytes, unpacked.bytes)
    }

    /// Over several epochs, two replicas and two micro-batches each: the bound is the largest
    /// micro-batch the batchers of both replicas fill (rows and Σ len² each), the validation's
    /// passes included.
    func testTheBoundIsTheLargestMicroBatchTheBatchersFill() throws {
        let data = Self.dataset(vocab: 61)
        let valid = Self.dataset(vocab: 61, seed: 8)
        let o = Self.options(microBatch: 2, globalBatch: 8, steps: 9)
        var rows = 0
        var squares = 0
        for replica in 0..<2 {
            let batcher = Batcher(data: data, seed: o.seed, globalBatch: o.globalBatch)
            let micro = (0..<o.accumulation(dp: 2)).map { _ in MicroBatch(batch: 2, seq: Self.seq) }
            for _ in 0..<o.steps {
                _ = batcher.next(into: micro, options: o, replica: replica, dp: 2)
                for mb in micro {
                    rows = max(rows, mb.sequences.rows)
                    squares = max(squares, mb.sequences.squares)
                }
            }
        }
        XCTAssertEqual(
            Batcher.packedBound(train: data, options: o, steps: o.steps, dp: 2), .init(rows: rows, squares: squares))
        // The validation's passes: two consecutive examples each (its first two: 5 + 12, 25 + 144).
        let withValid = Batcher.packedBound(
            train: data, valid: valid, validExamples: 2, options: o, steps: o.steps, dp: 2)
        XCTAssertEqual(withValid, .init(rows: max(rows, 17), squares: max(squares, 169)))
    }

    /// A run trains over its data within activations planned for the bound (a micro-batch beyond
    /// them would stop the step); with --packing off they are micro-batch × seq as before.
    func testATrainingRunPlansItsActivationsForItsData() throws {
        for packing in [true, false] {
            var o = SequenceLengthTests.options(context: 256, out: makeTempDir("packedbound"))
            o.train.steps = 3
            o.train.microBatch = 2
            o.train.packing = packing
            let (bytes, n, squares, seq) = try InProcessCommunicator.run(ranks: 1) { comm in
                let run = try TrainRun(world: RecordingCommunicator(comm), options: o)
                let s = try run.run()
                XCTAssertNotNil(s.evalLossAfter)
                let a = run.trainer.activations
                return (s.activationBytesPerRank, a.n, a.probabilities, run.options.train.seq)
            }[0]
            var sized = o
            sized.train.seq = seq
            let data = try RunData.sized(o, context: 256, vocabSize: 257, say: { _ in }).data
            XCTAssertEqual(data.train.longest, seq)
            let bound = Batcher.packedBound(
                train: data.train, valid: data.valid, validExamples: 4, options: sized.train, steps: 3, dp: 1)
            XCTAssertEqual(n, packing ? bound.rows : 2 * seq, "packing \(packing)")
            XCTAssertEqual(squares, packing ? bound.squares : 2 * seq * seq, "packing \(packing)")
            XCTAssertGreaterThan(bytes, 0)
            if packing { XCTAssertLessThan(bound.rows, 2 * seq) }
        }
    }

    /// A micro-batch built by hand beyond the activations (more rows, or the rows fit but not Σ
    /// len²) stops its step with a message instead of writing past them; one that fits trains.
    func testAMicroBatchBeyondThePlannedActivationsStopsTheStep() throws {
        let cfg = Fixtures.tiny
        var o = Self.options(microBatch: 2, globalBatch: 2)
        o.lora = PackingTests.lora
        let results = try InProcessCommunicator.run(ranks: 1) { comm -> [String] in
            let world = RecordingCommunicator(comm)
            let grid = try ProcessGrid(world: world, tp: 1)
            let trainer = try Trainer(
                grid: grid, ledger: world.ledger, config: cfg, base: try RandomInitSource(config: cfg, seed: 2),
                options: o, adapters: nil, packed: PackedCapacity(rows: 10, squares: 50))
            XCTAssertEqual(trainer.activations.n, 10)
            XCTAssertEqual(trainer.activations.probabilities, 50)
            var out: [String] = []
            for lengths in [[6, 6], [7, 3], [5, 5]] {
                let mb = MicroBatch(batch: 2, seq: Self.seq)
                for i in 0..<lengths.reduce(0, +) {
                    mb.tokens[i] = Int32(i % cfg.vocabSize)
                    mb.targets[i] = Int32((i + 1) % cfg.vocabSize)
                    mb.mask[i] = 1
                }
                mb.lengths = lengths
                do {
                    _ = try trainer.trainStep([mb], globalTokens: lengths.reduce(0, +))
                    out.append("trained")
                } catch let e as TrainError {
                    out.append(e.description)
                }
            }
            return out
        }[0]
        XCTAssertEqual(results.count, 3)
        XCTAssertTrue(results[0].contains("12 tokens and Σ len² 72 does not fit the activations"), results[0])
        XCTAssertTrue(results[0].contains("10 tokens and Σ len² 50"), results[0])
        XCTAssertTrue(results[1].contains("10 tokens and Σ len² 58 does not fit"), results[1])
        XCTAssertEqual(results[2], "trained")
    }
}
