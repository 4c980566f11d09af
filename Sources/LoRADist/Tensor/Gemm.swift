import CDNNL
import COpenBLAS
import Foundation

/// Element type of a GEMM operand in memory.
public enum DType: String, Sendable {
    case f32, bf16
}

/// A read-only matrix operand: its address and element type (bf16 = UInt16 bit patterns).
/// Shape and layout are not part of it: the GEMM call says them (m, n, k, transposition, ld).
public struct GemmOperand {
    public let raw: UnsafeRawPointer
    public let type: DType

    @inline(__always)
    public static func f32(_ p: UnsafePointer<Float>) -> GemmOperand {
        GemmOperand(raw: UnsafeRawPointer(p), type: .f32)
    }

    @inline(__always)
    public static func bf16(_ p: UnsafePointer<UInt16>) -> GemmOperand {
        GemmOperand(raw: UnsafeRawPointer(p), type: .bf16)
    }
}

/// The library that runs GEMMs. oneDNN's matmul is the fast path on these cores (its own AVX-512
/// and bf16 kernels); OpenBLAS stays as a second, independent implementation to compare against.
public enum GemmBackend: String, Sendable, CaseIterable {
    case onednn, openblas
}

/// The one seam every matrix product of the trainer goes through, with typed operands.
/// Invariants: row-major storage, fp32 accumulation and an fp32 C whatever the operand type, and
/// the same result contract on every backend (m == 0 or n == 0 does nothing; k == 0 or alpha == 0
/// gives beta·C without reading A or B).
public enum Gemm {
    /// Process-wide backend: LORA_DIST_GEMM=onednn|openblas at first use (default onednn; an
    /// unknown value is refused by `checkEnvironment`, which every command calls first). Settable,
    /// so a test or a benchmark can compare backends in one process.
    public static var backend: GemmBackend = (try? backendFromEnvironment())?.backend ?? .onednn

    /// LORA_DIST_GEMM=auto: each GEMM shape runs on the backend measured faster for it on this CPU,
    /// timed once per shape and thread at its first use (`run`). Off by default: a choice made by
    /// a clock can differ between two runs of the same job, and the backends sum in different
    /// orders, so a run and its resume would no longer be bit-identical.
    public static var autoSelect: Bool = (try? backendFromEnvironment())?.auto ?? false

    static func backendFromEnvironment() throws -> (backend: GemmBackend, auto: Bool) {
        guard let raw = getenv("LORA_DIST_GEMM") else { return (.onednn, false) }
        let value = String(cString: raw)
        if value.isEmpty { return (.onednn, false) }
        if value.lowercased() == "auto" { return (.onednn, true) }
        guard let b = GemmBackend(rawValue: value.lowercased()) else {
            let names = GemmBackend.allCases.map(\.rawValue).joined(separator: ", ")
            throw GemmFailure("LORA_DIST_GEMM=\(value) is not a GEMM backend (use \(names) or auto)")
        }
        return (b, false)
    }

    /// The backend `auto` runs this GEMM on: measured at the first call of its shape on this
    /// thread (a warm-up and three timed calls on each backend into scratch, the faster wins).
    static func autoBackend(
        _ state: GemmThreadState, _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int,
        _ a: GemmOperand, _ lda: Int, _ b: GemmOperand, _ ldb: Int
    ) -> GemmBackend {
        let key = OneDNNGemm.key(transA, transB, m, n, k, 1, a.type, lda, ldb, 0, n)
        if let b = state.choices[key] { return b }
        let c = state.probeC.reserve(m * n * 4).bindMemory(to: Float.self, capacity: m * n)
        var best: (GemmBackend, UInt64)?
        for backend in GemmBackend.allCases {
            var t = UInt64.max
            for rep in 0..<4 {
                let t0 = DispatchTime.now().uptimeNanoseconds
                run(on: backend, transA, transB, m, n, k, 1, a, lda, b, ldb, 0, c, n)
                if rep > 0 { t = min(t, DispatchTime.now().uptimeNanoseconds &- t0) }
            }
            if best == nil || t < best!.1 { best = (backend, t) }
        }
        state.choices[key] = best!.0
        return best!.0
    }

    /// The backend in words: "onednn", "openblas" or "auto".
    public static var backendName: String { autoSelect ? "auto" : backend.rawValue }

