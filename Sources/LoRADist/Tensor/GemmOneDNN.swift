import CDNNL

/// Everything a oneDNN matmul primitive is specialised for. Thread count is part of it because
/// oneDNN blocks its work for the team size it sees at creation.
struct MatmulKey: Hashable, CustomStringConvertible {
    var m, n, k, lda, ldb, ldc: Int
    var transA, transB: Bool
    var type: DType
    var alpha, beta: UInt32
    var threads: Int32

    var description: String {
        "\(type) GEMM C[\(m)×\(n)] = \(Float(bitPattern: alpha))·\(transA ? "Aᵀ" : "A")·\(transB ? "Bᵀ" : "B") + "
            + """
            \(Float(bitPattern: beta))·C, k \(k), lda \(lda), ldb \(ldb), ldc \(ldc), \(threads) \
            thread\(threads == 1 ? "" : "s")
            """
    }
}

/// One cached matmul: the primitive and the memory objects whose data handles are set per call.
/// A, B and C are described by their strides as stored, so transposition and leading dimensions
/// cost nothing; alpha is an output scale and beta a sum post-op, both fixed at creation.
final class MatmulPrimitive {
    let primitive: dnnl_primitive_t
    let a: dnnl_memory_t, b: dnnl_memory_t, c: dnnl_memory_t
    let scratchpad: dnnl_memory_t?
    let scratchpadBytes: Int
    /// The execution arguments, built once: they name the memory objects above, which never change.
    let args: UnsafeMutablePointer<dnnl_exec_arg_t>
    let argCount: Int32
    /// oneDNN's name of the kernel it chose (e.g. "brg:avx512_core"), for the benchmarks.
    let implementation: String
    var lastUse: UInt64 = 0

    init(_ key: MatmulKey, engine: dnnl_engine_t) throws {
        let dt = key.type == .f32 ? dnnl_f32 : dnnl_bf16
        // Row-major op(A)[m,k]: element (i,p) lives at i·lda + p, or at p·lda + i when stored transposed.
        var aMd = dnnl_memory_desc_t()
        var bMd = dnnl_memory_desc_t()
        var cMd = dnnl_memory_desc_t()
        let lda = Int64(key.lda)
        let ldb = Int64(key.ldb)
        let ldc = Int64(key.ldc)
        try OneDNNGemm.check(
            dnnl_memory_desc_init_by_strides(
                &aMd, 2, [Int64(key.m), Int64(key.k)], dt, key.transA ? [1, lda] : [lda, 1]),
            "memory_desc_init_by_strides (A)", key)
        try OneDNNGemm.check(
            dnnl_memory_desc_init_by_strides(
                &bMd, 2, [Int64(key.k), Int64(key.n)], dt, key.transB ? [1, ldb] : [ldb, 1]),
            "memory_desc_init_by_strides (B)", key)
        try OneDNNGemm.check(
            dnnl_memory_desc_init_by_strides(&cMd, 2, [Int64(key.m), Int64(key.n)], dnnl_f32, [ldc, 1]),
            "memory_desc_init_by_strides (C)", key)
        var desc = dnnl_matmul_desc_t()
        try OneDNNGemm.check(dnnl_matmul_desc_init(&desc, &aMd, &bMd, nil, &cMd), "matmul_desc_init", key)

        var attr: dnnl_primitive_attr_t?
        try OneDNNGemm.check(dnnl_primitive_attr_create(&attr), "primitive_attr_create", key)
        defer { dnnl_primitive_attr_destroy(attr) }
        // User scratchpad: one growing buffer per thread instead of oneDNN's own, whose sharing
        // between threads depends on how the library was built.
        try OneDNNGemm.check(
            dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "set_scratchpad_mode", key)
        let alpha = Float(bitPattern: key.alpha)
        let beta = Float(bitPattern: key.beta)
        if alpha != 1 {
            var scale = alpha
            try OneDNNGemm.check(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &scale), "set_output_scales", key)
        }
        if beta != 0 {
            // dst = beta·dst + alpha·(A·B): the sum post-op adds to the output-scaled product.
            var ops: dnnl_post_ops_t?
            try OneDNNGemm.check(dnnl_post_ops_create(&ops), "post_ops_create", key)
            defer { dnnl_post_ops_destroy(ops) }
            try OneDNNGemm.check(dnnl_post_ops_append_sum(ops, beta), "post_ops_append_sum", key)
            try OneDNNGemm.check(dnnl_primitive_attr_set_post_ops(attr, ops), "set_post_ops", key)
        }

        let pd = try OneDNNGemm.primitiveDescriptor(&desc, attr, key, engine: engine)
        defer { dnnl_primitive_desc_destroy(pd) }
        implementation = OneDNNGemm.implementationName(pd)
        var prim: dnnl_primitive_t?
        try OneDNNGemm.check(dnnl_primitive_create(&prim, pd), "primitive_create", key)
        primitive = prim!

