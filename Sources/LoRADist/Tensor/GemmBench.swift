import Foundation

/// One measured GEMM: a backend, an operand type and a shape with its transpositions.
public struct GemmMeasurement: Codable, Sendable {
    public var backend: String
    public var type: String
    public var transA: Bool
    public var transB: Bool
    public var m: Int
    public var n: Int
    public var k: Int
    /// Best-of-samples rate: the machine is shared, and interference only ever slows a sample down.
    public var bestGflops: Double
    public var medianGflops: Double
    /// Median wall time of one call, in microseconds (for tiny shapes: the per-call overhead).
    public var medianMicros: Double
    /// oneDNN's kernel name, or what the OpenBLAS path does; for a GEMM this CPU cannot run
    /// (oneDNN's native bf16 without bf16 instructions), "n/a (...)" and no rates.
    public var implementation: String
    public var threads: Int
    /// False when the GEMM was not measured because this CPU has no kernel for it (the rates are 0).
    public var available: Bool = true

    /// The best rate as a table cell: GFLOP/s, or "n/a (why)".
    public var bestCell: String { available ? fixed(bestGflops, 1) : implementation }

    /// "A·B", "Aᵀ·B", "A·Bᵀ" or "Aᵀ·Bᵀ".
    public var op: String { "\(transA ? "Aᵀ" : "A")·\(transB ? "Bᵀ" : "B")" }
}

/// The GEMM measurements of `doctor` and `bench gemm`: single GEMMs, timed in batches long enough
/// for the clock, on dense row-major operands of random values.
public enum GemmBench {
    /// The three GEMMs a linear layer x[T,in]·W[in,out] runs in training, for its forward shape
    /// (m = T, n = out, k = in): forward y = x·W, weight gradient dW = xᵀ·dy, input gradient dx = dy·Wᵀ.
    public static func trainingCases(m: Int, n: Int, k: Int) -> [(
        name: String, transA: Bool, transB: Bool, m: Int, n: Int, k: Int
    )] {
        [
            ("forward", false, false, m, n, k), ("weight grad", true, false, k, n, m),
            ("input grad", false, true, m, k, n)
        ]
    }

    /// Times `C = op(A)·op(B)` for about `seconds` on the calling thread with its current GEMM threads.
    /// bf16 times oneDNN's native bf16 kernel (where this CPU has none: not measured, `available`
    /// false); `widenFirst` the widened path (`Gemm.BF16Kernel.widened`:
    /// operands widened to fp32 inside the timed call, then the fp32 GEMM, the same products exactly).
    public static func measure(
        backend: GemmBackend, type: DType, transA: Bool = false, transB: Bool = false,
        m: Int, n: Int, k: Int, seconds: Double = 0.3, widenFirst: Bool = false
    ) -> GemmMeasurement {
        let (aRows, aCols) = transA ? (k, m) : (m, k)
        let (bRows, bCols) = transB ? (n, k) : (k, n)
        let a = FloatArena(count: aRows * aCols)
        let b = FloatArena(count: bRows * bCols)
        let c = FloatArena(count: m * n)
        var rng = RNG(seed: 1)
        for i in 0..<a.count { a.base[i] = rng.uniform() - 0.5 }
        for i in 0..<b.count { b.base[i] = rng.uniform() - 0.5 }
        let ah = UnsafeMutablePointer<UInt16>.allocate(capacity: max(a.count, 1))
        let bh = UnsafeMutablePointer<UInt16>.allocate(capacity: max(b.count, 1))
        defer {
            ah.deallocate()
            bh.deallocate()
        }
        BF16.round(a.base, ah, a.count)
        BF16.round(b.base, bh, b.count)
        let opA: GemmOperand = type == .f32 ? .f32(a.base) : .bf16(ah)
        let opB: GemmOperand = type == .f32 ? .f32(b.base) : .bf16(bh)
        let widen = widenFirst && type == .bf16
        if backend == .onednn && type == .bf16 && !widen && !CPUInfo.current.nativeBF16 {
            let cpu = CPUInfo.current
            return GemmMeasurement(
                backend: backend.rawValue, type: type.rawValue, transA: transA, transB: transB, m: m, n: n, k: k,
                bestGflops: 0, medianGflops: 0, medianMicros: 0,
                implementation: cpu.bf16Instructions
                    ? "n/a (oneDNN capped at \(cpu.onednnISA))" : "n/a (no bf16 instructions)",
                threads: Gemm.threads(on: backend), available: false)
        }
        let call = { Gemm.run(on: backend, transA, transB, m, n, k, 1, opA, aCols, opB, bCols, 0, c.base, n) }

        // bf16 on oneDNN: its native kernel, or (widenFirst) the widened path `Gemm.bf16Kernel` picks.
        let samples = Gemm.with(bf16Kernel: widen ? .widened : .native) { () -> [Double] in
            call()  // primitive creation, first touch of C
            let t0 = now()
            call()
            let once = max(now() - t0, 1e-7)
            // Batches of at least ~2 ms, so a 64³ GEMM's few microseconds are not lost in the clock.
            let reps = max(1, Int((2e-3 / once).rounded(.up)))
            var times: [Double] = []
            let start = now()
            repeat {
                let s = now()
                for _ in 0..<reps { call() }
                times.append((now() - s) / Double(reps))
            } while now() - start < seconds || times.count < 3
            return times.sorted()
        }
        let flops = 2 * Double(m) * Double(n) * Double(k)
        let impl: String
        switch backend {
        case .onednn:
            impl =
                (widen ? "widen + " : "")
                + Gemm.oneDNNImplementation(
                    transA, transB, m, n, k, type: widen ? .f32 : type,
                    lda: aCols, ldb: bCols, ldc: n)
        case .openblas:
            impl = type == .f32 ? "cblas_sgemm" : "widen + cblas_sgemm"
        }
        return GemmMeasurement(
            backend: backend.rawValue, type: widen ? "bf16 widened" : type.rawValue, transA: transA, transB: transB,
            m: m, n: n, k: k,
            bestGflops: flops / samples[0] / 1e9, medianGflops: flops / samples[samples.count / 2] / 1e9,
            medianMicros: samples[samples.count / 2] * 1e6, implementation: impl, threads: Gemm.threads(on: backend))
    }

    /// Parses "512x2304x768,512x768x3072" into (m, n, k) triples.
    public static func parseShapes(_ s: String) -> [(m: Int, n: Int, k: Int)]? {
        var out: [(m: Int, n: Int, k: Int)] = []
        for part in s.split(separator: ",") {
            let v = part.split(separator: "x").compactMap { Int($0) }
            guard v.count == 3, v.allSatisfy({ $0 >= 1 }) else { return nil }
            out.append((v[0], v[1], v[2]))
        }
        return out.isEmpty ? nil : out
    }
}
