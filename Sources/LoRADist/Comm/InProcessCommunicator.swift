import Foundation

/// N ranks as threads of one process sharing memory: the single-process test mode.
///
/// Same semantics as the MPI backend, including `split`. Reductions combine ranks in the fixed
/// order 0, 1, ..., n-1 for every element, so results are bit-for-bit reproducible run to run and
/// identical on every rank.
public final class InProcessCommunicator: Communicator {
    public let rank: Int
    public var size: Int { group.size }
    public let name: String
    fileprivate let group: InProcessGroup

    fileprivate init(rank: Int, group: InProcessGroup, name: String) {
        self.rank = rank
        self.group = group
        self.name = name
    }

    /// Runs `body` on `ranks` threads, each with its own communicator of one shared world, and
    /// returns the per-rank results in rank order. If any rank throws, the others are released from
    /// their collectives with `CommError.aborted`, and the first rank's own error is rethrown.
    public static func run<T>(ranks: Int, stackSize: Int = 64 << 20,
                              _ body: @escaping (Communicator) throws -> T) throws -> [T] {
        precondition(ranks >= 1, "need at least one rank")
        let state = AbortState()
        let world = InProcessGroup(size: ranks, abort: state)
        var results = [Result<T, Error>?](repeating: nil, count: ranks)
        let lock = NSLock()
        let done = DispatchGroup()
        for r in 0..<ranks {
            done.enter()
            let comm = InProcessCommunicator(rank: r, group: world, name: "world")
            let thread = Thread {
                let result = Result { try body(comm) }
                if case let .failure(error) = result {
                    state.set("rank \(r): \(error)", origin: r, error: error)
                }
                lock.lock(); results[r] = result; lock.unlock()
                done.leave()
            }
            thread.stackSize = stackSize
            thread.start()
        }
        done.wait()
        if let origin = state.origin { throw state.error ?? CommError.aborted(state.message ?? "rank \(origin) failed") }
        return results.map { try! $0!.get() }
    }

    public func allReduce<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp) throws {
        let n = buffer.count
        if size == 1 || n == 0 { return }
        if rank == 0 { group.ensureScratch(bytes: n * MemoryLayout<T>.stride) }
        group.slots[rank] = UnsafeMutableRawPointer(buffer.baseAddress)
        try group.barrier.wait()
        // Rank r reduces its chunk of the elements, always combining ranks in order 0..<size.
        let lo = n * rank / size, hi = n * (rank + 1) / size
        let scratch = group.scratch!.assumingMemoryBound(to: T.self)
        let srcs = (0..<size).map { group.slots[$0]!.assumingMemoryBound(to: T.self) }
        switch op {
        case .sum:
            for i in lo..<hi {
                var acc = srcs[0][i]
                for k in 1..<size { acc += srcs[k][i] }
                scratch[i] = acc
            }
        case .max:
            for i in lo..<hi {
                var acc = srcs[0][i]
                for k in 1..<size where srcs[k][i] > acc || srcs[k][i] != srcs[k][i] { acc = srcs[k][i] }
                scratch[i] = acc
            }
        }
        try group.barrier.wait()
        buffer.baseAddress!.update(from: scratch, count: n)
        try group.barrier.wait()
    }

    public func broadcast<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws {
        guard root >= 0 && root < size else { throw CommError.invalid("broadcast root \(root) outside 0..<\(size)") }
        if size == 1 || buffer.isEmpty { return }
        group.slots[rank] = UnsafeMutableRawPointer(buffer.baseAddress)
        try group.barrier.wait()
        if rank != root {
            buffer.baseAddress!.update(from: group.slots[root]!.assumingMemoryBound(to: T.self), count: buffer.count)
        }
        try group.barrier.wait()
    }

    public func allGather<T: CollectiveElement>(_ send: UnsafeBufferPointer<T>, into recv: UnsafeMutableBufferPointer<T>) throws {
        let n = send.count
        guard recv.count == n * size else {
            throw CommError.invalid("allGather receive buffer holds \(recv.count) elements, expected \(n * size)")
        }
        if n == 0 { return }
        group.slots[rank] = UnsafeMutableRawPointer(mutating: send.baseAddress)
        try group.barrier.wait()
        for k in 0..<size {
            (recv.baseAddress! + k * n).update(from: group.slots[k]!.assumingMemoryBound(to: T.self), count: n)
        }
        try group.barrier.wait()
    }

    public func barrier() throws {
        try group.barrier.wait()
    }

    public func split(color: Int, key: Int, name: String) throws -> Communicator {
        group.splitKeys[rank] = (color, key)
        try group.barrier.wait()
        let members = (0..<size).filter { group.splitKeys[$0].color == color }
            .sorted { (group.splitKeys[$0].key, $0) < (group.splitKeys[$1].key, $1) }
        group.lock.lock()
        let sub: InProcessGroup
        if let existing = group.pending[color] { sub = existing } else {
            sub = InProcessGroup(size: members.count, abort: group.abort)
            group.pending[color] = sub
        }
        group.lock.unlock()
        try group.barrier.wait()
        if rank == 0 { group.pending.removeAll() }
        try group.barrier.wait()
        return InProcessCommunicator(rank: members.firstIndex(of: rank)!, group: sub, name: name)
    }

    public func abort(_ message: String) throws -> Never {
        group.abort.set("rank \(rank): \(message)", origin: rank, error: CommError.aborted("rank \(rank): \(message)"))
        throw CommError.aborted("rank \(rank): \(message)")
    }
}

