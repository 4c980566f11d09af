import Foundation
import Synchronization

/// N ranks as threads of one process sharing memory: the single-process test mode.
///
/// Same semantics as the MPI backend, including `split`. Reductions combine ranks in the fixed
/// order 0, 1, ..., n-1 for every element, so results are bit-for-bit reproducible run to run and
/// identical on every rank.
public final class InProcessCommunicator: Communicator {
    public let rank: Int
    public var size: Int { group.size }
    public let name: String
    /// This rank's index in the world the group was split from (what error messages name).
    public let worldRank: Int
    fileprivate let group: InProcessGroup
    /// Collectives issued on this communicator so far (the same count on every member).
    private var sequence = 0

    fileprivate init(rank: Int, group: InProcessGroup, name: String) {
        self.rank = rank
        self.group = group
        self.name = name
        self.worldRank = group.worldRanks[rank]
    }

    /// True once a rank of this world has failed (or aborted it): what a rank that is not in a
    /// collective can poll to end with the others.
    public var isAborted: Bool { group.abort.current != nil }

    /// Waits at the group's barrier with the collective deadline; `op` and `bytes` describe the
    /// collective for a timeout report.
    private func sync(_ op: CollectiveOp, bytes: Int) throws {
        try group.barrier.wait(member: rank, deadline: CollectiveDeadline.seconds) { missing, waiting, waited in
            CollectiveTimeout(
                op: op.rawValue, group: name, members: group.worldRanks, sequence: sequence, bytes: bytes,
                seconds: waited,
                missing: missing.map { group.worldRanks[$0] },
                waiting: waiting.filter { $0 != rank }.map { group.worldRanks[$0] })
        }
    }

    /// Runs `body` on `ranks` threads, each with its own communicator of one shared world, and
    /// returns the per-rank results in rank order. If any rank throws, the others are released from
    /// their collectives with `CommError.aborted`, and the first rank's own error is rethrown.
    /// Each rank runs its GEMMs on one thread (`Gemm.useRankThreads`).
    @discardableResult
    public static func run<T>(
        ranks: Int, stackSize: Int = 64 << 20,
        _ body: @escaping (Communicator) throws -> T
    ) throws -> [T] {
        do {
            return try runReportingRank(ranks: ranks, stackSize: stackSize, body)
        } catch let failure as RankFailure {
            throw failure.error
        }
    }

    /// As `run`, but a failure is thrown as `RankFailure`, which names the rank that caused it.
    @discardableResult
    public static func runReportingRank<T>(
        ranks: Int, stackSize: Int = 64 << 20,
        _ body: @escaping (Communicator) throws -> T
    ) throws -> [T] {
        precondition(ranks >= 1, "need at least one rank")
        let state = AbortState()
        let world = InProcessGroup(worldRanks: Array(0..<ranks), abort: state)
        let results = ResultSlots<T>(count: ranks)
        // One GEMM thread per rank: OpenBLAS's count is per process, so it is set here, before any
        // rank runs a GEMM.
        Gemm.useRankThreads()
        let done = DispatchGroup()
        for r in 0..<ranks {
            done.enter()
            let comm = InProcessCommunicator(rank: r, group: world, name: "world")
            let thread = Thread {
                // OpenMP's team size belongs to the calling thread, so each rank sets its own.
                Gemm.useRankThreads(includingOpenBLAS: false)
                let result = Result { try body(comm) }
                switch result {
                case .failure(let error): state.set("rank \(r): \(error)", origin: r, error: error)
                case .success: state.depart(r)
                }
                results.set(r, result)
                done.leave()
            }
            thread.name = "rank \(r)"
            thread.stackSize = stackSize
            thread.start()
        }
        // A rank stuck outside any collective never returns: once the world has failed, wait for
        // the others a little, then report without it.
        var failedAt: UInt64?
        while done.wait(timeout: .now() + .milliseconds(100)) == .timedOut {
            guard state.origin != nil else { continue }
            let t = DispatchTime.now().uptimeNanoseconds
            if failedAt == nil { failedAt = t }
            if t - failedAt! > 10_000_000_000 { break }
        }
        if let origin = state.origin {
            let timeouts = results.values.enumerated().compactMap { (r, v) -> (Int, Error)? in
                if case .failure(let e)? = v, case CommError.timeout = e { return (r, e) }
                return nil
            }
            throw RankFailure(
                rank: origin, error: state.error ?? CommError.aborted(state.message ?? "rank \(origin) failed"),
                timeouts: timeouts)
        }
        return results.values.map { try! $0!.get() }
    }

