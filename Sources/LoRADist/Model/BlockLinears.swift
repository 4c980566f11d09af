/// One block's four linear ops on this rank, with their LoRA deltas attached: the attention
/// input column-parallel by heads (output [q_t | k_t | v_t]), the attention output row-parallel,
/// the MLP input column-parallel (GPT-2's c_fc; the Llama family's gate | up, [gate_t | up_t]),
/// the MLP output row-parallel. GPT-2's Conv1D weights are used as stored ([in, out]); the Llama
/// family's nn.Linear weights ([out, in]) are read transposed. Weight gradients exist in full
/// fine-tuning only; bias gradients in full fine-tuning (in `grad`) and BitFit (in `biasGrad`).
struct BlockLinears {
    let qkv: Linear, proj: Linear, fc: Linear, fcProj: Linear
    var all: [Linear] { [qkv, proj, fc, fcProj] }

    init(layer l: Int, base: BaseWeights, grad: BaseWeights?, biasGrad: BiasParameters?, lora: LoRAWeights?, loraGrad: FloatArena?,
         layout: TPLayout) {
        let c = layout.config, d = c.nEmbd, dl = layout.localDim, fl = layout.localFFN
        let o = base.shape.blocks[l], stored = c.family == .gpt2 ? { (m: Mat) in m } : { (m: Mat) in m.T }
        /// A layer whose op(W) is [inLocal, outLocal].
        func linear(_ kind: Linear.Kind, _ site: Site, _ w: WeightOffsets, _ inLocal: Int, _ outLocal: Int, _ b: Int,
                    inputs: Range<Int>, of inGlobal: Int) -> Linear {
            let (rows, cols) = c.family == .gpt2 ? (inLocal, outLocal) : (outLocal, inLocal)
            return Linear(kind: kind, site: site, w: stored(base.matrix(w, rows, cols)), bias: b < 0 ? nil : base.ptr(b),
                          dw: grad.map { Mat($0.ptr(w.f32), rows, cols) },
                          dbias: b < 0 ? nil : grad.map { $0.ptr(b) } ?? biasGrad?.grad(at: b), inOffset: inputs.lowerBound, inGlobal: inGlobal)
        }
        var qkv = linear(.column, .attnInGrad, o.attnW, d, layout.localQKV, o.attnB, inputs: 0..<d, of: d)
        var proj = linear(.row, .attnOut, o.projW, dl, d, o.projB, inputs: layout.dimRange, of: d)
        var fc = linear(.column, .mlpInGrad, o.fcW, d, layout.localMLPIn, o.fcB, inputs: 0..<d, of: d)
        var fcProj = linear(.row, .mlpOut, o.fcProjW, fl, d, o.fcProjB, inputs: layout.ffnRange, of: c.ffn)
        if let lora {
            // Column-parallel targets use all of A and B's rows for this rank's outputs; row-parallel
            // ones A's columns for this rank's inputs and all of B.
            func attach(_ t: LoRATarget, to lin: inout Linear, column: Int = 0) {
                guard let si = lora.slotIndex(layer: l, target: t) else { return }
                let s = lora.slots[si]
                let inputs = lin.kind == .row ? lin.inOffset..<(lin.inOffset + lin.inLocal) : 0..<s.inDim
                let outputs: Range<Int>
                switch t {
                case _ where lin.kind == .row: outputs = 0..<s.outDim
                case .k, .v: outputs = layout.kvDimRange
                case .mlpIn, .gate, .up: outputs = layout.ffnRange
                default: outputs = layout.dimRange
                }
                lin.lora.append(LoRAAttachment(slot: si, column: column,
                                               slice: lora.slice(si, inputs: inputs, outputs: outputs, grad: loraGrad)))
            }
            attach(.q, to: &qkv, column: 0)
            attach(.k, to: &qkv, column: dl)
            attach(.v, to: &qkv, column: dl + layout.localKVDim)
            attach(.o, to: &proj)
            attach(.mlpIn, to: &fc)
            attach(.gate, to: &fc, column: 0)
            attach(.up, to: &fc, column: fl)
            attach(.mlpOut, to: &fcProj)
            attach(.down, to: &fcProj)
        }
        self.qkv = qkv
        self.proj = proj
        self.fc = fc
        self.fcProj = fcProj
    }
}

extension LoRAWeights {
    /// The part of slot `si` a rank uses: A' = A's columns `inputs`, B' = B's rows `outputs`, and
    /// the same views of the gradient arena when it exists.
    func slice(_ si: Int, inputs: Range<Int>, outputs: Range<Int>, grad: FloatArena?) -> LoRASlice {
        let s = slots[si], r = s.rank
        func a(_ p: UnsafeMutablePointer<Float>) -> Mat { Mat(p + s.a + inputs.lowerBound, r, inputs.count, ld: s.inDim) }
        func b(_ p: UnsafeMutablePointer<Float>) -> Mat { Mat(p + s.b + outputs.lowerBound * r, outputs.count, r) }
        return LoRASlice(a: a(arena.base), b: b(arena.base), da: grad.map { a($0.base) }, db: grad.map { b($0.base) },
                         scale: s.scale)
    }
}

/// One adapter's two projections on this rank: W_down column-parallel and W_up row-parallel when
/// sharded (one AllReduce each way), replicated (no collective) otherwise.
public struct AdapterLinears {
    let down: Linear, up: Linear

    static func all(_ ad: AdapterWeights, grad: FloatArena?) -> [AdapterLinears] {
        let d = ad.model.nEmbd, ml = ad.localWidth, sharded = ad.config.placement == .sharded
        return ad.slots.map { s in
            func linear(_ kind: Linear.Kind, _ site: Site, _ w: Int, _ rows: Int, _ cols: Int, _ b: Int, inOffset: Int, of inGlobal: Int) -> Linear {
                Linear(kind: kind, site: site, w: Mat(ad.ptr(w), rows, cols), bias: ad.ptr(b), dw: grad.map { Mat($0.base + w, rows, cols) },
                       dbias: grad.map { $0.base + b }, inOffset: inOffset, inGlobal: inGlobal)
            }
            return AdapterLinears(down: linear(sharded ? .column : .replicated, .adapterInGrad, s.wd, d, ml, s.bd, inOffset: 0, of: d),
                                  up: linear(sharded ? .row : .replicated, .adapterOut, s.wu, ml, d, s.bu,
                                             inOffset: sharded ? ad.layout.rank * ml : 0, of: ad.config.bottleneck))
        }
    }
}