    /// The backends `auto` chose on the calling thread so far, by GEMM ("f32 512×3072×768 A·B" → openblas).
    public static var autoChoices: [String: GemmBackend] {
        var out: [String: GemmBackend] = [:]
        for (k, b) in GemmThreadState.current.choices {
            out["\(k.type) \(k.m)×\(k.n)×\(k.k) \(k.transA ? "Aᵀ" : "A")·\(k.transB ? "Bᵀ" : "B")"] = b
        }
        return out
    }

    /// Refuses what the GEMM variables ask for but this process cannot do: an unknown
    /// LORA_DIST_GEMM or LORA_DIST_BF16, or LORA_DIST_BF16=native on a CPU whose bf16 instructions
    /// oneDNN cannot use (none, or ONEDNN_MAX_CPU_ISA below avx512_core_bf16). Every command calls
    /// it before any work (`World.run`), so each rank says the one line and exits 1.
    public static func checkEnvironment() throws {
        _ = try backendFromEnvironment()
        let kernel = try bf16KernelFromEnvironment()
        if kernel == .native {
            let cpu = CPUInfo.current
            if !cpu.nativeBF16 {
                let why =
                    cpu.bf16Instructions
                    ? """
                    oneDNN is capped at \(cpu.onednnISA) (ONEDNN_MAX_CPU_ISA=\(cpu.onednnMaxISA ?? "?")), below \
                    avx512_core_bf16
                    """
                    : """
                    this CPU (\(cpu.model)) has no bf16 instructions (AVX-512-BF16 or AMX-BF16); oneDNN runs \
                    \(cpu.onednnISA)
                    """
                throw GemmFailure(
                    """
                    LORA_DIST_BF16=native needs oneDNN's native bf16 kernel, but \(why): unset LORA_DIST_BF16 (or set \
                    it to widened) to run bf16 through the widened kernel, the same products on fp32 kernels
                    """
                )
            }
        }
    }

