import COpenBLAS

/// The OpenBLAS backend: fp32 through cblas_sgemm. Debian's OpenBLAS 0.3.21 exports no
/// cblas_sbgemm, so bf16 operands go through `Gemm.widened` (exact widening to fp32).
enum OpenBLASGemm {
    static func run(
        _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
        _ a: GemmOperand, _ lda: Int, _ b: GemmOperand, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) {
        sgemm(
            transA, transB, m, n, k, alpha, a.raw.assumingMemoryBound(to: Float.self), lda,
            b.raw.assumingMemoryBound(to: Float.self), ldb, beta, c, ldc)
    }

    @inline(__always)
    static func sgemm(
        _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
        _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) {
        cblas_sgemm(
            CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}
