import ArgumentParser
import Foundation
import LoRADist

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            """
            Print the world and measure per-rank GEMM GFLOP/s (fp32 and bf16, against OpenBLAS) and AllReduce latency \
            and bandwidth.
            """
    )

    @OptionGroup var ranks: RanksOptions
    @Option(help: "Matrix size of the square fp32 GEMM measurement (the MFU peak).")
    var sgemmSize = 512
    @Option(help: "GEMM shapes MxNxK measured in fp32 and bf16 (comma-separated).")
    var gemmShapes = "512x2304x768,512x768x3072"
    @Option(help: "Seconds each GEMM shape is timed for.")
    var gemmSeconds = 0.2
    @Option(help: "Message size of the AllReduce bandwidth measurement, in MiB.")
    var bandwidthMib = 64
    @Option(help: "Write the figures as JSON to this file (rank 0).")
    var json: String?

    func validate() throws {
        guard sgemmSize >= 16 else { throw ValidationError("--sgemm-size must be at least 16") }
        guard bandwidthMib >= 1 else { throw ValidationError("--bandwidth-mib must be at least 1") }
        guard GemmBench.parseShapes(gemmShapes) != nil else {
            throw ValidationError("bad --gemm-shapes \(gemmShapes) (use MxNxK,...)")
        }
        guard gemmSeconds > 0 else { throw ValidationError("--gemm-seconds must be positive") }
    }

    func run() throws {
        let backend = World.backendName(localRanks: ranks.localRanks)
        let code = ranks.run { comm in
            let report = try LoRADist.Doctor.run(
                comm, backend: backend, sgemmSize: sgemmSize, bandwidthBytes: bandwidthMib << 20,
                gemmShapes: GemmBench.parseShapes(gemmShapes)!, gemmSeconds: gemmSeconds)
            if comm.rank == 0 {
                print(report.table(), terminator: "")
                if let json { try writeFileAtomically(try encodeJSON(report), to: json) }
            }
        }
        if code != 0 { throw ExitCode(code) }
    }
}
