import Foundation

/// SIGTERM, SIGINT, SIGHUP and SIGUSR1 set a flag the training loop reads at each step boundary,
/// so the run stops after a complete step and writes a checkpoint instead of dying mid-update.
/// SIGTERM is what Slurm and mpirun send before SIGKILL; SIGUSR1 is what `mpirun` forwards to
/// every rank without ending the job itself (launch/mpirun turns SIGTERM and SIGINT into it), and
/// what `#SBATCH --signal` can ask for ahead of the time limit.
public enum StopSignal {
    nonisolated(unsafe) static var flag: sig_atomic_t = 0

    /// The signals that request a stop.
    public static let signals: [Int32] = [SIGTERM, SIGINT, SIGHUP, SIGUSR1]

    /// Blocks the stop signals in the calling thread (and so in every thread it starts after:
    /// MPI's, OpenMP's, the in-process ranks') and takes them on one thread of their own with
    /// sigwait. No handler ever interrupts a thread that computes: a handler run on a thread inside
    /// a oneDNN primitive corrupted the heap (about 1 run in 6 of SIGTERM to mpirun -n 4; never with
    /// OpenBLAS). Call it first, before any thread is started. The handler stays installed for a
    /// thread started earlier that does not block them.
    public static func install() {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals {
            signal(s) { n in StopSignal.flag = n }
            sigaddset(&set, s)
        }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let blocked = set
        let waiter = Thread {
            var set = blocked
            while true {
                var n: Int32 = 0
                if sigwait(&set, &n) == 0 { StopSignal.flag = n }
            }
        }
        waiter.name = "stop-signals"
        waiter.start()
    }

    /// The signal that asked for the stop (0: none).
    public static var signalNumber: Int32 { Int32(flag) }

    /// The conventional exit status of a process stopped by signal `n`: 128 + n.
    public static func exitStatus(_ n: Int32) -> Int32 { 128 + n }

    public static func name(_ n: Int32) -> String {
        switch n {
        case SIGTERM: return "SIGTERM"
        case SIGINT: return "SIGINT"
        case SIGHUP: return "SIGHUP"
        case SIGUSR1: return "SIGUSR1"
        default: return "signal \(n)"
        }
    }
}
