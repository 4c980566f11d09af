/// One contiguous, zero-initialised, 64-byte aligned block of Floats that named views point into
/// (llm.c's habit: one arena for parameters, one for activations; nothing allocated in the step).
public final class FloatArena {
    public let base: UnsafeMutablePointer<Float>
    public let count: Int

    public init(count: Int) {
        self.count = count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        base = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        base.initialize(repeating: 0, count: max(count, 1))
    }

    deinit { base.deallocate() }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: base, count: count) }

    public func zero() { base.update(repeating: 0, count: count) }
}

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
