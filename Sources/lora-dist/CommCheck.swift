import ArgumentParser
import Foundation
import LoRADist

/// Checks every collective on the world it is given (used by the MPI tests), and injects faults.
struct CommCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "comm-check", abstract: "Check every collective on this world; optionally inject a fault.",
        shouldDisplay: false)

    @OptionGroup var ranks: RanksOptions
    @Option(help: "This rank calls the communicator's abort.") var abortRank: Int?
    @Option(help: "This rank throws an error.") var failRank: Int?
    @Option(help: "This rank exits with status 3 without a word to the others.") var exitRank: Int?

    func run() throws {
        let code = ranks.run { comm in
            try CollectiveChecks.run(comm)
            if comm.rank == exitRank { Foundation.exit(3) }
            if comm.rank == failRank { throw CommError.invalid("injected failure on rank \(comm.rank)") }
            if comm.rank == abortRank { try comm.abort("injected abort on rank \(comm.rank)") }
            // Everyone else waits in a collective that can only finish if all ranks arrive.
            try Collective.barrier(over: comm, at: .commCheck)
            var v: [Float] = [1]
            try Collective.sum(&v, over: comm, at: .commCheck)
            if comm.rank == 0 { print("comm-check: \(comm.size) ranks OK") }
        }
        if code != 0 { throw ExitCode(code) }
    }
}
