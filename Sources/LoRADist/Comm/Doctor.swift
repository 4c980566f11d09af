import Foundation

/// Per-rank figures `lora-dist doctor` measures: the practical GEMM ceilings (the fp32 sgemm one
/// is used for MFU) and the AllReduce latency and bandwidth of this world, measured like the
/// OSU / nccl-tests benchmarks.
public struct DoctorReport: Codable, Sendable {
    public struct Rank: Codable, Sendable {
        public var rank: Int
        public var host: String
        public var pid: Int
        /// OpenBLAS's thread count.
        public var blasThreads: Int
        /// GFLOP/s of an sgemmSize³ fp32 GEMM on the backend in use.
        public var sgemmGflops: Double
        public var allReduceLatencyMicros: Double
        public var allReduceAlgGBps: Double
        public var allReduceBusGBps: Double
        /// Threads of this rank's GEMMs on the backend in use.
        public var gemmThreads: Int
        /// What this rank's CPU offers and what the libraries use of it (ranks may differ).
        public var cpu: CPUInfo
        /// GFLOP/s per entry of `gemmShapes`, on the backend in use: fp32; bf16 on oneDNN's native
        /// kernel (nil where this CPU has none, and on OpenBLAS); bf16 widened to fp32.
        public var gemmF32Gflops: [Double]
        public var gemmBF16Gflops: [Double?]
        public var gemmBF16WidenedGflops: [Double]
        /// OpenBLAS fp32 on the same shapes, for comparison.
        public var openblasF32Gflops: [Double]
    }
    public var backend: String
    public var worldSize: Int
    public var sgemmSize: Int
    public var bandwidthBytes: Int
    /// The GEMM backend in use (LORA_DIST_GEMM).
    public var gemmBackend: String
    /// The measured GEMM shapes, "MxNxK" (C[M,N] = A[M,K]·B[K,N]).
    public var gemmShapes: [String]
    public var ranks: [Rank]

    public func table() -> String {
        var s =
            """
            world: \(worldSize) rank\(worldSize == 1 ? "" : "s") (\(backend)); GEMM backend \(gemmBackend); sgemm \
            \(sgemmSize)³; AllReduce 8 B and \(bandwidthBytes >> 20) MiB\n
            """
        var t = TextTable(
            ["rank", "host", "pid", "GEMM threads", "sgemm GF/s", "AllReduce 8 B µs", "algbw GB/s", "busbw GB/s"],
            left: [1])
        for r in ranks {
            t.add([
                String(r.rank), r.host, String(r.pid), String(r.gemmThreads), fixed(r.sgemmGflops, 1),
                fixed(r.allReduceLatencyMicros, 2), fixed(r.allReduceAlgGBps, 3), fixed(r.allReduceBusGBps, 3)
            ])
        }
        s += t.render()
        var c = TextTable(
            ["rank", "CPU", "features", "oneDNN ISA", "OpenBLAS core", "bf16 GEMMs"], left: [1, 2, 3, 4, 5])
        for r in ranks {
            c.add([
                String(r.rank), r.cpu.model, r.cpu.features.isEmpty ? "-" : r.cpu.features.joined(separator: " "),
                r.cpu.onednnISA + (r.cpu.onednnMaxISA.map { " (ONEDNN_MAX_CPU_ISA=\($0))" } ?? ""),
                r.cpu.openblasCore + (r.cpu.openblasCoreType.map { " (OPENBLAS_CORETYPE=\($0))" } ?? ""), r.cpu.bf16Note
            ])
        }
        s += c.render()
        var g = TextTable([
            "rank", "GEMM M×N×K", "\(gemmBackend) fp32 GF/s", "\(gemmBackend) bf16 native GF/s",
            "\(gemmBackend) bf16 widened GF/s",
            "openblas fp32 GF/s", "fp32 vs openblas"
        ])
        for r in ranks {
            for (i, shape) in gemmShapes.enumerated() {
                let ratio = r.openblasF32Gflops[i] > 0 ? r.gemmF32Gflops[i] / r.openblasF32Gflops[i] : 0
                let native =
                    r.gemmBF16Gflops[i].map { fixed($0, 1) }
                    ?? (gemmBackend == GemmBackend.openblas.rawValue
                        ? "n/a (OpenBLAS widens)"
                        : r.cpu.bf16Instructions
                            ? "n/a (oneDNN capped at \(r.cpu.onednnISA))" : "n/a (no bf16 instructions)")
                g.add([
                    String(r.rank), shape.replacingOccurrences(of: "x", with: "×"), fixed(r.gemmF32Gflops[i], 1),
                    native, fixed(r.gemmBF16WidenedGflops[i], 1), fixed(r.openblasF32Gflops[i], 1),
                    fixed(ratio, 2) + "×"
                ])
            }
        }
        s += g.render()
        return s
    }
}

public enum Doctor {
    /// Best-of GFLOP/s of an n×n×n fp32 GEMM on the backend in use, timed for about `seconds`.
    public static func sgemmGflops(n: Int, seconds: Double = 0.5) -> Double {
        gemmGflops(backend: Gemm.backend, type: .f32, m: n, n: n, k: n, seconds: seconds)
    }

    /// Best-of GFLOP/s of C[m,n] = A[m,k]·B[k,n] with `type` operands on `backend`, on the calling
    /// thread with its GEMM threads, timed for about `seconds`.
    public static func gemmGflops(backend: GemmBackend, type: DType, m: Int, n: Int, k: Int, seconds: Double = 0.3)
        -> Double
    {
        GemmBench.measure(backend: backend, type: type, m: m, n: n, k: k, seconds: seconds).bestGflops
    }

