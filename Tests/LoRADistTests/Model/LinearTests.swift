import XCTest

@testable import LoRADist

/// The linear op alone, for each tensor-parallel kind (column, row, replicated), frozen or
/// trainable, with and without a LoRA delta (and LoRA dropout): its forward against a float64
/// reference of y = x·W + b + s·x·Aᵀ·Bᵀ, and every gradient its backward produces (dx, dW, db,
/// dA, dB, summed over the ranks as the trainer's AllReduce would) against central finite
/// differences of L = Σ y ⊙ G computed with the op's own forward on 1 and 2 in-process ranks.
final class LinearTests: XCTestCase {
    static let n = 5, inDim = 12, outDim = 8, r = 2
    static let scale: Float = 1.5

    /// Global tensors of one case; every rank cuts its own shard from them.
    struct Tensors {
        var x: [Float], w: [Float], b: [Float], a: [Float], bb: [Float], g: [Float]
        init(seed: UInt64) {
            var rng = RNG(seed: seed)
            func v(_ c: Int, _ s: Float) -> [Float] { (0..<c).map { _ in s * rng.normal() } }
            x = v(n * inDim, 1)
            w = v(inDim * outDim, 0.5)
            b = v(outDim, 0.5)
            a = v(r * inDim, 0.5)
            bb = v(outDim * r, 0.5)
            g = v(n * outDim, 1)
        }
    }

    struct Grads { var x: [Float], w: [Float], b: [Float], a: [Float], bb: [Float] }

