import CDNNL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What one thread's GEMMs keep between calls: its oneDNN stream, its matmul primitives by
/// shape, and the scratch buffers both backends reuse. Per thread because in-process ranks are
/// threads and oneDNN memory objects (whose data handle is set on every call) must not be shared.
final class GemmThreadState {
    /// Primitives kept at most; past it the least recently used half goes. Training reuses a few
    /// dozen shapes, but decoding with a KV cache makes a new attention shape per token.
    static let cacheCapacity = 4096

    var stream: dnnl_stream_t?
    var primitives: [MatmulKey: MatmulPrimitive] = [:]
    /// LORA_DIST_GEMM=auto: the backend measured faster for each GEMM this thread has run.
    var choices: [MatmulKey: GemmBackend] = [:]
    /// Scratch output of those measurements.
    var probeC = ScratchBuffer()
    /// Primitives this thread created since it started (the cache's test and a step's witness).
    var created = 0
    /// Time in GEMMs and their FLOPs (2·m·n·k each), for benchmarks.
    var nanoseconds: UInt64 = 0
    var flops = 0
    var clock: UInt64 = 0
    /// oneDNN scratchpad (user mode), grown to the largest any primitive of this thread asked for.
    var scratchpad = ScratchBuffer()
    /// OpenBLAS's bf16 path: the operands widened to fp32.
    var widenedA = ScratchBuffer(), widenedB = ScratchBuffer()

    deinit {
        primitives.removeAll()
        if let stream { dnnl_stream_destroy(stream) }
        scratchpad.free()
        probeC.free()
        widenedA.free()
        widenedB.free()
    }

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        let status = pthread_key_create(&key) { p in
            if let p { Unmanaged<GemmThreadState>.fromOpaque(p).release() }
        }
        if status != 0 { fatalError("pthread_key_create failed (\(status)) for the GEMM thread state") }
        return key
    }()

    /// The calling thread's state, made on its first GEMM and released when the thread ends.
    @inline(__always)
    static var current: GemmThreadState {
        if let p = pthread_getspecific(key) { return Unmanaged<GemmThreadState>.fromOpaque(p).takeUnretainedValue() }
        let s = GemmThreadState()
        pthread_setspecific(key, Unmanaged.passRetained(s).toOpaque())
        return s
    }
}

/// A 64-byte aligned byte buffer that only grows.
struct ScratchBuffer {
    private(set) var base: UnsafeMutableRawPointer?
    private(set) var bytes = 0

    /// At least `count` bytes, keeping the buffer when it is already large enough.
    mutating func reserve(_ count: Int) -> UnsafeMutableRawPointer {
        if count > bytes || base == nil {
            base?.deallocate()
            bytes = max(count, 64)
            base = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        }
        return base!
    }

    mutating func free() {
        base?.deallocate()
        base = nil
        bytes = 0
    }
}
