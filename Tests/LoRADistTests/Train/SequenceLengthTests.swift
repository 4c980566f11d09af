import XCTest

@testable import LoRADist

/// With no --seq on completion data the sequence length is the longest training example's, at most
/// the model's context: a base whose context is shorter than the longest example trains on the
/// examples that fit and counts the others; --seq stays the override.
final class SequenceLengthTests: XCTestCase {
    static func options(context: Int, out: String) -> RunOptions {
        let cfg = GPTConfig(nLayer: 1, nEmbd: 16, nHead: 2, vocabSize: 257, nPositions: context)
        var o = RunOptions(base: .random(cfg, seed: 3), out: out)
        o.train.steps = 2
        o.train.globalBatch = 4
        o.train.microBatch = 4
        o.train.lora = LoRAConfig(rank: 2, alpha: 4, targets: [.q, .v])
        o.evalExamples = 0
        o.validLimit = 4
        o.quiet = true
        o.seqFromData = true
        return o
    }

    func run(_ o: RunOptions) throws -> RunSummary {
        try InProcessCommunicator.run(ranks: 1) { comm in
            try TrainRun(world: RecordingCommunicator(comm), options: o).run()
        }[0]
    }

    /// The built-in task's training examples in the byte-level tokens its base reads.
    static func lengths() throws -> [Int] {
        let data = try TokenDataset(
            examples: BuiltinTask.standardSplits().train, tokenizer: ByteTokenizer(), seq: 1 << 20, source: "built-in")
        return data.examples.map { $0.tokens.count - 1 }
    }

    func testTheLongestExampleSetsTheSequenceLength() throws {
        let lengths = try Self.lengths()
        let longest = lengths.max()!
        let s = try run(Self.options(context: 256, out: makeTempDir("seqdata")))
        XCTAssertEqual(s.seq, longest)
        XCTAssertEqual(s.droppedTooLong, 0)
        XCTAssertEqual(s.tokensPerStep, 4 * longest)
    }

    func testAShortContextTrainsOnTheExamplesThatFit() throws {
        let lengths = try Self.lengths()
        let context = 96
        let tooLong = lengths.filter { $0 > context }.count
        XCTAssertGreaterThan(tooLong, 0, "the built-in task must have examples longer than \(context)")
        XCTAssertLessThan(tooLong, lengths.count)
        let s = try run(Self.options(context: context, out: makeTempDir("seqdata")))
        XCTAssertEqual(s.seq, context)
        XCTAssertEqual(s.droppedTooLong, tooLong)
        XCTAssertNotNil(s.trainLossFinal)
        XCTAssertTrue(s.trainLossFinal!.isFinite)
    }

    func testSeqStaysTheOverride() throws {
        var o = Self.options(context: 256, out: makeTempDir("seqdata"))
        o.seqFromData = false
        o.train.seq = 100
        let s = try run(o)
        XCTAssertEqual(s.seq, 100)
        XCTAssertEqual(s.droppedTooLong, try Self.lengths().filter { $0 > 100 }.count)
    }

    /// A checkpoint of a run with --seq 168 (the default before the data set the sequence length)
    /// resumes without --seq: the run takes the checkpoint's 168, not the data's longest example,
    /// and ends where the uninterrupted run ends, byte for byte.
    func testAResumeWithoutSeqTakesTheCheckpointsSeq() throws {
        XCTAssertNotEqual(try Self.lengths().max()!, 168, "the data alone must give another sequence length")
        let a = makeTempDir("seqresume")
        var whole = Self.options(context: 256, out: a)
        whole.seqFromData = false
        whole.train.seq = 168
        whole.train.steps = 3
        whole.saveEvery = 1
        XCTAssertEqual(try run(whole).seq, 168)
        let b = makeTempDir("seqresume")
        var resumed = Self.options(context: 256, out: b)
        resumed.train.steps = 3
        resumed.saveEvery = 1
        resumed.resume = Checkpoint.dir(a, step: 1)
        let s = try run(resumed)
        XCTAssertEqual(s.seq, 168)
        XCTAssertEqual(s.resumedFrom, 1)
        let fa = try Data(contentsOf: URL(fileURLWithPath: a + "/adapter.safetensors"))
        let fb = try Data(contentsOf: URL(fileURLWithPath: b + "/adapter.safetensors"))
        XCTAssertEqual(fa, fb, "the resumed run's adapter is the uninterrupted run's")
    }
}