    /// Runs forward (returns L and the full output) and, with `grads`, backward on `ranks` ranks.
    static func run(
        _ kind: Linear.Kind, ranks: Int, trainW: Bool, lora: Bool, dropout: Float,
        _ t: Tensors
    ) throws -> (loss: Double, y: [Float], grads: Grads) {
        let n = Self.n
        let inDim = Self.inDim
        let outDim = Self.outDim
        let r = Self.r
        let res = try InProcessCommunicator.run(ranks: ranks) { comm -> (Double, [Float], Grads) in
            let p = kind == .replicated ? 1 : comm.size
            let k = kind == .replicated ? 0 : comm.rank
            let ins = kind == .row ? (k * inDim / p)..<((k + 1) * inDim / p) : 0..<inDim
            let outs = kind == .column ? (k * outDim / p)..<((k + 1) * outDim / p) : 0..<outDim
            // Each buffer is a copy the op may write through; freed when the rank is done.
            var owned: [UnsafeMutablePointer<Float>] = []
            defer { owned.forEach { $0.deallocate() } }
            func buf(_ v: [Float]) -> UnsafeMutablePointer<Float> {
                let p = UnsafeMutablePointer<Float>.allocate(capacity: max(v.count, 1))
                p.initialize(from: v, count: v.count)
                owned.append(p)
                return p
            }
            func zeros(_ c: Int) -> UnsafeMutablePointer<Float> { buf([Float](repeating: 0, count: c)) }
            var wLocal = [Float]()
            var xLocal = [Float]()
            var gLocal = [Float]()
            for i in ins { for j in outs { wLocal.append(t.w[i * outDim + j]) } }
            for i in 0..<n { for j in ins { xLocal.append(t.x[i * inDim + j]) } }
            for i in 0..<n { for j in outs { gLocal.append(t.g[i * outDim + j]) } }
            let biasLocal = kind == .column ? Array(t.b[outs]) : t.b
            let w = buf(wLocal)
            let x = buf(xLocal)
            let gy = buf(gLocal)
            let bias = buf(biasLocal)
            let a = buf(t.a)
            let bb = buf(t.bb)
            let dw = zeros(wLocal.count)
            let db = zeros(biasLocal.count)
            let da = zeros(t.a.count)
            let dbb = zeros(t.bb.count)
            let dx = zeros(xLocal.count)
            let y = zeros(n * outs.count)
            var lin = Linear(
                kind: kind, site: kind == .row ? .attnOut : .attnInGrad, w: Mat(w, ins.count, outs.count), bias: bias,
                dw: trainW ? Mat(dw, ins.count, outs.count) : nil,
                dbias: trainW ? db : nil, inOffset: ins.lowerBound, inGlobal: inDim)
            if lora {
                func aView(_ p: UnsafeMutablePointer<Float>) -> Mat { Mat(p + ins.lowerBound, r, ins.count, ld: inDim) }
                func bView(_ p: UnsafeMutablePointer<Float>) -> Mat { Mat(p + outs.lowerBound * r, outs.count, r) }
                let slice = LoRASlice(a: aView(a), b: bView(bb), da: aView(da), db: bView(dbb), scale: Self.scale)
                lin.deltas = [
                    LoRADelta(
                        slot: 3, column: 0, inOffset: ins.lowerBound, inGlobal: inDim, dropout: dropout,
                        slice: slice, workspace: LoRAWorkspace(slots: 4, rank: r, width: inDim))
                ]
            }
            let context = PassContext(training: true, dropoutSeed: 9, dropoutStep: 2, rowOffset: 7)
            let pass = DeltaPass(context: context, rows: n, kept: true)
            let env = LinearEnv(regions: TPRegions(comm: comm), deltas: lora ? pass : nil)
            try lin.forward(Mat(x, n, ins.count), Mat(y, n, outs.count), env)
            var l = 0.0
            for i in 0..<(n * outs.count) { l += Double(y[i]) * Double(gy[i]) }
            if kind == .column {
                var v = [l]
                try comm.allReduce(&v, op: .sum)
                l = v[0]
            }
            try lin.backward(dy: Mat(gy, n, outs.count), x: Mat(x, n, ins.count), dx: Mat(dx, n, ins.count), env)
            // Assemble the full output and gradients (zeros where another rank owns them), summed over ranks.
            var yFull = [Float](repeating: 0, count: n * outDim)
            var gx = [Float](repeating: 0, count: n * inDim)
            var gw = [Float](repeating: 0, count: inDim * outDim)
            var gb = [Float](repeating: 0, count: outDim)
            for i in 0..<n { for (jj, j) in outs.enumerated() { yFull[i * outDim + j] = y[i * outs.count + jj] } }
            for i in 0..<n { for (jj, j) in ins.enumerated() { gx[i * inDim + j] = dx[i * ins.count + jj] } }
            for (ii, i) in ins.enumerated() {
                for (jj, j) in outs.enumerated() { gw[i * outDim + j] = dw[ii * outs.count + jj] }
            }
            if kind == .column {
                for (jj, j) in outs.enumerated() { gb[j] = db[jj] }
            } else {
                gb = Array(UnsafeBufferPointer(start: db, count: outDim))
            }
            var ga = Array(UnsafeBufferPointer(start: da, count: t.a.count))
            var gbb = Array(UnsafeBufferPointer(start: dbb, count: t.bb.count))
            if kind == .column { try comm.allReduce(&yFull, op: .sum) }
            if kind != .replicated {
                if kind == .row { try comm.allReduce(&gx, op: .sum) }
                try comm.allReduce(&gw, op: .sum)
                if kind == .column { try comm.allReduce(&gb, op: .sum) }
                try comm.allReduce(&ga, op: .sum)
                try comm.allReduce(&gbb, op: .sum)
            }
            return (l, yFull, Grads(x: gx, w: gw, b: gb, a: ga, bb: gbb))
        }
        return res[0]
    }

