/// One forward pass of a model: its shape, its context, the activations it wrote, and how far a
/// loss has taken the gradient at the LM head. `GPTModel.forward` returns it; `lossForward` reads
/// it and records what it left for the head; `backward` reads that. The order of a training step
/// is carried by this value, not by state on the model.
public struct ForwardPass {
    /// The pass's sequences over its rows: the loss and backward work on exactly these rows.
    public let sequences: Sequences
    /// Dropout and label smoothing, the same for the loss and the backward of this pass.
    public let context: PassContext
    /// The buffers the pass wrote: its caller's (a trainer's, a decoder's).
    public let acts: Activations
    /// What the last loss of this pass left for the head's backward.
    public internal(set) var head = HeadGradient.none

    /// Rows (tokens) of the pass: Σ of its sequences' lengths.
    public var rows: Int { sequences.rows }
    /// Sequences of the pass.
    public var batch: Int { sequences.count }
    /// Positions of each sequence when they all have the same length (a batch of rows; decoding),
    /// else of the longest one.
    public var length: Int { sequences.uniformLength ?? sequences.maxLength }
}

/// The sequences of a pass as consecutive token ranges over its rows: sequence i is rows
/// starts[i] ..< starts[i] + lengths[i], and the next one starts where it ends (no gaps).
/// Attention is causal within each sequence only and positions restart at each one's start, so a
/// micro-batch of examples laid end to end (packed) computes what each example computes alone,
/// over Σ len rows and Σ len² attention scores. A batch of equal rows is one sequence per row.
public struct Sequences: Equatable, Sendable {
    public let lengths: [Int]
    public let starts: [Int]
    /// Where each sequence's attention probabilities start, per head: Σ len² of the ones before it
    /// (a head of sequence i holds lengths[i]² of them, after sequence i's earlier heads).
    public let squareStarts: [Int]
    /// Σ len: the pass's rows.
    public let rows: Int
    /// Σ len².
    public let squares: Int
    /// The length all sequences share (a batch of rows), nil when they differ.
    public let uniformLength: Int?

    public init(lengths: [Int]) {
        precondition(lengths.allSatisfy { $0 >= 0 }, "a sequence has a negative length")
        self.lengths = lengths
        var starts: [Int] = []
        var sq: [Int] = []
        starts.reserveCapacity(lengths.count)
        sq.reserveCapacity(lengths.count)
        var r = 0
        var s = 0
        for len in lengths {
            starts.append(r)
            sq.append(s)
            r += len
            s += len * len
        }
        self.starts = starts
        squareStarts = sq
        rows = r
        squares = s
        let first = lengths.first ?? 0
        uniformLength = lengths.allSatisfy { $0 == first } ? first : nil
    }

    /// `batch` rows of `length` positions each.
    public static func uniform(batch: Int, length: Int) -> Sequences {
        Sequences(lengths: [Int](repeating: length, count: batch))
    }

    public var count: Int { lengths.count }
    public var maxLength: Int { lengths.max() ?? 0 }
}

/// What a loss has done with the gradient at the LM head.
public enum HeadGradient: Sendable {
    /// None yet: no loss, or one without backward.
    case none
    /// weight · ∂loss/∂logits of every row is in acts.logits: backward runs the head's backward.
    case logits
    /// The loss ran the head's backward itself, block by block (its logits did not fit whole):
    /// backward only reduces the head's input gradient.
    case done
}