    /// C[m,n] = alpha·op(A)·op(B) + beta·C, row-major, fp32 accumulate and fp32 C. A and B must
    /// have the same DType. `lda`, `ldb`, `ldc` are row strides in elements of the matrices as
    /// stored (before op); with beta == 0, C is not read (it may hold NaNs).
    @inline(__always)
    public static func run(
        _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
        _ a: GemmOperand, _ lda: Int, _ b: GemmOperand, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) {
        if autoSelect && m > 0 && n > 0 && k > 0 && alpha != 0 {
            let chosen = autoBackend(GemmThreadState.current, transA, transB, m, n, k, a, lda, b, ldb)
            run(on: chosen, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        } else {
            run(on: backend, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        }
    }

    /// `run` on a named backend, whatever `backend` says (doctor and the benchmarks measure both).
    public static func run(
        on backend: GemmBackend, _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int,
        _ alpha: Float, _ a: GemmOperand, _ lda: Int, _ b: GemmOperand, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) {
        // fatalError keeps the message in release builds (an -O precondition traps without it).
        if a.type != b.type {
            fatalError("GEMM operands of different types (A \(a.type), B \(b.type)) for m \(m) n \(n) k \(k)")
        }
        precondition(m >= 0 && n >= 0 && k >= 0, "GEMM with a negative size: m \(m) n \(n) k \(k)")
        if m == 0 || n == 0 { return }
        if k == 0 || alpha == 0 {
            // An empty sum, or a product BLAS does not read (NaNs in A or B stay out of C): neither
            // library is consistent about these, so they are done here.
            for i in 0..<m {
                let row = c + i * ldc
                if beta == 0 {
                    row.update(repeating: 0, count: n)
                } else if beta != 1 {
                    for j in 0..<n { row[j] *= beta }
                }
            }
            return
        }
        let state = GemmThreadState.current
        let t0 = DispatchTime.now().uptimeNanoseconds
        switch (backend, a.type) {
        case (.onednn, .bf16) where bf16Kernel == .widened:
            widened(state, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) {
                OneDNNGemm.run($0, $1, $2, $3, $4, $5, .f32($6), $7, .f32($8), $9, $10, $11, $12)
            }
        case (.openblas, .bf16):
            // Debian's OpenBLAS exports no cblas_sbgemm: widened is its only bf16 path.
            widened(state, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, OpenBLASGemm.sgemm)
        case (.onednn, _): OneDNNGemm.run(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        case (.openblas, _): OpenBLASGemm.run(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        }
        state.nanoseconds &+= DispatchTime.now().uptimeNanoseconds &- t0
        state.flops &+= 2 * m * n * k
    }

    /// How a bf16 GEMM computes on oneDNN.
    public enum BF16Kernel: String, Sendable, CaseIterable {
        /// oneDNN's bf16 kernels (vdpbf16ps; AMX where the CPU has it and oneDNN uses it).
        case native
        /// The bf16 operands widened to fp32 (exact) and multiplied by the fp32 kernel, B a block
        /// of columns at a time: the same products and fp32 accumulation.
        case widened
    }

    /// The bf16 kernel: LORA_DIST_BF16=native|widened, default widened. Without AMX, oneDNN 2.6's
    /// bf16 matmul (vdpbf16ps) measured 0.4–0.6× its fp32 speed on avx512_bf16 cores here, and
    /// widening 0.8–1.0×; the weights stay stored in bf16 either way. A fixed default, not a timed
    /// probe, so a run and its resume compute the same bits. Where oneDNN has no native bf16
    /// kernel (no bf16 instructions: AVX2-only cores such as AMD Zen 3), `checkEnvironment` refuses
    /// native; forced anyway (a test, a benchmark), each such GEMM fails as `run` describes.
    public static var bf16Kernel: BF16Kernel = (try? bf16KernelFromEnvironment()) ?? .widened

    static func bf16KernelFromEnvironment() throws -> BF16Kernel {
        guard let raw = getenv("LORA_DIST_BF16"), !String(cString: raw).isEmpty else { return .widened }
        let v = String(cString: raw)
        guard let k = BF16Kernel(rawValue: v.lowercased()) else {
            throw GemmFailure("LORA_DIST_BF16=\(v) is not a bf16 kernel (use native or widened)")
        }
        return k
    }

    // MARK: failures

    nonisolated(unsafe) private static var firstFailure: GemmFailure?
    private static let failureLock = NSLock()

    /// Records a GEMM the library could not run and fills its C with NaN: the caller's step sees a
    /// non-finite loss or gradient, and the trainer then reports this message on every rank
    /// (`Trainer.trainStep`), as `World.run` does at the end of any other command. A GEMM runs deep
    /// inside a pass that cannot throw; NaN is the one value no later arithmetic hides.
    static func fail(_ failure: GemmFailure, c: UnsafeMutablePointer<Float>, m: Int, n: Int, ldc: Int) {
        failureLock.lock()
        if firstFailure == nil { firstFailure = failure }
        failureLock.unlock()
        for i in 0..<m { (c + i * ldc).update(repeating: .nan, count: n) }
    }

    /// The first GEMM of this process that failed, if any.
    public static var failure: GemmFailure? {
        failureLock.lock()
        defer { failureLock.unlock() }
        return firstFailure
    }

    /// Throws the first recorded GEMM failure.
    public static func checkFailure() throws {
        if let f = failure { throw f }
    }

    /// Forgets recorded failures (a test that provoked one on purpose).
    public static func clearFailure() {
        failureLock.lock()
        firstFailure = nil
        failureLock.unlock()
    }

    /// Runs `body` on backend `b`, then puts the previous backend back.
    public static func with<R>(backend b: GemmBackend, _ body: () throws -> R) rethrows -> R {
        let saved = backend
        backend = b
        defer { backend = saved }
        return try body()
    }

    /// Runs `body` with bf16 kernel `k`, then puts the previous kernel back.
    public static func with<R>(bf16Kernel k: BF16Kernel, _ body: () throws -> R) rethrows -> R {
        let saved = bf16Kernel
        bf16Kernel = k
        defer { bf16Kernel = saved }
        return try body()
    }

    /// The block of op(A) columns / op(B) rows (k) and of op(B) columns (n) widened at a time:
    /// the scratch stays at m×512 + 512×512 floats whatever the operands' size (the tied LM head's
    /// B is the whole vocabulary, and its input gradient's A and k are too).
    static let widenBlock = 512

    /// C = alpha·op(A)·op(B) + beta·C for bf16 A and B through an fp32 `kernel`, a block of k at
    /// a time (accumulating into C) and within it a block of op(B)'s columns at a time.
    static func widened(
        _ state: GemmThreadState, _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int,
        _ alpha: Float, _ a: GemmOperand, _ lda: Int, _ b: GemmOperand, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int,
        _ kernel: (
            Bool, Bool, Int, Int, Int, Float, UnsafePointer<Float>, Int, UnsafePointer<Float>, Int,
            Float, UnsafeMutablePointer<Float>, Int
        ) -> Void
    ) {
        let kb = min(k, widenBlock)
        let nb = min(n, widenBlock)
        let wa = state.widenedA.reserve(m * kb * 4).bindMemory(to: Float.self, capacity: m * kb)
        let wb = state.widenedB.reserve(kb * nb * 4).bindMemory(to: Float.self, capacity: kb * nb)
        let ah = a.raw.assumingMemoryBound(to: UInt16.self)
        let bh = b.raw.assumingMemoryBound(to: UInt16.self)
        var p = 0
        while p < k {
            let kw = min(kb, k - p)
            // op(A)[:, p ..< p+kw], stored as A is (rows of a transposed A, columns of a plain one).
            if transA {
                BF16.widen(ah + p * lda, ld: lda, wa, ldd: m, rows: kw, cols: m)
            } else {
                BF16.widen(ah + p, ld: lda, wa, ldd: kw, rows: m, cols: kw)
            }
            var j = 0
            while j < n {
                let w = min(nb, n - j)
                // op(B)[p ..< p+kw, j ..< j+w].
                if transB {
                    BF16.widen(bh + j * ldb + p, ld: ldb, wb, ldd: kw, rows: w, cols: kw)
                } else {
                    BF16.widen(bh + p * ldb + j, ld: ldb, wb, ldd: w, rows: kw, cols: w)
                }
                kernel(
                    transA, transB, m, w, kw, alpha, wa, transA ? m : kw, wb, transB ? kw : w, p == 0 ? beta : 1, c + j,
                    ldc)
                j += w
            }
            p += kw
        }
    }

    /// Time spent in GEMMs issued from the calling thread, and their FLOPs, since it started (a
    /// benchmark reads it before and after a step to split GEMM time from everything else).
    public static var threadTotals: (seconds: Double, flops: Int) {
        let s = GemmThreadState.current
        return (Double(s.nanoseconds) * 1e-9, s.flops)
    }

    /// Sets the threads the GEMMs issued from the calling thread use: oneDNN's OpenMP team size
    /// for this thread (libgomp keeps it per thread) and OpenBLAS's thread count (per process).
    public static func setThreads(_ n: Int) {
        precondition(n >= 1, "GEMM thread count must be at least 1 (got \(n))")
        omp_set_num_threads(Int32(n))
        openblas_set_num_threads(Int32(n))
    }

    /// Threads the GEMMs issued from the calling thread use on the current backend (oneDNN's
    /// OpenMP team size for this thread; OpenBLAS's thread count).
    public static var threads: Int { threads(on: backend) }

    /// `threads` of a named backend.
    public static func threads(on backend: GemmBackend) -> Int {
        switch backend {
        case .onednn: return Int(omp_get_max_threads())
        case .openblas: return Int(openblas_get_num_threads())
        }
    }

    /// Gives the calling thread a rank's GEMM threads: one, since ranks already fill the cores
    /// (and OpenMP teams of oversubscribed ranks would spin against each other), unless the user
    /// chose a count: OMP_NUM_THREADS (oneDNN) and OPENBLAS_NUM_THREADS (OpenBLAS) are read by
    /// the libraries themselves, so only what is unset is pinned here. `includingOpenBLAS: false`
    /// leaves OpenBLAS's process-wide count alone, for rank threads started after it was set (a
    /// change of it under another thread's running GEMM is not safe).
    public static func useRankThreads(includingOpenBLAS: Bool = true) {
        if getenv("OMP_NUM_THREADS") == nil { omp_set_num_threads(1) }
        if includingOpenBLAS && getenv("OPENBLAS_NUM_THREADS") == nil { openblas_set_num_threads(1) }
    }
}

/// A GEMM the library could not run, or a GEMM setting this process cannot honour.
public struct GemmFailure: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The number of threads OpenBLAS currently uses.
public func blasThreads() -> Int { Int(openblas_get_num_threads()) }
