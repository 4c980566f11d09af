import CMPI
import Foundation

/// Process-wide MPI state: initialised once, finalised once.
public enum MPIRuntime {
    private static var initialized = false
    private static var finalized = false

    /// True when this process was started by an MPI launcher (mpirun, srun), so MPI should be used.
    public static var launchedByMPI: Bool {
        let env = ProcessInfo.processInfo.environment
        return ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"].contains { env[$0] != nil }
    }

    /// This process's rank in MPI_COMM_WORLD once MPI is initialised (what error messages name).
    public private(set) static var worldRank = 0

    /// Initialises MPI (MPI_THREAD_FUNNELED: only the main thread calls MPI) and returns the world.
    ///
    /// MPI is deliberately not finalised at exit: a rank that exits in the middle of a run must not
    /// enter MPI_Finalize (a collective that would wait forever for ranks blocked elsewhere) but
    /// leave, so that the launcher sees it and ends the job. Call `finalize()` on a normal exit
    /// (`World.run` does).
    public static func world() throws -> MPICommunicator {
        if finalized { throw CommError.invalid("MPI was already finalised in this process") }
        if !initialized {
            var provided: Int32 = 0
            try check("MPI_Init_thread", MPI_Init_thread(nil, nil, lds_thread_funneled(), &provided))
            initialized = true
            var r: Int32 = 0
            MPI_Comm_rank(lds_comm_world(), &r)
            worldRank = Int(r)
        }
        if Notices.shared == nil {
            var size: Int32 = 0
            MPI_Comm_size(lds_comm_world(), &size)
            Notices.shared = try Notices(world: lds_comm_world(), rank: worldRank, size: Int(size))
        }
        var dup = lds_comm_null()
        try check("MPI_Comm_dup", MPI_Comm_dup(lds_comm_world(), &dup))
        guard let dup else { throw CommError.invalid("MPI_Comm_dup returned MPI_COMM_NULL") }
        return try MPICommunicator(comm: dup, name: "world")
    }

    /// Finalises MPI if it was initialised; safe to call more than once.
    public static func finalize() {
        if initialized && !finalized {
            finalized = true
            MPI_Finalize()
        }
    }

    /// Ends every process of the job: MPI_Abort on the world.
    public static func abortWorld(code: Int32) -> Never {
        if initialized && !finalized { MPI_Abort(lds_comm_world(), code) }
        exit(code)
    }

    static func errorString(_ code: Int32) -> String {
        var buf = [CChar](repeating: 0, count: Int(lds_max_error_string()) + 1)
        var len: Int32 = 0
        MPI_Error_string(code, &buf, &len)
        return String(cString: buf)
    }

    static func check(_ call: String, _ code: Int32) throws {
        if code != lds_success() {
            throw CommError.mpi(call: call, code: code, message: errorString(code))
        }
    }

    /// This host's name as MPI reports it.
    public static func processorName() -> String {
        var buf = [CChar](repeating: 0, count: Int(lds_max_processor_name()) + 1)
        var len: Int32 = 0
        MPI_Get_processor_name(&buf, &len)
        return String(cString: buf)
    }
}

/// A communicator backed by an Open MPI communicator with MPI_ERRORS_RETURN, so MPI errors become
/// Swift errors carrying MPI's error string.
///
/// Deadlines: with `CollectiveDeadline.seconds` > 0 every collective is the non-blocking MPI call
/// (MPI_Iallreduce, MPI_Ibcast, MPI_Iallgather, MPI_Ibarrier) polled with MPI_Test until it
/// completes or the deadline passes. Only a rank that waits can notice that another never comes,
/// and a blocking MPI call never gives it back control: a watchdog thread could end the process
/// but could not ask the others anything (MPI runs on the main thread only), and a barrier before
/// each blocking call would leave the call itself unguarded. A collective that has waited a second
/// (`noticeAfter`) tells every other rank so with a small message on a communicator of its own
/// (`Notices`); one that reaches its deadline collects those messages to name the members that
/// never arrived, and tells every rank, so that all ranks waiting anywhere report at once.
/// With 0, the blocking calls are used (no deadline, MPI's own latency).
public final class MPICommunicator: Communicator {
    let comm: MPI_Comm
    public let rank: Int
    public let size: Int
    public let name: String
    /// World rank of each member, in group-rank order.
    public let worldRanks: [Int]
    /// This communicator's index among the process's communicators (created in the same order on every rank).
    let index: Int
    /// Collectives issued on this communicator so far.
    private var sequence = 0

