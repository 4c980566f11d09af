import Foundation

/// How a command gets its ranks: N threads in this process (`--local-ranks N`), the MPI job this
/// process belongs to (started by mpirun or srun), or a world of one.
public enum World {
    /// Name of the backend chosen for these arguments.
    public static func backendName(localRanks: Int?) -> String {
        if localRanks != nil { return "in-process" }
        return MPIRuntime.launchedByMPI ? "mpi" : "single"
    }

    /// Runs `body` once per rank with that rank's recording communicator (its own ledger), and
    /// returns the process exit status: 0, or 1 after printing the root-cause error once. Under
    /// MPI a failing rank aborts the whole job (MPI_Abort), so no rank waits forever.
    public static func run(localRanks: Int?, _ body: @escaping (RecordingCommunicator) throws -> Void) -> Int32 {
        // An unknown LORA_DIST_GEMM or LORA_DIST_BF16, or a native bf16 kernel this CPU lacks,
        // stops every rank with its line before any work: here for the ranks of this process, and
        // under MPI as an agreement once MPI has started (every rank says the lowest failing
        // rank's line and all exit 1 together; the ranks of a cluster may have different CPUs).
        if !MPIRuntime.launchedByMPI || localRanks != nil {
            do { try Gemm.checkEnvironment() } catch { return fail("\(error)") }
        }
        Gemm.useRankThreads()
        if let n = localRanks {
            guard n >= 1 else { return fail("--local-ranks must be at least 1 (got \(n))") }
            if MPIRuntime.launchedByMPI, let s = ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_SIZE"],
                Int(s) ?? 1 > 1
            {
                return fail("--local-ranks cannot be combined with an mpirun launch of several processes")
            }
            do {
                _ = try InProcessCommunicator.runReportingRank(ranks: n) { comm in try body(RecordingCommunicator(comm))
                }
                if let f = Gemm.failure { return fail("\(f)") }
                return 0
            } catch let f as RankFailure {
                // Every rank that gave up waiting in a collective says what it saw, as under MPI.
                for (r, e) in f.timeouts where r != f.rank {
                    FileHandle.standardError.write(Data("lora-dist: error: rank \(r): \(e)\n".utf8))
                }
                return fail((f.timeouts.isEmpty ? "" : "rank \(f.rank): ") + "\(f.error)")
            } catch {
                return fail("\(error)")
            }
        }
        if MPIRuntime.launchedByMPI {
            let world: MPICommunicator
            do { world = try MPIRuntime.world() } catch { return fail("\(error)") }
            do {
                try world.agree { try Gemm.checkEnvironment() }
                try body(RecordingCommunicator(world))
                // A GEMM that failed filled its output with NaN and let the rank go on; its
                // message is the command's error (the trainer stops at the step it happened).
                try world.agree { try Gemm.checkFailure() }
                MPIRuntime.finalize()
                return 0
            } catch {
                let prefix = world.size > 1 ? "rank \(world.rank): " : ""
                FileHandle.standardError.write(Data("lora-dist: error: \(prefix)\(error)\n".utf8))
                // Every rank threw an agreed failure at the same point: each has said it, and all
                // can finalise together. Any other error may be this rank's alone: end the job.
                if world.size > 1 && !(error is AgreedFailure) { MPIRuntime.abortWorld(code: 1) }
                MPIRuntime.finalize()
                return 1
            }
        }
        do {
            _ = try InProcessCommunicator.run(ranks: 1) { comm in try body(RecordingCommunicator(comm)) }
            if let f = Gemm.failure { return fail("\(f)") }
            return 0
        } catch {
            return fail("\(error)")
        }
    }

    static func fail(_ message: String) -> Int32 {
        FileHandle.standardError.write(Data("lora-dist: error: \(message)\n".utf8))
        return 1
    }

    /// The host name (MPI's processor name under MPI).
    public static func hostName() -> String {
        if MPIRuntime.launchedByMPI { return MPIRuntime.processorName() }
        return ProcessInfo.processInfo.hostName
    }
}