    public func allReduce<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp) throws {
        let n = buffer.count
        if size == 1 || n == 0 { return }
        sequence += 1
        let bytes = n * MemoryLayout<T>.stride
        if rank == 0 { group.ensureScratch(bytes: bytes) }
        group.slots[rank] = UnsafeMutableRawPointer(buffer.baseAddress)
        try sync(.allReduce, bytes: bytes)
        // Rank r reduces its chunk of the elements, always combining ranks in order 0..<size:
        // scratch = x0, then scratch op= x1, ..., op= x(n-1), element by element.
        let lo = n * rank / size
        let hi = n * (rank + 1) / size
        if hi > lo {
            let dst = group.scratch!.assumingMemoryBound(to: T.self) + lo
            dst.update(from: group.slots[0]!.assumingMemoryBound(to: T.self) + lo, count: hi - lo)
            for k in 1..<size {
                Self.combine(into: dst, group.slots[k]!.assumingMemoryBound(to: T.self) + lo, count: hi - lo, op: op)
            }
        }
        try sync(.allReduce, bytes: bytes)
        buffer.baseAddress!.update(from: group.scratch!.assumingMemoryBound(to: T.self), count: n)
        try sync(.allReduce, bytes: bytes)
    }

    /// dst[i] = dst[i] op src[i]. Float and Double sums, the hot ones, get concrete loops that are
    /// fast even in debug builds.
    private static func combine<T: CollectiveElement>(
        into dst: UnsafeMutablePointer<T>, _ src: UnsafeMutablePointer<T>,
        count: Int, op: ReduceOp
    ) {
        switch op {
        case .sum:
            if T.self == Float.self {
                let d = UnsafeMutableRawPointer(dst).assumingMemoryBound(to: Float.self)
                let s = UnsafeMutableRawPointer(src).assumingMemoryBound(to: Float.self)
                for i in 0..<count { d[i] += s[i] }
            } else if T.self == Double.self {
                let d = UnsafeMutableRawPointer(dst).assumingMemoryBound(to: Double.self)
                let s = UnsafeMutableRawPointer(src).assumingMemoryBound(to: Double.self)
                for i in 0..<count { d[i] += s[i] }
            } else {
                for i in 0..<count { dst[i] += src[i] }
            }
        case .max:
            // A NaN on any rank makes the result NaN, so a diverged rank shows on every rank.
            for i in 0..<count where src[i] > dst[i] || src[i] != src[i] { dst[i] = src[i] }
        }
    }

    public func broadcast<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws {
        guard root >= 0 && root < size else { throw CommError.invalid("broadcast root \(root) outside 0..<\(size)") }
        if size == 1 || buffer.isEmpty { return }
        sequence += 1
        let bytes = buffer.count * MemoryLayout<T>.stride
        group.slots[rank] = UnsafeMutableRawPointer(buffer.baseAddress)
        try sync(.broadcast, bytes: bytes)
        if rank != root {
            buffer.baseAddress!.update(from: group.slots[root]!.assumingMemoryBound(to: T.self), count: buffer.count)
        }
        try sync(.broadcast, bytes: bytes)
    }

    public func allGather<T: CollectiveElement>(
        _ send: UnsafeBufferPointer<T>, into recv: UnsafeMutableBufferPointer<T>
    ) throws {
        let n = send.count
        guard recv.count == n * size else {
            throw CommError.invalid("allGather receive buffer holds \(recv.count) elements, expected \(n * size)")
        }
        if n == 0 { return }
        sequence += 1
        let bytes = n * MemoryLayout<T>.stride
        group.slots[rank] = UnsafeMutableRawPointer(mutating: send.baseAddress)
        try sync(.allGather, bytes: bytes)
        for k in 0..<size {
            (recv.baseAddress! + k * n).update(from: group.slots[k]!.assumingMemoryBound(to: T.self), count: n)
        }
        try sync(.allGather, bytes: bytes)
    }

    public func barrier() throws {
        sequence += 1
        try sync(.barrier, bytes: 0)
    }

    public func split(color: Int, key: Int, name: String) throws -> Communicator {
        sequence += 1
        group.splitKeys[rank] = (color, key)
        try sync(.split, bytes: 0)
        let members = (0..<size).filter { group.splitKeys[$0].color == color }
            .sorted { (group.splitKeys[$0].key, $0) < (group.splitKeys[$1].key, $1) }
        group.lock.lock()
        let sub: InProcessGroup
        if let existing = group.pending[color] {
            sub = existing
        } else {
            sub = InProcessGroup(worldRanks: members.map { group.worldRanks[$0] }, abort: group.abort)
            group.pending[color] = sub
        }
        group.lock.unlock()
        try sync(.split, bytes: 0)
        if rank == 0 { group.pending.removeAll() }
        try sync(.split, bytes: 0)
        return InProcessCommunicator(rank: members.firstIndex(of: rank)!, group: sub, name: name)
    }

    public func abort(_ message: String) throws -> Never {
        let error = CommError.aborted(message)
        group.abort.set("rank \(worldRank): \(message)", origin: worldRank, error: error)
        throw error
    }
}

