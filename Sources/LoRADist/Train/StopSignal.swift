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

    public static func install() {
        for s in signals { signal(s) { n in StopSignal.flag = n } }
    }

    public static var requested: Bool { flag != 0 }

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
