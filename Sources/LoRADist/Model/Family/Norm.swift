/// A decoder's norm over rows of the model's width d: LayerNorm (GPT-2) or RMSNorm (the Llama
/// family), each forward next to its backward.
protocol Norm {
    /// y = norm(x) for each row of x [n, d] with the parameters `p`, saving the row statistics the
    /// backward reads (LayerNorm: mean and rstd; RMSNorm: rstd alone).
    func forward(
        _ y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
        _ x: UnsafePointer<Float>, _ p: NormParameters, n: Int)
    /// dx += the input gradient of dy at the norm's output; the parameters' gradients into `g`.
    func backward(
        _ dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
        mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>, _ p: NormParameters, _ g: NormGradients,
        n: Int)
}

/// A norm's parameters: γ, and LayerNorm's β (nil where the family's norm has none).
struct NormParameters {
    let gamma: UnsafePointer<Float>
    let beta: UnsafePointer<Float>?
}

/// Where a norm's backward adds its parameters' gradients: γ and β in full fine-tuning, β alone
/// under BitFit, neither when the norm is frozen.
struct NormGradients {
    var gamma: UnsafeMutablePointer<Float>? = nil
    var beta: UnsafeMutablePointer<Float>? = nil
}

extension BaseWeights {
    /// The norm parameters at offsets `gamma` and `beta` (−1: the norm has no β).
    func norm(_ gamma: Int, _ beta: Int) -> NormParameters {
        NormParameters(gamma: ptr(gamma), beta: beta < 0 ? nil : ptr(beta))
    }
}

/// GPT-2's LayerNorm: y = (x − mean) · rstd · γ + β.
struct LayerNorm: Norm {
    let d: Int, eps: Float

    func forward(
        _ y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
        _ x: UnsafePointer<Float>, _ p: NormParameters, n: Int
    ) {
        K.layerNormForward(y, mean, rstd, x, p.gamma, p.beta!, n: n, d: d, eps: eps)
    }

    func backward(
        _ dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
        mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>, _ p: NormParameters, _ g: NormGradients,
        n: Int
    ) {
        if let dgamma = g.gamma {
            K.layerNormBackward(dx, dgamma, g.beta, dy, x, p.gamma, mean, rstd, n: n, d: d)
        } else {
            K.layerNormBackward(dx, nil, nil, dy, x, p.gamma, mean, rstd, n: n, d: d)
            // BitFit: β alone, whose gradient is dy summed over rows.
            if let dbeta = g.beta { K.biasBackward(dbeta, dy, rows: n, cols: d, ld: d) }
        }
    }
}

/// The Llama family's RMSNorm: y = x · rstd · γ, rstd = 1/√(mean(x²) + ε). It has no β (a β
/// gradient given to it is never written).
struct RMSNorm: Norm {
    let d: Int, eps: Float

    func forward(
        _ y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
        _ x: UnsafePointer<Float>, _ p: NormParameters, n: Int
    ) {
        K.rmsNormForward(y, rstd, x, p.gamma, n: n, d: d, eps: eps)
    }

    func backward(
        _ dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
        mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>, _ p: NormParameters, _ g: NormGradients,
        n: Int
    ) {
        K.rmsNormBackward(dx, g.gamma, dy, x, p.gamma, rstd, n: n, d: d)
    }
}
