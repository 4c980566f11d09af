/// One block's four linear ops on this rank, with their deltas (LoRA's) attached: the attention
/// input column-parallel by heads (output [q_t | k_t | v_t]), the attention output row-parallel,
/// the MLP input column-parallel (GPT-2's c_fc; the Llama family's gate | up, [gate_t | up_t]),
/// the MLP output row-parallel. The family's `WeightOrientation` reads their weights: GPT-2's
/// Conv1D ones as stored ([in, out]), the Llama family's nn.Linear ones ([out, in]) transposed.
/// Weight gradients exist in full fine-tuning only; bias gradients in full fine-tuning (in `grad`)
/// and BitFit (in `biasGrad`).
struct BlockLinears {
    /// The four ops, as a delta's owner is told where it attaches.
    enum Op: Hashable, CaseIterable { case qkv, proj, fc, fcProj }

    let qkv: Linear, proj: Linear, fc: Linear, fcProj: Linear

    init(
        layer l: Int, base: BaseWeights, grad: BaseWeights?, biasGrad: BiasParameters?, deltas: (any LinearDeltaSet)?,
        layout: TPLayout
    ) {
        let c = layout.config
        let d = c.nEmbd
        let dl = layout.localDim
        let fl = layout.localFFN
        let o = base.shape.blocks[l]
        let orientation = c.family.table.orientation
        /// A layer whose op(W) is [inLocal, outLocal].
        func linear(
            _ kind: Linear.Kind, _ site: Site, _ w: WeightOffsets, _ inLocal: Int, _ outLocal: Int, _ b: Int,
            inputs: Range<Int>, of inGlobal: Int
        ) -> Linear {
            let (rows, cols) = orientation.stored(inputs: inLocal, outputs: outLocal)
            return Linear(
                kind: kind, site: site, w: orientation.op(base.matrix(w, rows, cols)),
                bias: b < 0 ? nil : base.ptr(b),
                dw: grad.map { Mat($0.ptr(w.f32), rows, cols) },
                dbias: b < 0 ? nil : grad.map { $0.ptr(b) } ?? biasGrad?.grad(at: b), inOffset: inputs.lowerBound,
                inGlobal: inGlobal)
        }
        var qkv = linear(.column, .attnInGrad, o.attnW, d, layout.localQKV, o.attnB, inputs: 0..<d, of: d)
        var proj = linear(.row, .attnOut, o.projW, dl, d, o.projB, inputs: layout.dimRange, of: d)
        var fc = linear(.column, .mlpInGrad, o.fcW, d, layout.localMLPIn, o.fcB, inputs: 0..<d, of: d)
        var fcProj = linear(.row, .mlpOut, o.fcProjW, fl, d, o.fcProjB, inputs: layout.ffnRange, of: c.ffn)
        if let deltas {
            qkv.deltas = deltas.deltas(layer: l, op: .qkv, of: qkv, layout: layout)
            proj.deltas = deltas.deltas(layer: l, op: .proj, of: proj, layout: layout)
            fc.deltas = deltas.deltas(layer: l, op: .fc, of: fc, layout: layout)
            fcProj.deltas = deltas.deltas(layer: l, op: .fcProj, of: fcProj, layout: layout)
        }
        self.qkv = qkv
        self.proj = proj
        self.fc = fc
        self.fcProj = fcProj
    }
}

/// One adapter's two projections on this rank: W_down column-parallel and W_up row-parallel when
/// sharded (one AllReduce each way), replicated (no collective) otherwise.
public struct AdapterLinears {
    let down: Linear, up: Linear

    static func all(_ ad: AdapterWeights, grad: FloatArena?) -> [AdapterLinears] {
        let d = ad.model.nEmbd
        let ml = ad.localWidth
        let sharded = ad.config.placement == .sharded
        return ad.slots.map { s in
            func linear(
                _ kind: Linear.Kind, _ site: Site, _ w: Int, _ rows: Int, _ cols: Int, _ b: Int, inOffset: Int,
                of inGlobal: Int
            ) -> Linear {
                Linear(
                    kind: kind, site: site, w: Mat(ad.ptr(w), rows, cols), bias: ad.ptr(b),
                    dw: grad.map { Mat($0.base + w, rows, cols) },
                    dbias: grad.map { $0.base + b }, inOffset: inOffset, inGlobal: inGlobal)
            }
            return AdapterLinears(
                down: linear(sharded ? .column : .replicated, .adapterInGrad, s.wd, d, ml, s.bd, inOffset: 0, of: d),
                up: linear(
                    sharded ? .row : .replicated, .adapterOut, s.wu, ml, d, s.bu,
                    inOffset: sharded ? ad.layout.rank * ml : 0, of: ad.config.bottleneck))
        }
    }
}