        // Every object created so far is destroyed again if a later step fails.
        var made: [dnnl_memory_t] = []
        var done = false
        defer {
            if !done {
                made.forEach { dnnl_memory_destroy($0) }
                dnnl_primitive_destroy(prim)
            }
        }
        func memory(_ md: UnsafePointer<dnnl_memory_desc_t>, _ what: String) throws -> dnnl_memory_t {
            var mem: dnnl_memory_t?
            try OneDNNGemm.check(dnnl_memory_create(&mem, md, engine, nil), "memory_create (\(what))", key)
            made.append(mem!)
            return mem!
        }
        a = try memory(&aMd, "A")
        b = try memory(&bMd, "B")
        c = try memory(&cMd, "C")
        let spMd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0)
        let spBytes = spMd.map { dnnl_memory_desc_get_size($0) } ?? 0
        scratchpadBytes = spBytes
        scratchpad = spBytes > 0 ? try memory(spMd!, "scratchpad") : nil
        done = true

        args = .allocate(capacity: 4)
        args[0] = dnnl_exec_arg_t(arg: DNNL_ARG_SRC, memory: a)
        args[1] = dnnl_exec_arg_t(arg: DNNL_ARG_WEIGHTS, memory: b)
        args[2] = dnnl_exec_arg_t(arg: DNNL_ARG_DST, memory: c)
        if let scratchpad { args[3] = dnnl_exec_arg_t(arg: DNNL_ARG_SCRATCHPAD, memory: scratchpad) }
        argCount = scratchpad == nil ? 3 : 4
    }

    deinit {
        dnnl_primitive_destroy(primitive)
        dnnl_memory_destroy(a)
        dnnl_memory_destroy(b)
        dnnl_memory_destroy(c)
        if let scratchpad { dnnl_memory_destroy(scratchpad) }
        args.deallocate()
    }
}

/// The oneDNN backend: per-thread cached matmul primitives, executed on the thread's own stream.
enum OneDNNGemm {
    /// The CPU engine; engines are safe to share between threads.
    static let engine: Result<dnnl_engine_t, GemmFailure> = {
        var e: dnnl_engine_t?
        let s = dnnl_engine_create(&e, dnnl_cpu, 0)
        if s != dnnl_success || e == nil {
            return .failure(GemmFailure("oneDNN could not create its CPU engine (\(statusName(s)))"))
        }
        return .success(e!)
    }()

    /// oneDNN's name for a status, with its number.
    static func statusName(_ s: dnnl_status_t) -> String {
        let names: [UInt32: String] = [
            1: "out of memory", 2: "invalid arguments", 3: "unimplemented", 4: "iterator ends",
            5: "runtime error", 6: "not required"
        ]
        return "status \(s.rawValue)" + (names[s.rawValue].map { ", \($0)" } ?? "")
    }

    @inline(__always)
    static func check(_ status: dnnl_status_t, _ what: @autoclosure () -> String, _ key: MatmulKey) throws {
        if status != dnnl_success { throw failure(what(), status, key) }
    }

    /// The error of a failed oneDNN call: what failed, for which GEMM, and, for a bf16 GEMM on a
    /// CPU whose bf16 oneDNN cannot run natively, what to use instead.
    static func failure(_ what: String, _ status: dnnl_status_t, _ key: MatmulKey) -> GemmFailure {
        var m = "oneDNN \(what) failed (\(statusName(status))) for the \(key)"
        let cpu = CPUInfo.current
        if key.type == .bf16 && !cpu.nativeBF16 {
            m +=
                """
                ; oneDNN has no native bf16 matmul on this CPU (\(cpu.model), oneDNN \(cpu.onednnISA)): use the \
                widened bf16 kernel (unset LORA_DIST_BF16, or LORA_DIST_BF16=widened)
                """
        }
        return GemmFailure(m)
    }

    /// Whether to take oneDNN's packing GEMM ("gemm:jit") over its first choice (brgemm) for this
    /// shape. Measured single-threaded here (interleaved runs, GFLOP/s brgemm → gemm:jit): brgemm
    /// reads plain B unpacked and halves its rate when B's rows are 3072 floats apart (512×3072×768
    /// A·B 30 → 51, Aᵀ·B 37 → 73; at 128 tokens 43 → 75), and is otherwise level or behind on
    /// large A·B and Aᵀ·B; it stays ahead on A·Bᵀ and on small or thin shapes (LoRA's rank-r
    /// products, 64³), so those keep oneDNN's order. fp32 only: both are alike in bf16.
    static func prefersPackingGemm(_ key: MatmulKey) -> Bool {
        key.type == .f32 && !key.transB && min(key.m, key.n, key.k) >= 64 && key.m * key.n * key.k >= 1 << 21
    }