    init(comm: MPI_Comm, name: String) throws {
        self.comm = comm
        self.name = name
        try MPIRuntime.check("MPI_Comm_set_errhandler", MPI_Comm_set_errhandler(comm, lds_errors_return()))
        var r: Int32 = 0
        var s: Int32 = 0
        try MPIRuntime.check("MPI_Comm_rank", MPI_Comm_rank(comm, &r))
        try MPIRuntime.check("MPI_Comm_size", MPI_Comm_size(comm, &s))
        rank = Int(r)
        size = Int(s)
        var group: MPI_Group?
        var worldGroup: MPI_Group?
        try MPIRuntime.check("MPI_Comm_group", MPI_Comm_group(comm, &group))
        try MPIRuntime.check("MPI_Comm_group", MPI_Comm_group(lds_comm_world(), &worldGroup))
        var mine = (0..<s).map { Int32($0) }
        var theirs = [Int32](repeating: 0, count: Int(s))
        try MPIRuntime.check(
            "MPI_Group_translate_ranks", MPI_Group_translate_ranks(group, s, &mine, worldGroup, &theirs))
        MPI_Group_free(&group)
        MPI_Group_free(&worldGroup)
        worldRanks = theirs.map(Int.init)
        index = Notices.register(name)
    }

    private func datatype(_ kind: ElementKind) -> MPI_Datatype {
        switch kind {
        case .float32: return lds_float()
        case .float64: return lds_double()
        case .int64: return lds_int64()
        case .uint8: return lds_uint8()
        }
    }

    /// MPI counts are 32-bit: larger buffers go in pieces of this many elements.
    static let maxCount = Int(Int32.max)

    /// Runs one collective: the blocking call without a deadline, else the non-blocking one
    /// polled against it.
    private func collective(
        _ op: CollectiveOp, bytes: Int, call: String, blocking: () -> Int32,
        start: (UnsafeMutablePointer<MPI_Request?>) -> Int32
    ) throws {
        sequence += 1
        let limit = CollectiveDeadline.seconds
        if limit <= 0 || size == 1 {
            try MPIRuntime.check(call, blocking())
            return
        }
        var request: MPI_Request? = lds_request_null()
        try MPIRuntime.check(call, start(&request))
        try wait(&request, op: op, bytes: bytes, limit: limit)
    }

    /// Polls `request` until it completes; past `limit` seconds, throws the timeout report.
    private func wait(_ request: inout MPI_Request?, op: CollectiveOp, bytes: Int, limit: Double) throws {
        var done: Int32 = 0
        let t0 = DispatchTime.now().uptimeNanoseconds
        var announced = false
        let noticeAfter = min(1.0, limit / 4)
        while true {
            try MPIRuntime.check("MPI_Test", MPI_Test(&request, &done, lds_status_ignore()))
            if done != 0 {
                if announced { Notices.shared?.send(.done, index: index, sequence: sequence, op: op) }
                return
            }
            let waited = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
            // Keep polling while a collective is likely to finish soon (progress happens inside
            // MPI_Test); then give the core away between polls.
            if waited < 0.1 { sched_yield() } else { usleep(waited < 1 ? 200 : 1000) }
            if waited >= noticeAfter {
                if !announced {
                    Notices.shared?.send(.waiting, index: index, sequence: sequence, op: op)
                    announced = true
                }
                // Another rank gave up: everyone waiting reports now.
                if let n = Notices.shared, n.someoneTimedOut() {
                    throw timeoutReport(op: op, bytes: bytes, seconds: waited)
                }
            }
            if waited >= limit {
                Notices.shared?.send(.timedOut, index: index, sequence: sequence, op: op)
                throw timeoutReport(op: op, bytes: bytes, seconds: waited)
            }
        }
    }

