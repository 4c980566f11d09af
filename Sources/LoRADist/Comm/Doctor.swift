import Foundation

/// Per-rank figures `lora-dist doctor` measures: the practical sgemm ceiling (used for MFU) and the
/// AllReduce latency and bandwidth of this world, measured like the OSU / nccl-tests benchmarks.
public struct DoctorReport: Codable, Sendable {
    public struct Rank: Codable, Sendable {
        public var rank: Int
        public var host: String
        public var pid: Int
        public var blasThreads: Int
        public var sgemmGflops: Double
        public var allReduceLatencyMicros: Double
        public var allReduceAlgGBps: Double
        public var allReduceBusGBps: Double
    }
    public var backend: String
    public var worldSize: Int
    public var sgemmSize: Int
    public var bandwidthBytes: Int
    public var ranks: [Rank]

    public func table() -> String {
        var s = "world: \(worldSize) rank\(worldSize == 1 ? "" : "s") (\(backend)); sgemm \(sgemmSize)³; AllReduce 8 B and \(bandwidthBytes >> 20) MiB\n"
        var t = TextTable(["rank", "host", "pid", "blas threads", "sgemm GF/s", "AllReduce 8 B µs", "algbw GB/s", "busbw GB/s"], left: [1])
        for r in ranks {
            t.add([String(r.rank), r.host, String(r.pid), String(r.blasThreads), fixed(r.sgemmGflops, 1),
                   fixed(r.allReduceLatencyMicros, 2), fixed(r.allReduceAlgGBps, 3), fixed(r.allReduceBusGBps, 3)])
        }
        s += t.render()
        return s
    }
}

public enum Doctor {
    /// Best-of GFLOP/s of an n×n×n sgemm, timed for about `seconds`.
    public static func sgemmGflops(n: Int, seconds: Double = 0.5) -> Double {
        let a = FloatArena(count: n * n), b = FloatArena(count: n * n), c = FloatArena(count: n * n)
        var rng = RNG(seed: 1)
        for i in 0..<(n * n) { a.base[i] = rng.uniform() - 0.5; b.base[i] = rng.uniform() - 0.5 }
        sgemm(false, false, n, n, n, 1, a.base, n, b.base, n, 0, c.base, n)
        var best = 0.0
        let start = now()
        repeat {
            let t0 = now()
            sgemm(false, false, n, n, n, 1, a.base, n, b.base, n, 0, c.base, n)
            best = max(best, 2 * Double(n * n * n) / (now() - t0) / 1e9)
        } while now() - start < seconds
        return best
    }

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
    public static func run(_ comm: Communicator, backend: String, sgemmSize: Int, bandwidthBytes: Int) throws -> DoctorReport {
        // Ranks sharing cores would disturb each other's sgemm: measure one rank at a time.
        var gflops = 0.0
        for r in 0..<comm.size {
            try comm.barrier()
            if r == comm.rank { gflops = sgemmGflops(n: sgemmSize) }
        }
        let lat = comm.size > 1 ? try allReduceLatency(comm) : 0
        let t = comm.size > 1 ? try allReduceTime(comm, bytes: bandwidthBytes) : 0
        let alg = t > 0 ? Double(bandwidthBytes) / t / 1e9 : 0
        let bus = alg * 2 * Double(comm.size - 1) / Double(comm.size)
        let hosts = try comm.allGatherStrings(World.hostName())
        let mine: [Double] = [Double(ProcessInfo.processInfo.processIdentifier), Double(blasThreads()), gflops, lat * 1e6, alg, bus]
        let all = try comm.allGather(mine)
        let ranks = (0..<comm.size).map { r -> DoctorReport.Rank in
            let v = Array(all[(r * 6)..<(r * 6 + 6)])
            return DoctorReport.Rank(rank: r, host: hosts[r], pid: Int(v[0]), blasThreads: Int(v[1]), sgemmGflops: v[2],
                                     allReduceLatencyMicros: v[3], allReduceAlgGBps: v[4], allReduceBusGBps: v[5])
        }
        return DoctorReport(backend: backend, worldSize: comm.size, sgemmSize: sgemmSize, bandwidthBytes: bandwidthBytes, ranks: ranks)
    }
}