    /// The primitive descriptor for `desc`: oneDNN's first choice, or its packing GEMM where
    /// `prefersPackingGemm` says so and oneDNN offers one. The caller owns the result.
    static func primitiveDescriptor(
        _ desc: inout dnnl_matmul_desc_t, _ attr: dnnl_primitive_attr_t?, _ key: MatmulKey,
        engine: dnnl_engine_t
    ) throws -> dnnl_primitive_desc_t {
        var it: dnnl_primitive_desc_iterator_t?
        try check(
            withUnsafePointer(to: &desc) { dnnl_primitive_desc_iterator_create(&it, $0, attr, engine, nil) },
            "primitive_desc_iterator_create", key)
        defer { dnnl_primitive_desc_iterator_destroy(it) }
        guard let first = dnnl_primitive_desc_iterator_fetch(it) else {
            throw GemmFailure("oneDNN offers no matmul for the \(key)")
        }
        if !prefersPackingGemm(key) || implementationName(first).hasPrefix("gemm:") { return first }
        while dnnl_primitive_desc_iterator_next(it) == dnnl_success {
            guard let pd = dnnl_primitive_desc_iterator_fetch(it) else { break }
            if implementationName(pd).hasPrefix("gemm:") {
                dnnl_primitive_desc_destroy(first)
                return pd
            }
            dnnl_primitive_desc_destroy(pd)
        }
        return first
    }

    static func implementationName(_ pd: dnnl_primitive_desc_t) -> String {
        var info: UnsafePointer<CChar>?
        guard dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &info) == dnnl_success, let info else {
            return "?"
        }
        return String(cString: info)
    }

    @inline(__always)
    static func key(
        _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float, _ type: DType,
        _ lda: Int, _ ldb: Int, _ beta: Float, _ ldc: Int
    ) -> MatmulKey {
        MatmulKey(
            m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc, transA: transA, transB: transB, type: type,
            alpha: alpha.bitPattern, beta: beta.bitPattern, threads: omp_get_max_threads())
    }

    /// The calling thread's primitive for `key`, created (and the cache trimmed) on a miss.
    static func primitive(_ key: MatmulKey, _ state: GemmThreadState) throws -> MatmulPrimitive {
        state.clock &+= 1
        if let p = state.primitives[key] {
            p.lastUse = state.clock
            return p
        }
        if state.primitives.count >= GemmThreadState.cacheCapacity {
            let byAge = state.primitives.sorted { $0.value.lastUse < $1.value.lastUse }
            for (k, _) in byAge.prefix(state.primitives.count / 2) { state.primitives[k] = nil }
        }
        let p = try MatmulPrimitive(key, engine: engine.get())
        p.lastUse = state.clock
        state.primitives[key] = p
        state.created += 1
        return p
    }

    /// Runs the GEMM; a oneDNN failure is recorded (`Gemm.failure`) and C filled with NaN, so the
    /// step's loss or gradient check stops every rank with the message (`Gemm.run`).
    static func run(
        _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
        _ a: GemmOperand, _ lda: Int, _ b: GemmOperand, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) {
        do {
            try execute(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        } catch {
            Gemm.fail(error as? GemmFailure ?? GemmFailure("\(error)"), c: c, m: m, n: n, ldc: ldc)
        }
    }

    static func execute(
        _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
        _ a: GemmOperand, _ lda: Int, _ b: GemmOperand, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) throws {
        let state = GemmThreadState.current
        let key = key(transA, transB, m, n, k, alpha, a.type, lda, ldb, beta, ldc)
        let p = try primitive(key, state)
        if state.stream == nil {
            try check(
                dnnl_stream_create(&state.stream, engine.get(), dnnl_stream_default_flags.rawValue), "stream_create",
                key)
        }
        try check(
            dnnl_memory_set_data_handle(p.a, UnsafeMutableRawPointer(mutating: a.raw)), "memory_set_data_handle (A)",
            key)
        try check(
            dnnl_memory_set_data_handle(p.b, UnsafeMutableRawPointer(mutating: b.raw)), "memory_set_data_handle (B)",
            key)
        try check(dnnl_memory_set_data_handle(p.c, UnsafeMutableRawPointer(c)), "memory_set_data_handle (C)", key)
        if let sp = p.scratchpad {
            try check(
                dnnl_memory_set_data_handle(sp, state.scratchpad.reserve(p.scratchpadBytes)),
                "memory_set_data_handle (scratchpad)", key)
        }
        try check(dnnl_primitive_execute(p.primitive, state.stream, p.argCount, p.args), "primitive_execute", key)
        try check(dnnl_stream_wait(state.stream), "stream_wait", key)
    }
}

extension Gemm {
    /// Matmul primitives the calling thread has created so far (its cache misses). A training
    /// step after the first adds none.
    public static var primitivesCreated: Int { GemmThreadState.current.created }

    /// Matmul primitives the calling thread's cache holds now.
    public static var primitivesCached: Int { GemmThreadState.current.primitives.count }

    /// The oneDNN kernel the calling thread uses for this GEMM (creating its primitive if needed),
    /// e.g. "brg:avx512_core"; a "ref" name means a layout oneDNN has no fast kernel for.
    /// A GEMM oneDNN cannot run gives "n/a".
    public static func oneDNNImplementation(
        _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, type: DType,
        lda: Int, ldb: Int, ldc: Int, alpha: Float = 1, beta: Float = 0
    ) -> String {
        let key = OneDNNGemm.key(transA, transB, m, n, k, alpha, type, lda, ldb, beta, ldc)
        return (try? OneDNNGemm.primitive(key, GemmThreadState.current).implementation) ?? "n/a"
    }
}
