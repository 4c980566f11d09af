import Foundation

/// The faults a test injects into a run (`train`'s hidden --inject-*-at options), each at a step
/// on one world rank; the step loop consults the plan, and nothing else knows of it. The default
/// plan injects nothing.
public struct FaultPlan: Sendable {
    /// A NaN in this rank's gradient before the step's gradient sync.
    public var nan: (step: Int, rank: Int)?
    /// An error thrown at the step boundary, after the ranks agreed to go on.
    public var fail: (step: Int, rank: Int)?
    /// The process exits (status 3) at the step boundary, after the ranks agreed to go on.
    public var exit: (step: Int, rank: Int)?
    /// The rank stops responding before the step boundary's agreement: for `seconds`, or for good (nil).
    public var hang: (step: Int, rank: Int, seconds: Double?)?

    public init() {}

    /// No faults.
    public static let none = FaultPlan()

    /// Whether `rank` poisons its gradient at `step`.
    func poisonsGradient(step: Int, rank: Int) -> Bool { nan.map { $0.step == step && $0.rank == rank } ?? false }

    /// The faults before the ranks agree on stopping at the boundary before `step`: a hang.
    func beforeStopAgreement(step: Int, world: RecordingCommunicator) throws {
        if let h = hang, h.step == step, h.rank == world.rank { try Self.hang(world, seconds: h.seconds) }
    }

    /// The faults after the ranks agreed to run `step`: a thrown error, or an exit.
    func afterStopAgreement(step: Int, rank: Int) throws {
        if let f = fail, f.step == step, f.rank == rank {
            throw TrainError.invalidOption("injected failure at step \(step)")
        }
        if let f = exit, f.step == step, f.rank == rank { Foundation.exit(3) }
    }

    /// A rank that stops responding for `seconds` (nil: for good, never entering another
    /// collective: under MPI it sleeps until the job is killed; in-process it returns once the
    /// world has failed).
    static func hang(_ world: RecordingCommunicator, seconds: Double?) throws {
        let t0 = now()
        while seconds.map({ now() - t0 < $0 }) ?? true {
            if let ip = world.inner as? InProcessCommunicator, ip.isAborted {
                throw CommError.aborted("rank \(world.rank) hung (injected) until the job ended")
            }
            usleep(10_000)
        }
    }
}
