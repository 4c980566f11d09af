/// How a family stores a linear layer's weight W, whose op is [in, out] (y = x · op(W)): GPT-2's
/// Conv1D as [in, out], used as stored; the Llama family's nn.Linear as [out, in], read transposed.
enum WeightOrientation {
    case inOut
    case outIn

    /// The stored shape of a weight of `inputs` rows and `outputs` columns as op(W).
    func stored(inputs: Int, outputs: Int) -> (rows: Int, cols: Int) {
        switch self {
        case .inOut: return (inputs, outputs)
        case .outIn: return (outputs, inputs)
        }
    }

    /// op(W) [in, out] of the stored matrix.
    func op(_ stored: Mat) -> Mat {
        switch self {
        case .inOut: return stored
        case .outIn: return stored.T
        }
    }
}