    /// What this rank knows when it stops waiting, from the notices of the others: members waiting
    /// in this same collective, members still waiting in an earlier one of this group or already
    /// in a later one (an algorithm's rounds can leave them there), ranks waiting in another group,
    /// and members that said nothing of the kind: those did not arrive.
    private func timeoutReport(op: CollectiveOp, bytes: Int, seconds: Double) -> CommError {
        let heard = Notices.shared?.collect(for: 0.2) ?? [:]
        let me = MPIRuntime.worldRank
        var missing: [Int] = []
        var waiting: [Int] = []
        var elsewhere: [Int: String] = [:]
        for w in worldRanks where w != me {
            guard let n = heard[w], n.state != .done || (n.index == index && n.sequence > sequence) else {
                missing.append(w)
                continue
            }
            if n.index != index {
                elsewhere[w] = "\(n.op) on its \(Notices.name(n.index)) group (collective #\(n.sequence))"
            } else if n.sequence == sequence {
                waiting.append(w)
            } else if n.sequence < sequence {
                elsewhere[w] = "\(n.op) #\(n.sequence) of this group, an earlier one it has not finished"
            } else {
                elsewhere[w] = "\(n.op) #\(n.sequence) of this group, having finished this one"
            }
        }
        for (w, n) in heard where !worldRanks.contains(w) && n.state != .done {
            elsewhere[w] = "\(n.op) on its \(Notices.name(n.index)) group (collective #\(n.sequence))"
        }
        return .timeout(
            CollectiveTimeout(
                op: op.rawValue, group: name, members: worldRanks, sequence: sequence, bytes: bytes,
                seconds: seconds, missing: missing, waiting: waiting, elsewhere: elsewhere))
    }

    public func allReduce<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp) throws {
        let mop = op == .sum ? lds_op_sum() : lds_op_max()
        let dt = datatype(T.kind)
        for lo in stride(from: 0, to: buffer.count, by: Self.maxCount) {
            let n = Int32(min(Self.maxCount, buffer.count - lo))
            let p = buffer.baseAddress! + lo
            try collective(
                .allReduce, bytes: Int(n) * MemoryLayout<T>.stride, call: "MPI_Allreduce",
                blocking: { MPI_Allreduce(lds_in_place(), p, n, dt, mop, comm) },
                start: { MPI_Iallreduce(lds_in_place(), p, n, dt, mop, comm, $0) })
        }
    }

    public func broadcast<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws {
        guard root >= 0 && root < size else { throw CommError.invalid("broadcast root \(root) outside 0..<\(size)") }
        let dt = datatype(T.kind)
        for lo in stride(from: 0, to: buffer.count, by: Self.maxCount) {
            let n = Int32(min(Self.maxCount, buffer.count - lo))
            let p = buffer.baseAddress! + lo
            try collective(
                .broadcast, bytes: Int(n) * MemoryLayout<T>.stride, call: "MPI_Bcast",
                blocking: { MPI_Bcast(p, n, dt, Int32(root), comm) },
                start: { MPI_Ibcast(p, n, dt, Int32(root), comm, $0) })
        }
    }

    public func allGather<T: CollectiveElement>(
        _ send: UnsafeBufferPointer<T>, into recv: UnsafeMutableBufferPointer<T>
    ) throws {
        guard recv.count == send.count * size else {
            throw CommError.invalid(
                "allGather receive buffer holds \(recv.count) elements, expected \(send.count * size)")
        }
        guard send.count <= Self.maxCount else {
            throw CommError.invalid("allGather of \(send.count) elements per rank exceeds MPI's 32-bit count")
        }
        if send.isEmpty { return }
        let dt = datatype(T.kind)
        let n = Int32(send.count)
        try collective(
            .allGather, bytes: send.count * MemoryLayout<T>.stride, call: "MPI_Allgather",
            blocking: { MPI_Allgather(send.baseAddress, n, dt, recv.baseAddress, n, dt, comm) },
            start: { MPI_Iallgather(send.baseAddress, n, dt, recv.baseAddress, n, dt, comm, $0) })
    }

    public func barrier() throws {
        try collective(
            .barrier, bytes: 0, call: "MPI_Barrier", blocking: { MPI_Barrier(comm) }, start: { MPI_Ibarrier(comm, $0) })
    }

    public func split(color: Int, key: Int, name: String) throws -> Communicator {
        // MPI_Comm_split blocks with no deadline: a barrier with one first finds a missing rank.
        try barrier()
        var sub = lds_comm_null()
        try MPIRuntime.check("MPI_Comm_split", MPI_Comm_split(comm, Int32(color), Int32(key), &sub))
        guard let sub else { throw CommError.invalid("MPI_Comm_split returned MPI_COMM_NULL") }
        return try MPICommunicator(comm: sub, name: name)
    }

    /// Prints the message once, from this rank, then MPI_Abort on the world (not only this group:
    /// every process of the job must end).
    public func abort(_ message: String) throws -> Never {
        FileHandle.standardError.write(
            Data("lora-dist: error: rank \(MPIRuntime.worldRank): job aborted: \(message)\n".utf8))
        MPIRuntime.abortWorld(code: 1)
    }
}

