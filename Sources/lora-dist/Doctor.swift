import ArgumentParser
import Foundation
import LoRADist

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the world and measure per-rank sgemm GFLOP/s and AllReduce latency and bandwidth.")

    @Option(help: "Run N ranks as threads of this process (in-process backend) instead of MPI.")
    var localRanks: Int?
    @Option(help: "Matrix size of the sgemm measurement.")
    var sgemmSize = 512
    @Option(help: "Message size of the AllReduce bandwidth measurement, in MiB.")
    var bandwidthMib = 64
    @Option(help: "Write the figures as JSON to this file (rank 0).")
    var json: String?

    func validate() throws {
        guard sgemmSize >= 16 else { throw ValidationError("--sgemm-size must be at least 16") }
        guard bandwidthMib >= 1 else { throw ValidationError("--bandwidth-mib must be at least 1") }
    }

    func run() throws {
        let backend = World.backendName(localRanks: localRanks)
        let code = World.run(localRanks: localRanks) { comm in
            let report = try LoRADist.Doctor.run(comm, backend: backend, sgemmSize: sgemmSize, bandwidthBytes: bandwidthMib << 20)
            if comm.rank == 0 {
                print(report.table(), terminator: "")
                if let json { try writeFileAtomically(try encodeJSON(report), to: json) }
            }
        }
        if code != 0 { throw ExitCode(code) }
    }
}
