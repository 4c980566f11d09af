/// What a method updates, as the optimizer and the gradient sync see it: one contiguous run of fp32
/// values with its gradients, whether those are TP shards (their squares summed over the TP group
/// for the norm) or whole on every rank, the group the `grad-sync` AllReduce sums them over, and
/// how the model picks up changed values. Every per-method rule of the trainer lives here.
public struct Trainables {
    public let values: UnsafeMutablePointer<Float>
    public let grads: UnsafeMutablePointer<Float>
    public let count: Int
    public let method: Method
    /// The group `grad-sync` sums over: "world" for LoRA, "dp" for a TP shard (`Method.gradientGroup`).
    public var syncGroup: String { method.gradientGroup }
    /// Whether any of it is a TP shard, so the norm needs the TP group's sum.
    public let sharded: Bool
    /// Σg² of this rank's gradients: (TP-sharded part, part whole on every rank).
    let squares: () -> (sharded: Double, whole: Double)
    /// Makes the model compute with the values after they changed (an update, a restored checkpoint).
    let publish: () -> Void
}

extension GPTModel {
    /// The trainable set of this model's mode (built with its gradients, i.e. `training: true`).
    public func trainables() throws -> Trainables {
        let method = Method(mode, adapters: adapters?.config)
        switch mode {
        case .lora:
            guard let lora, let g = loraGrad else { throw TrainError.invalidOption("LoRA training needs LoRA weights") }
            return Trainables(values: lora.arena.base, grads: g.base, count: lora.count, method: method, sharded: false,
                              squares: { (0, sumOfSquares(g.base, lora.count)) }, publish: {})
        case .full:
            guard let g = baseGrad else { throw TrainError.invalidOption("full fine-tuning needs a gradient arena") }
            let base = self.base
            return Trainables(values: base.arena.base, grads: g.arena.base, count: base.shape.total, method: method, sharded: true,
                              squares: {
                                  var sharded: Double = 0, replicated: Double = 0
                                  for slot in base.shape.slots {
                                      let s = sumOfSquares(g.arena.base + slot.offset, slot.localCount)
                                      if slot.spec == .replicated { replicated += s } else { sharded += s }
                                  }
                                  return (sharded, replicated)
                              },
                              // Under bf16 the fp32 masters are rounded into the GEMMs' working copy.
                              publish: { base.refreshHalf() })
        case .adapter:
            guard let ad = adapters, let g = adapterGrad else { throw TrainError.invalidOption("adapter training needs adapter weights") }
            let d = config.nEmbd
            return Trainables(values: ad.arena.base, grads: g.base, count: ad.arena.count, method: method,
                              sharded: ad.config.placement != .replicated,
                              squares: {
                                  // Sharded: W_down, b_down and W_up split, b_up and Lin's LayerNorm whole.
                                  // Owner: only TP rank 0 holds them. Replicated: whole on every rank.
                                  var sharded: Double = 0, whole: Double = 0
                                  let ml = ad.localWidth
                                  for s in ad.slots {
                                      let sq = { (off: Int, count: Int) in sumOfSquares(g.base + off, count) }
                                      let split = sq(s.wd, d * ml) + sq(s.bd, ml) + sq(s.wu, ml * d)
                                      let rest = sq(s.bu, d) + (s.lnw >= 0 ? sq(s.lnw, d) + sq(s.lnb, d) : 0)
                                      switch ad.config.placement {
                                      case .sharded: sharded += split; whole += rest
                                      case .replicated: whole += split + rest
                                      case .owner: sharded += split + rest
                                      }
                                  }
                                  return (sharded, whole)
                              }, publish: {})
        case .bitfit:
            guard let b = biases else { throw TrainError.invalidOption("BitFit needs a model built for it (mode bitfit)") }
            // The compact masters start from the loaded base and are written back into its biases.
            b.gather(from: base)
            let base = self.base
            return Trainables(values: b.values.base, grads: b.grads.base, count: b.count, method: method, sharded: true,
                              squares: { let (s, r) = b.squaredGradients(); return (s, r) }, publish: { b.scatter(into: base) })
        }
    }
}

/// Σ x² in Double, in order.
@inline(__always) func sumOfSquares(_ p: UnsafePointer<Float>, _ n: Int) -> Double {
    var s: Double = 0
    for i in 0..<n { s += Double(p[i]) * Double(p[i]) }
    return s
}