/// The small messages ranks send each other about slow collectives, on a duplicate of the world
/// communicator that nothing else uses: "I have waited a second in collective #s of my
/// communicator i (op)", "it completed", "I gave up waiting". Nothing is sent while collectives
/// complete within a second, so they cost nothing in a healthy run.
final class Notices {
    enum State: Int64 {
        case waiting = 1
        case done = 2
        case timedOut = 3
    }
    struct Notice {
        var state: State
        var index: Int
        var sequence: Int
        var op: String
    }

    nonisolated(unsafe) static var shared: Notices?
    nonisolated(unsafe) private static var names: [String] = []
    static let tag: Int32 = 7

    let comm: MPI_Comm
    let worldRank: Int, worldSize: Int
    /// The latest notice from each world rank.
    private var latest: [Int: Notice] = [:]
    private var timedOut = false
    /// Sends not yet known to be complete, with their buffers.
    private var pending: [(MPI_Request?, UnsafeMutablePointer<Int64>)] = []

    init(world: MPI_Comm, rank: Int, size: Int) throws {
        var dup = lds_comm_null()
        try MPIRuntime.check("MPI_Comm_dup", MPI_Comm_dup(world, &dup))
        guard let dup else { throw CommError.invalid("MPI_Comm_dup returned MPI_COMM_NULL") }
        MPI_Comm_set_errhandler(dup, lds_errors_return())
        comm = dup
        worldRank = rank
        worldSize = size
    }

    /// Records a communicator's name; its index is the same on every rank.
    static func register(_ name: String) -> Int {
        names.append(name)
        return names.count - 1
    }
    static func name(_ index: Int) -> String { index < names.count ? names[index] : "communicator \(index)" }

    static let ops = CollectiveOp.allCases

    func send(_ state: State, index: Int, sequence: Int, op: CollectiveOp) {
        reap()
        for peer in 0..<worldSize where peer != worldRank {
            let buf = UnsafeMutablePointer<Int64>.allocate(capacity: 4)
            buf[0] = state.rawValue
            buf[1] = Int64(index)
            buf[2] = Int64(sequence)
            buf[3] = Int64(Self.ops.firstIndex(of: op) ?? 0)
            var r: MPI_Request? = lds_request_null()
            if MPI_Isend(buf, 4, lds_int64(), Int32(peer), Self.tag, comm, &r) == lds_success() {
                pending.append((r, buf))
            } else {
                buf.deallocate()
            }
        }
    }

    /// Frees the buffers of completed sends.
    private func reap() {
        var left: [(MPI_Request?, UnsafeMutablePointer<Int64>)] = []
        for (r, buf) in pending {
            var req = r
            var done: Int32 = 0
            MPI_Test(&req, &done, lds_status_ignore())
            if done != 0 { buf.deallocate() } else { left.append((req, buf)) }
        }
        pending = left
    }

    /// Receives every notice already here.
    private func drain() {
        while true {
            var flag: Int32 = 0
            var status = MPI_Status()
            guard MPI_Iprobe(lds_any_source(), Self.tag, comm, &flag, &status) == lds_success(), flag != 0 else {
                return
            }
            var v = [Int64](repeating: 0, count: 4)
            guard MPI_Recv(&v, 4, lds_int64(), status.MPI_SOURCE, Self.tag, comm, lds_status_ignore()) == lds_success()
            else { return }
            let state = State(rawValue: v[0]) ?? .waiting
            if state == .timedOut { timedOut = true }
            let op = Int(v[3]) < Self.ops.count ? Self.ops[Int(v[3])].rawValue : "?"
            latest[Int(status.MPI_SOURCE)] = Notice(state: state, index: Int(v[1]), sequence: Int(v[2]), op: op)
        }
    }

    /// True once any rank has said it gave up waiting.
    func someoneTimedOut() -> Bool {
        drain()
        return timedOut
    }

    /// The latest notice of every rank, after listening for `seconds` more.
    func collect(for seconds: Double) -> [Int: Notice] {
        let end = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
        repeat {
            drain()
            usleep(5_000)
        } while DispatchTime.now().uptimeNanoseconds < end
        return latest
    }
}
