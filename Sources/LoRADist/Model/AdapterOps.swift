import Foundation

extension GPTModel {
    /// h [n, d] ← h + adapter(h) for adapter slot `i` (replicated h in, replicated h out).
    /// Collectives by placement: sharded +1 AllReduce (g), owner +1 Broadcast, replicated none.
    func adapterForward(_ i: Int, h: UnsafeMutablePointer<Float>, n: Int, _ acts: Activations) throws {
        guard case .adapters(let ad, _, let linears)? = trainable else { return }
        let d = config.nEmbd
        let ml = ad.localWidth
        let out = acts.adOut
        if ad.stored {
            let s = ad.slots[i]
            let hsave = acts.adH(i)
            let hin = acts.adIn(i)
            let z = acts.adZ(i)
            let a = acts.adA(i)
            hsave.update(from: h, count: n * d)
            var x = UnsafePointer(hsave)
            if ad.config.kind == .lin {
                let st = acts.adLn(i)
                K.layerNormForward(hin, st, st + n, hsave, ad.ptr(s.lnw), ad.ptr(s.lnb), n: n, d: d, eps: config.lnEps)
                x = UnsafePointer(hin)
            }
            let ops = linears[i]
            let env = LinearEnv(regions: regions)
            try ops.down.forward(Mat(x, n, d), Mat(z, n, ml), env)
            K.geluForward(a, z, n * ml)
            try ops.up.forward(Mat(a, n, ml), Mat(out, n, d), env)
        }
        if ad.config.placement == .owner { try regions.broadcastFromOwner(out, n * d) }
        K.addInPlace(h, out, n * d)
    }

    /// Backward of adapter slot `i`: dy [n, d] is ∂loss/∂(adapter output); writes ∂loss/∂(adapter
    /// input) into `dx` when `needInput` (dy plus the adapter path), and accumulates the adapter's
    /// gradients. Sharded: +1 AllReduce (f) of the partial input gradient; owner: +1 Broadcast of it.
    func adapterBackward(
        _ i: Int, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, needInput: Bool,
        _ pass: ForwardPass
    ) throws {
        guard case .adapters(let ad, let grad?, let linears)? = trainable else { return }
        let acts = pass.acts
        let n = pass.rows
        let d = config.nEmbd
        let ml = ad.localWidth
        let contrib = acts.adOut
        if needInput { dx.update(from: dy, count: n * d) }
        if ad.stored {
            let s = ad.slots[i]
            let g = grad.base
            let ops = linears[i]
            let env = LinearEnv(regions: regions)
            let hsave = acts.adH(i)
            let z = acts.adZ(i)
            let a = acts.adA(i)
            let dz = acts.adDz
            let x = ad.config.kind == .lin ? UnsafePointer(acts.adIn(i)) : UnsafePointer(hsave)
            try ops.up.backward(dy: Mat(dy, n, d), x: Mat(a, n, ml), dx: Mat(dz, n, ml), env)
            K.geluBackward(dz, z, dz, n * ml)
            // dhin = dz·W_downᵀ (summed over the TP group when sharded); Lin's LayerNorm needs it for
            // its own gradients.
            let dhin = acts.dxn
            let wantInput = needInput || ad.config.kind == .lin
            try ops.down.backward(dy: Mat(dz, n, ml), x: Mat(x, n, d), dx: wantInput ? Mat(dhin, n, d) : nil, env)
            if wantInput {
                if ad.config.kind == .lin {
                    let st = acts.adLn(i)
                    contrib.update(repeating: 0, count: n * d)
                    K.layerNormBackward(
                        contrib, g + s.lnw, g + s.lnb, dhin, hsave, ad.ptr(s.lnw), st, st + n, n: n, d: d)
                } else {
                    contrib.update(from: dhin, count: n * d)
                }
            }
        }
        if needInput {
            if ad.config.placement == .owner { try regions.broadcastFromOwner(contrib, n * d) }
            K.addInPlace(dx, contrib, n * d)
        }
    }
}
