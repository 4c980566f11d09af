/// The activation between the MLP's two projections: GELU over c_fc's output (GPT-2), or SwiGLU
/// over gate | up (the Llama family). It sets how wide the first projection is.
protocol MLPActivation {
    /// Columns of the first projection per hidden unit: 1 (c_fc) or 2 (gate and up).
    var inputsPerHidden: Int { get }
    /// Whether the backward may write its input gradient over its output gradient (GELU, elementwise);
    /// SwiGLU's input gradient is twice as wide and needs a buffer of its own.
    var backwardInPlace: Bool { get }
    /// h [rows, width] from the first projection's output pre [rows, inputsPerHidden · width].
    func forward(_ h: UnsafeMutablePointer<Float>, _ pre: UnsafePointer<Float>, rows: Int, width: Int)
    /// dpre [rows, inputsPerHidden · width] from dh [rows, width] (written, not accumulated; dpre
    /// may be dh itself when `backwardInPlace`).
    func backward(
        _ dpre: UnsafeMutablePointer<Float>, dh: UnsafePointer<Float>, pre: UnsafePointer<Float>,
        rows: Int, width: Int)
}

/// GPT-2's GELU (tanh approximation) over mlp.c_fc's output.
struct GELU: MLPActivation {
    var inputsPerHidden: Int { 1 }
    var backwardInPlace: Bool { true }

    func forward(_ h: UnsafeMutablePointer<Float>, _ pre: UnsafePointer<Float>, rows: Int, width: Int) {
        K.geluForward(h, pre, rows * width)
    }

    func backward(
        _ dpre: UnsafeMutablePointer<Float>, dh: UnsafePointer<Float>, pre: UnsafePointer<Float>,
        rows: Int, width: Int
    ) {
        K.geluBackward(dpre, pre, dh, rows * width)
    }
}

/// The Llama family's SwiGLU, silu(gate) · up, over the fused gate | up output (each row gate's
/// `width` columns, then up's).
struct SwiGLU: MLPActivation {
    var inputsPerHidden: Int { 2 }
    var backwardInPlace: Bool { false }

    func forward(_ h: UnsafeMutablePointer<Float>, _ pre: UnsafePointer<Float>, rows: Int, width: Int) {
        K.swigluForward(h, ldh: width, gate: pre, up: pre + width, ldgu: 2 * width, rows: rows, cols: width)
    }

    func backward(
        _ dpre: UnsafeMutablePointer<Float>, dh: UnsafePointer<Float>, pre: UnsafePointer<Float>,
        rows: Int, width: Int
    ) {
        K.swigluBackward(
            dgate: dpre, dup: dpre + width, ldd: 2 * width, dh: dh, ldh: width, gate: pre, up: pre + width,
            ldgu: 2 * width, rows: rows, cols: width)
    }
}

extension TPLayout {
    /// Width of this rank's MLP input projection's output: c_fc's 4d/p, or gate | up (2 · intermediate/p).
    public var localMLPIn: Int { config.family.table.activation.inputsPerHidden * localFFN }
}
