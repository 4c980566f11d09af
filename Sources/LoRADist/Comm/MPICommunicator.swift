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

    /// The number of processes the launcher started, read from its environment before MPI_Init
    /// (nil when unknown or not launched by MPI).
    public static var launchedWorldSize: Int? {
        let env = ProcessInfo.processInfo.environment
        return ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"].lazy.compactMap { env[$0].flatMap { Int($0) } }.first
    }

    /// This process's rank as the launcher's environment tells it, before MPI_Init (nil when unknown).
    public static var launchedRank: Int? {
        let env = ProcessInfo.processInfo.environment
        return ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"].lazy.compactMap { env[$0].flatMap { Int($0) } }.first
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

    /// True once `world()` has initialised MPI and until `finalize()`.
    public static var isActive: Bool { initialized && !finalized }

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
public final class MPICommunicator: Communicator {
    let comm: MPI_Comm
    public let rank: Int
    public let size: Int
    public let name: String

    init(comm: MPI_Comm, name: String) throws {
        self.comm = comm
        self.name = name
        try MPIRuntime.check("MPI_Comm_set_errhandler", MPI_Comm_set_errhandler(comm, lds_errors_return()))
        var r: Int32 = 0, s: Int32 = 0
        try MPIRuntime.check("MPI_Comm_rank", MPI_Comm_rank(comm, &r))
        try MPIRuntime.check("MPI_Comm_size", MPI_Comm_size(comm, &s))
        rank = Int(r)
        size = Int(s)
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

    public func allReduce<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp) throws {
        let mop = op == .sum ? lds_op_sum() : lds_op_max()
        for lo in stride(from: 0, to: buffer.count, by: Self.maxCount) {
            let n = min(Self.maxCount, buffer.count - lo)
            try MPIRuntime.check("MPI_Allreduce", MPI_Allreduce(lds_in_place(), buffer.baseAddress! + lo, Int32(n),
                                                                datatype(T.kind), mop, comm))
        }
    }

    public func broadcast<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws {
        guard root >= 0 && root < size else { throw CommError.invalid("broadcast root \(root) outside 0..<\(size)") }
        for lo in stride(from: 0, to: buffer.count, by: Self.maxCount) {
            let n = min(Self.maxCount, buffer.count - lo)
            try MPIRuntime.check("MPI_Bcast", MPI_Bcast(buffer.baseAddress! + lo, Int32(n), datatype(T.kind), Int32(root), comm))
        }
    }

    public func allGather<T: CollectiveElement>(_ send: UnsafeBufferPointer<T>, into recv: UnsafeMutableBufferPointer<T>) throws {
        guard recv.count == send.count * size else {
            throw CommError.invalid("allGather receive buffer holds \(recv.count) elements, expected \(send.count * size)")
        }
        guard send.count <= Self.maxCount else {
            throw CommError.invalid("allGather of \(send.count) elements per rank exceeds MPI's 32-bit count")
        }
        if send.isEmpty { return }
        let dt = datatype(T.kind)
        try MPIRuntime.check("MPI_Allgather", MPI_Allgather(send.baseAddress, Int32(send.count), dt,
                                                            recv.baseAddress, Int32(send.count), dt, comm))
    }

    public func barrier() throws {
        try MPIRuntime.check("MPI_Barrier", MPI_Barrier(comm))
    }

    public func split(color: Int, key: Int, name: String) throws -> Communicator {
        var sub = lds_comm_null()
        try MPIRuntime.check("MPI_Comm_split", MPI_Comm_split(comm, Int32(color), Int32(key), &sub))
        guard let sub else { throw CommError.invalid("MPI_Comm_split returned MPI_COMM_NULL") }
        return try MPICommunicator(comm: sub, name: name)
    }

    /// Prints the message once, from this rank, then MPI_Abort on the world (not only this group:
    /// every process of the job must end).
    public func abort(_ message: String) throws -> Never {
        FileHandle.standardError.write(Data("lora-dist: error: rank \(MPIRuntime.worldRank): job aborted: \(message)\n".utf8))
        MPIRuntime.abortWorld(code: 1)
    }
}