/// Shared by every communicator derived from one in-process world: the first failure wins.
final class AbortState {
    private let lock = NSLock()
    private(set) var message: String?
    private(set) var origin: Int?
    private(set) var error: Error?

    func set(_ message: String, origin: Int, error: Error) {
        lock.lock(); defer { lock.unlock() }
        // The first failure is the root cause; ranks released by it fail with `aborted` later.
        if self.message == nil {
            self.message = message
            self.origin = origin
            self.error = error
        }
    }
    var current: String? { lock.lock(); defer { lock.unlock() }; return message }
}

/// State one group's threads share: pointer slots, scratch for reductions, a barrier.
final class InProcessGroup {
    let size: Int
    let abort: AbortState
    let barrier: ThreadBarrier
    let lock = NSLock()
    var slots: [UnsafeMutableRawPointer?]
    var splitKeys: [(color: Int, key: Int)]
    var pending: [Int: InProcessGroup] = [:]
    var scratch: UnsafeMutableRawPointer?
    var scratchBytes = 0

    init(size: Int, abort: AbortState) {
        self.size = size
        self.abort = abort
        self.barrier = ThreadBarrier(count: size, abort: abort)
        slots = Array(repeating: nil, count: size)
        splitKeys = Array(repeating: (0, 0), count: size)
    }

    func ensureScratch(bytes: Int) {
        if bytes <= scratchBytes { return }
        scratch?.deallocate()
        scratch = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        scratchBytes = bytes
    }

    deinit { scratch?.deallocate() }
}

/// A reusable barrier for a fixed number of threads that gives up when the job is aborted.
final class ThreadBarrier {
    private let count: Int
    private let abort: AbortState
    private let cond = NSCondition()
    private var arrived = 0
    private var generation = 0

    init(count: Int, abort: AbortState) {
        self.count = count
        self.abort = abort
    }

    func wait() throws {
        cond.lock(); defer { cond.unlock() }
        if let m = abort.current { throw CommError.aborted(m) }
        let gen = generation
        arrived += 1
        if arrived == count {
            arrived = 0
            generation += 1
            cond.broadcast()
            return
        }
        while gen == generation {
            if let m = abort.current { throw CommError.aborted(m) }
            _ = cond.wait(until: Date(timeIntervalSinceNow: 0.02))
        }
    }
}
