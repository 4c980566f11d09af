/// One forward pass of a model: its shape, its context, the activations it wrote, and how far a
/// loss has taken the gradient at the LM head. `GPTModel.forward` returns it; `lossForward` reads
/// it and records what it left for the head; `backward` reads that. The order of a training step
/// is carried by this value, not by state on the model.
public struct ForwardPass {
    /// Sequences, and positions per sequence: the loss and backward work on exactly these rows.
    public let batch: Int, length: Int
    /// Dropout and label smoothing, the same for the loss and the backward of this pass.
    public let context: PassContext
    /// The buffers the pass wrote: its caller's (a trainer's, a decoder's).
    public let acts: Activations
    /// What the last loss of this pass left for the head's backward.
    public internal(set) var head = HeadGradient.none

    /// Rows (tokens) of the pass.
    public var rows: Int { batch * length }
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
