import COpenBLAS

/// The OpenBLAS backend: fp32 through cblas_sgemm. Debian's OpenBLAS 0.3.21 exports no
/// cblas_sbgemm, so bf16 operands are widened to fp32 (exact) into the thread's scratch and
/// multiplied in fp32: a reference path for the bf16 kernels, not a fast one.
enum OpenBLASGemm {
    static func run(_ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
                    _ a: GemmOperand, _ lda: Int, _ b: GemmOperand, _ ldb: Int,
                    _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
        switch a.type {
        case .f32:
            sgemm(transA, transB, m, n, k, alpha, a.raw.assumingMemoryBound(to: Float.self), lda,
                  b.raw.assumingMemoryBound(to: Float.self), ldb, beta, c, ldc)
        case .bf16:
            let state = GemmThreadState.current
            // The stored shapes (before op), copied densely: their leading dimension becomes the width.
            let (aRows, aCols) = transA ? (k, m) : (m, k)
            let (bRows, bCols) = transB ? (n, k) : (k, n)
            let wa = state.widenedA.reserve(aRows * aCols * 4).bindMemory(to: Float.self, capacity: aRows * aCols)
            let wb = state.widenedB.reserve(bRows * bCols * 4).bindMemory(to: Float.self, capacity: bRows * bCols)
            BF16.widen(a.raw.assumingMemoryBound(to: UInt16.self), ld: lda, wa, ldd: aCols, rows: aRows, cols: aCols)
            BF16.widen(b.raw.assumingMemoryBound(to: UInt16.self), ld: ldb, wb, ldd: bCols, rows: bRows, cols: bCols)
            sgemm(transA, transB, m, n, k, alpha, wa, aCols, wb, bCols, beta, c, ldc)
        }
    }

    @inline(__always)
    static func sgemm(_ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
                      _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                      _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}