    /// Shapes of GPT-2 small's layers at 512 tokens: the QKV projection (512×2304×768) and the MLP's
    /// second GEMM (512×768×3072), as C[M,N] = A[M,K]·B[K,N].
    public static let defaultGemmShapes: [(m: Int, n: Int, k: Int)] = [(512, 2304, 768), (512, 768, 3072)]

    /// Median per-call time of an 8-byte AllReduce (2 floats), in seconds.
    public static func allReduceLatency(_ comm: Communicator, iterations: Int = 200) throws -> Double {
        var v: [Float] = [1, 2]
        for _ in 0..<20 { try comm.allReduce(&v, op: .sum) }
        var samples: [Double] = []
        for _ in 0..<5 {
            try comm.barrier()
            let t0 = now()
            for _ in 0..<iterations { try comm.allReduce(&v, op: .sum) }
            samples.append((now() - t0) / Double(iterations))
        }
        samples.sort()
        return samples[samples.count / 2]
    }

    /// Median time of an AllReduce of `bytes`, in seconds.
    public static func allReduceTime(_ comm: Communicator, bytes: Int, reps: Int = 3) throws -> Double {
        let n = max(1, bytes / 4)
        let buf = FloatArena(count: n)
        for i in 0..<n { buf.base[i] = 1 }
        try comm.allReduce(buf.buffer, op: .sum)
        var samples: [Double] = []
        for _ in 0..<reps {
            try comm.barrier()
            let t0 = now()
            try comm.allReduce(buf.buffer, op: .sum)
            samples.append(now() - t0)
        }
        samples.sort()
        return samples[samples.count / 2]
    }

    /// Runs every measurement on every rank; all ranks return the gathered report.
    public static func run(
        _ comm: Communicator, backend: String, sgemmSize: Int, bandwidthBytes: Int,
        gemmShapes: [(m: Int, n: Int, k: Int)] = defaultGemmShapes, gemmSeconds: Double = 0.2
    ) throws -> DoctorReport {
        // Ranks sharing cores would disturb each other's GEMMs: measure one rank at a time.
        let gemm = Gemm.backend
        var gflops = 0.0
        var f32: [Double] = []
        var bf16: [Double] = []
        var widened: [Double] = []
        var blas: [Double] = []
        for r in 0..<comm.size {
            try comm.barrier()
            if r == comm.rank {
                gflops = sgemmGflops(n: sgemmSize)
                for s in gemmShapes {
                    f32.append(gemmGflops(backend: gemm, type: .f32, m: s.m, n: s.n, k: s.k, seconds: gemmSeconds))
                    // A native bf16 GEMM this CPU cannot run is -1 here, "n/a" in the report.
                    let native = GemmBench.measure(
                        backend: gemm, type: .bf16, m: s.m, n: s.n, k: s.k, seconds: gemmSeconds)
                    bf16.append(native.available && gemm == .onednn ? native.bestGflops : -1)
                    widened.append(
                        GemmBench.measure(
                            backend: gemm, type: .bf16, m: s.m, n: s.n, k: s.k, seconds: gemmSeconds,
                            widenFirst: true
                        ).bestGflops)
                    blas.append(
                        gemm == .openblas
                            ? f32.last!
                            : gemmGflops(backend: .openblas, type: .f32, m: s.m, n: s.n, k: s.k, seconds: gemmSeconds))
                }
            }
        }
        let lat = comm.size > 1 ? try allReduceLatency(comm) : 0
        let t = comm.size > 1 ? try allReduceTime(comm, bytes: bandwidthBytes) : 0
        let alg = t > 0 ? Double(bandwidthBytes) / t / 1e9 : 0
        let bus = alg * 2 * Double(comm.size - 1) / Double(comm.size)
        let hosts = try comm.allGatherStrings(World.hostName())
        let cpus = try comm.allGatherStrings(String(decoding: try JSONEncoder().encode(CPUInfo.current), as: UTF8.self))
            .map { try JSONDecoder().decode(CPUInfo.self, from: Data($0.utf8)) }
        let mine: [Double] =
            [
                Double(ProcessInfo.processInfo.processIdentifier), Double(blasThreads()), gflops, lat * 1e6, alg, bus,
                Double(Gemm.threads)
            ] + f32 + bf16 + widened + blas
        let w = mine.count
        let g = gemmShapes.count
        let all = try comm.allGather(mine)
        let ranks = (0..<comm.size).map { r -> DoctorReport.Rank in
            let v = Array(all[(r * w)..<(r * w + w)])
            return DoctorReport.Rank(
                rank: r, host: hosts[r], pid: Int(v[0]), blasThreads: Int(v[1]), sgemmGflops: v[2],
                allReduceLatencyMicros: v[3], allReduceAlgGBps: v[4], allReduceBusGBps: v[5],
                gemmThreads: Int(v[6]), cpu: cpus[r], gemmF32Gflops: Array(v[7..<(7 + g)]),
                gemmBF16Gflops: v[(7 + g)..<(7 + 2 * g)].map { $0 < 0 ? nil : $0 },
                gemmBF16WidenedGflops: Array(v[(7 + 2 * g)..<(7 + 3 * g)]),
                openblasF32Gflops: Array(v[(7 + 3 * g)..<(7 + 4 * g)]))
        }
        return DoctorReport(
            backend: backend, worldSize: comm.size, sgemmSize: sgemmSize, bandwidthBytes: bandwidthBytes,
            gemmBackend: gemm.rawValue, gemmShapes: gemmShapes.map { "\($0.m)x\($0.n)x\($0.k)" }, ranks: ranks)
    }
}
