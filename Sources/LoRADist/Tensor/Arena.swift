/// One contiguous, zero-initialised, 64-byte aligned block of elements that named views point into
/// (llm.c's habit: one arena for parameters, one for activations; nothing allocated in the step).
public final class Arena<Element> {
    public let base: UnsafeMutablePointer<Element>
    public let count: Int

    public init(count: Int) {
        self.count = count
        let bytes = max(count, 1) * MemoryLayout<Element>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        base = raw.bindMemory(to: Element.self, capacity: max(count, 1))
    }

    deinit { base.deallocate() }

    public var buffer: UnsafeMutableBufferPointer<Element> { UnsafeMutableBufferPointer(start: base, count: count) }
    public var bytes: Int { count * MemoryLayout<Element>.stride }

    public func zero() { UnsafeMutableRawPointer(base).initializeMemory(as: UInt8.self, repeating: 0, count: bytes) }
}

/// fp32 parameters, gradients and activations.
public typealias FloatArena = Arena<Float>
/// bf16 values as their bit patterns (the frozen base's GEMM weights under `--precision bf16`).
public typealias HalfArena = Arena<UInt16>

/// Hands out consecutive regions of a size computed in a first pass, then backed by one arena.
/// Usage: call `take` for every view with a planner, read `total`, build the arena, bind views.
public struct ArenaPlanner {
    public private(set) var total = 0
    public init() {}
    /// Reserves `count` floats, rounded up to 16 (64 bytes) so every view stays aligned.
    public mutating func take(_ count: Int) -> Int {
        let off = total
        total += (count + 15) / 16 * 16
        return off
    }
}