/// A failure of an in-process world: the rank whose error brought it down (the root cause) and
/// that error. Ranks released by the abort fail too, with `CommError.aborted`, but are not reported.
public struct RankFailure: Error, CustomStringConvertible {
    public let rank: Int
    public let error: Error
    /// Every rank's collective timeout, when ranks gave up waiting (each reports what it saw).
    public var timeouts: [(rank: Int, error: Error)] = []
    public var description: String { "rank \(rank): \(error)" }
}

/// One result per rank, written by the rank's thread.
private final class ResultSlots<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var slots: [Result<T, Error>?]
    init(count: Int) { slots = Array(repeating: nil, count: count) }
    func set(_ r: Int, _ value: Result<T, Error>) {
        lock.lock()
        slots[r] = value
        lock.unlock()
    }
    var values: [Result<T, Error>?] {
        lock.lock()
        defer { lock.unlock() }
        return slots
    }
}

/// Shared by every communicator derived from one in-process world: the first failure wins.
final class AbortState {
    private let lock = NSLock()
    private(set) var message: String?
    private(set) var origin: Int?
    private(set) var error: Error?
    /// World ranks whose body has returned normally; a collective that waits for one of them
    /// would wait forever, so it fails instead.
    private var departed = Set<Int>()

    func set(_ message: String, origin: Int, error: Error) {
        lock.lock()
        defer { lock.unlock() }
        // The first failure is the root cause; ranks released by it fail with `aborted` later.
        if self.message == nil {
            self.message = message
            self.origin = origin
            self.error = error
        }
    }
    var current: String? {
        lock.lock()
        defer { lock.unlock() }
        return message
    }

    func depart(_ worldRank: Int) {
        lock.lock()
        departed.insert(worldRank)
        lock.unlock()
    }
    func firstDeparted(among ranks: [Int]) -> Int? {
        lock.lock()
        defer { lock.unlock() }
        return departed.isEmpty ? nil : ranks.first { departed.contains($0) }
    }
}

/// State one group's threads share: pointer slots, scratch for reductions, a barrier.
///
/// The slots are raw memory rather than Swift arrays so that ranks can write their own slot
/// concurrently without copy-on-write or exclusivity checks getting in the way.
final class InProcessGroup {
    let size: Int
    /// The world rank of each member, in group-rank order.
    let worldRanks: [Int]
    let abort: AbortState
    let barrier: ThreadBarrier
    let lock = NSLock()
    let slots: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    let splitKeys: UnsafeMutablePointer<(color: Int, key: Int)>
    var pending: [Int: InProcessGroup] = [:]
    var scratch: UnsafeMutableRawPointer?
    var scratchBytes = 0

    init(worldRanks: [Int], abort: AbortState) {
        self.size = worldRanks.count
        self.worldRanks = worldRanks
        self.abort = abort
        self.barrier = ThreadBarrier(members: worldRanks, abort: abort)
        slots = .allocate(capacity: size)
        slots.initialize(repeating: nil, count: size)
        splitKeys = .allocate(capacity: size)
        splitKeys.initialize(repeating: (0, 0), count: size)
    }

