import Foundation

/// SIGINT/SIGTERM set a flag the training loop reads at each step boundary, so the run stops
/// after a complete step and writes a checkpoint instead of dying mid-update.
public enum StopSignal {
    nonisolated(unsafe) static var flag: sig_atomic_t = 0

    public static func install() {
        signal(SIGINT) { _ in StopSignal.flag = 1 }
        signal(SIGTERM) { _ in StopSignal.flag = 1 }
    }

    public static var requested: Bool { flag != 0 }
}