    func check(_ kind: Linear.Kind, ranks: Int, trainW: Bool, lora: Bool, dropout: Float = 0) throws {
        let label = "\(kind) ranks \(ranks) trainW \(trainW) lora \(lora) dropout \(dropout)"
        let t = Tensors(seed: 42)
        let (_, y, g) = try Self.run(kind, ranks: ranks, trainW: trainW, lora: lora, dropout: dropout, t)
        // Forward against float64 (no dropout: with dropout, the finite differences below check it).
        if dropout == 0 {
            for i in 0..<Self.n {
                for j in 0..<Self.outDim {
                    var ref = Double(t.b[j])
                    for k in 0..<Self.inDim {
                        ref += Double(t.x[i * Self.inDim + k]) * Double(t.w[k * Self.outDim + j])
                    }
                    if lora {
                        for q in 0..<Self.r {
                            var u = 0.0
                            for k in 0..<Self.inDim {
                                u += Double(t.x[i * Self.inDim + k]) * Double(t.a[q * Self.inDim + k])
                            }
                            ref += Double(Self.scale) * u * Double(t.bb[j * Self.r + q])
                        }
                    }
                    XCTAssertEqual(Double(y[i * Self.outDim + j]), ref, accuracy: 1e-4, "\(label): y[\(i),\(j)]")
                }
            }
        }
        // Central differences of L; L is linear in x, W, b and in each of A, B separately, so
        // they are exact up to float rounding.
        func fd(_ path: WritableKeyPath<Tensors, [Float]>, _ i: Int) throws -> Double {
            let h: Float = 0.05
            var p = t
            var m = t
            p[keyPath: path][i] += h
            m[keyPath: path][i] -= h
            let lp = try Self.run(kind, ranks: ranks, trainW: trainW, lora: lora, dropout: dropout, p).loss
            let lm = try Self.run(kind, ranks: ranks, trainW: trainW, lora: lora, dropout: dropout, m).loss
            return (lp - lm) / Double(2 * h)
        }
        var rng = RNG(seed: 3)
        var cases: [(String, WritableKeyPath<Tensors, [Float]>, [Float])] = [("x", \.x, g.x)]
        if trainW {
            cases += [("W", \.w, g.w), ("b", \.b, g.b)]
        } else {
            XCTAssertEqual(g.w.filter { $0 != 0 }.count, 0, "\(label): a frozen weight gets no gradient")
        }
        if lora { cases += [("A", \.a, g.a), ("B", \.bb, g.bb)] }
        for (name, path, grad) in cases {
            for _ in 0..<6 {
                let i = rng.below(grad.count)
                let want = try fd(path, i)
                XCTAssertEqual(Double(grad[i]), want, accuracy: 2e-3 * max(1, abs(want)), "\(label): d\(name)[\(i)]")
            }
        }
    }

    /// `check` on 1 and 2 ranks with W frozen, W trained, LoRA, and LoRA with dropout.
    func checkOnOneAndTwoRanks(_ kind: Linear.Kind) throws {
        for ranks in [1, 2] {
            try check(kind, ranks: ranks, trainW: false, lora: false)
            try check(kind, ranks: ranks, trainW: true, lora: false)
            try check(kind, ranks: ranks, trainW: false, lora: true)
            try check(kind, ranks: ranks, trainW: false, lora: true, dropout: 0.3)
        }
    }

    func testColumnParallelLinearMatchesFiniteDifferences() throws {
        try checkOnOneAndTwoRanks(.column)
    }

    func testRowParallelLinearMatchesFiniteDifferences() throws {
        try checkOnOneAndTwoRanks(.row)
    }

    func testReplicatedLinearMatchesFiniteDifferences() throws {
        try check(.replicated, ranks: 1, trainW: true, lora: false)
        try check(.replicated, ranks: 1, trainW: false, lora: true)
    }

    func testRowParallelLinearReducesOnceForwardAndColumnOnceBackward() throws {
        // The collectives each kind issues, from the ledger: row = one AllReduce in forward,
        // column = one in backward, LoRA adds none.
        for (kind, fwd, bwd) in [(Linear.Kind.row, 1, 0), (.column, 0, 1)] {
            let counts = try InProcessCommunicator.run(ranks: 2) { raw -> [Int] in
                let comm = RecordingCommunicator(raw)
                let lin = Linear(
                    kind: kind, site: .attnOut, w: Mat(UnsafeMutablePointer<Float>.allocate(capacity: 64), 4, 4),
                    bias: nil, dw: nil,
                    dbias: nil, inOffset: 0, inGlobal: 4)
                let buf = UnsafeMutablePointer<Float>.allocate(capacity: 64)
                buf.initialize(repeating: 0, count: 64)
                lin.w.base.initialize(repeating: 0, count: 16)
                let env = LinearEnv(regions: TPRegions(comm: comm))
                try comm.ledger.with(.forward) { try lin.forward(Mat(buf, 2, 4), Mat(buf + 16, 2, 4), env) }
                try comm.ledger.with(.backward) {
                    try lin.backward(dy: Mat(buf + 16, 2, 4), x: Mat(buf, 2, 4), dx: Mat(buf + 32, 2, 4), env)
                }
                let e = comm.ledger.entries
                return [e.filter { $0.phase == .forward }.count, e.filter { $0.phase == .backward }.count]
            }
            XCTAssertEqual(counts[0], [fwd, bwd], "\(kind)")
        }
    }
}