    func ensureScratch(bytes: Int) {
        if bytes <= scratchBytes { return }
        scratch?.deallocate()
        scratch = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        scratchBytes = bytes
    }

    deinit {
        scratch?.deallocate()
        slots.deallocate()
        splitKeys.deallocate()
    }
}

/// A reusable barrier for a fixed set of threads that gives up when the job is aborted, when a
/// member it waits for has already returned from the job, or when the collective deadline passes.
///
/// Arrival is an atomic counter; waiters spin briefly (when every rank can have a core), then yield
/// for up to 1 ms, then sleep on a condition: a wake-up through the kernel costs tens of microseconds.
/// Each member also notes the generation it last arrived at, so that a waiter whose deadline passes
/// can name the members that never came; the other waiters of that generation then give up too,
/// each with its own report.
final class ThreadBarrier {
    private let count: Int
    private let members: [Int]
    private let abort: AbortState
    private let cond = NSCondition()
    private let arrived = Atomic<Int>(0)
    private let generation = Atomic<Int>(0)
    private let spins: Bool
    /// The generation each member last arrived at (written before its arrival is counted).
    private let lastArrival: UnsafeMutablePointer<Int>
    /// A generation whose deadline passed, with the members that had not arrived (under `cond`).
    private var expired: (generation: Int, missing: [Int])?

    init(members: [Int], abort: AbortState) {
        self.count = members.count
        self.members = members
        self.abort = abort
        self.spins = members.count <= ProcessInfo.processInfo.activeProcessorCount
        lastArrival = .allocate(capacity: members.count)
        lastArrival.initialize(repeating: -1, count: members.count)
    }

    deinit { lastArrival.deallocate() }

    /// Waits until every member has arrived. `member` is this thread's index in the group; after
    /// `deadline` seconds (0: none) it throws `CommError.timeout` with `report(missing, arrived,
    /// seconds)` (member indices).
    func wait(
        member: Int, deadline: Double = 0,
        report: (_ missing: [Int], _ arrived: [Int], _ seconds: Double) -> CollectiveTimeout = { _, _, _ in
            CollectiveTimeout(
                op: "barrier", group: "?", members: [], sequence: 0, bytes: 0, seconds: 0, missing: [], waiting: [])
        }
    ) throws {
        if let m = abort.current { throw CommError.aborted(m) }
        let gen = generation.load(ordering: .acquiring)
        lastArrival[member] = gen
        if arrived.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue == count {
            // Reset before the release: a waiter that sees the new generation sees the reset too.
            arrived.store(0, ordering: .relaxed)
            cond.lock()
            generation.store(gen &+ 1, ordering: .releasing)
            cond.broadcast()
            cond.unlock()
            return
        }
        let t0 = DispatchTime.now().uptimeNanoseconds
        // With a core per rank, spin a little first. Then yield the core to whoever has yet to
        // arrive (a rank of ours, or another process: as MPI's yield_when_idle), and sleep after 1 ms.
        var i = 0
        while spins && i < 4096 && generation.load(ordering: .acquiring) == gen { i += 1 }
        let yieldUntil = t0 + 1_000_000
        while generation.load(ordering: .acquiring) == gen && DispatchTime.now().uptimeNanoseconds < yieldUntil {
            sched_yield()
        }
        if generation.load(ordering: .acquiring) != gen { return }
        cond.lock()
        defer { cond.unlock() }
        while generation.load(ordering: .acquiring) == gen {
            let waited = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
            if let e = expired, e.generation == gen {
                throw CommError.timeout(report(e.missing, (0..<count).filter { !e.missing.contains($0) }, waited))
            }
            if let m = abort.current { throw CommError.aborted(m) }
            if let gone = abort.firstDeparted(among: members) {
                throw CommError.invalid("rank \(gone) finished while other ranks wait for it in a collective")
            }
            if deadline > 0 && waited >= deadline {
                _ = arrived.load(ordering: .acquiring)
                let missing = (0..<count).filter { lastArrival[$0] != gen }
                expired = (gen, missing)
                cond.broadcast()
                throw CommError.timeout(report(missing, (0..<count).filter { !missing.contains($0) }, waited))
            }
            _ = cond.wait(until: Date(timeIntervalSinceNow: 0.02))
        }
    }
}
