import XCTest

@testable import LoRADist

/// What the CPU offers and what lora-dist does with it. Every test holds on every CPU: where
/// behaviour differs (a CPU with bf16 instructions oneDNN may use, or one without, such as an AMD
/// Zen 3 core or any core under ONEDNN_MAX_CPU_ISA=AVX2), each branch asserts what it should, and
/// the ONEDNN_MAX_CPU_ISA=AVX2 runs below take the no-bf16 branch on every machine.
final class CPUTests: XCTestCase {
    /// The kernel's own view of the CPU: the flags line and model name of /proc/cpuinfo.
    func procCPUInfo() throws -> (flags: Set<String>, model: String) {
        let text = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let lines = text.split(separator: "\n")
        let flags =
            lines.first { $0.hasPrefix("flags") }.map {
                $0.split(separator: ":", maxSplits: 1)[1].split(separator: " ").map(String.init)
            } ?? []
        let model =
            lines.first { $0.hasPrefix("model name") }.map {
                $0.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces)
            } ?? ""
        return (Set(flags), model)
    }

    func testCPUIDFeaturesAgreeWithTheKernelsFlags() throws {
        let cpu = CPUInfo.current
        let proc = try procCPUInfo()
        XCTAssertFalse(proc.flags.isEmpty, "/proc/cpuinfo has no flags line")
        for (name, flag) in [
            ("AVX2", "avx2"), ("FMA", "fma"), ("AVX-512F", "avx512f"), ("AVX-512-VNNI", "avx512_vnni"),
            ("AVX-512-BF16", "avx512_bf16"), ("AVX-VNNI", "avx_vnni"), ("AMX-BF16", "amx_bf16")
        ] {
            XCTAssertEqual(
                cpu.features.contains(name), proc.flags.contains(flag), "\(name) by cpuid vs \(flag) in /proc/cpuinfo")
        }
        XCTAssertEqual(cpu.bf16Instructions, proc.flags.contains("avx512_bf16") || proc.flags.contains("amx_bf16"))
        // The brand string, as the kernel prints it (it collapses no spaces; we do).
        XCTAssertEqual(cpu.model, proc.model.split(separator: " ").joined(separator: " "))
        XCTAssertTrue(["GenuineIntel", "AuthenticAMD"].contains(cpu.vendor) || !cpu.vendor.isEmpty)
        // lora-dist is compiled for AVX2 + FMA (Package.swift): a CPU running these tests has both.
        XCTAssertTrue(cpu.features.contains("AVX2") && cpu.features.contains("FMA"), cpu.summary)
        // Native bf16 needs the instructions and oneDNN at avx512_core_bf16 or above.
        XCTAssertEqual(
            cpu.nativeBF16, cpu.bf16Instructions && ["avx512_core_bf16", "avx512_core_amx"].contains(cpu.onednnISA),
            cpu.summary)
        XCTAssertTrue(cpu.summary.contains("oneDNN \(cpu.onednnISA)") && cpu.summary.contains(cpu.model), cpu.summary)
    }

    /// The native bf16 kernel where oneDNN has one; where it has none, a forced native GEMM is a
    /// recorded failure with its message and a NaN output (never a crash), and the widened kernel,
    /// the default, gives the exact product.
    func testNativeBF16KernelRunsOrFailsWithAMessage() throws {
        Gemm.clearFailure()
        defer { Gemm.clearFailure() }
        let m = 4
        let n = 600
        let k = 530
        var rng = RNG(seed: 11)
        let a = (0..<(m * k)).map { _ in BF16.round(Float(rng.below(17)) - 8) }
        let b = (0..<(k * n)).map { _ in BF16.round(Float(rng.below(17)) - 8) }
        var exact = [Float](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for p in 0..<k { s += Double(BF16.widen(a[i * k + p])) * Double(BF16.widen(b[p * n + j])) }
                exact[i * n + j] = Float(s)
            }
        }
        func run(_ kernel: Gemm.BF16Kernel) -> [Float] {
            var c = [Float](repeating: 1, count: m * n)
            a.withUnsafeBufferPointer { ap in
                b.withUnsafeBufferPointer { bp in
                    Gemm.with(bf16Kernel: kernel) {
                        Gemm.run(
                            on: .onednn, false, false, m, n, k, 1, .bf16(ap.baseAddress!), k, .bf16(bp.baseAddress!), n,
                            0, &c, n)
                    }
                }
            }
            return c
        }
        XCTAssertEqual(run(.widened), exact, "widened bf16 of small integers is exact")
        XCTAssertNil(Gemm.failure)
        let native = run(.native)
        if CPUInfo.current.nativeBF16 {
            XCTAssertNil(Gemm.failure, "\(Gemm.failure.map { "\($0)" } ?? "")")
            XCTAssertEqual(native, exact, "native bf16 of small integers is exact")
        } else {
            let f = try XCTUnwrap(Gemm.failure, "a native bf16 GEMM without bf16 instructions must record a failure")
            XCTAssertTrue(
                f.message.contains("unimplemented") && f.message.contains("use the widened bf16 kernel"), f.message)
            XCTAssertTrue(native.allSatisfy(\.isNaN), "a failed GEMM's C is NaN, so no later step can use it unnoticed")
            XCTAssertEqual(Gemm.oneDNNImplementation(false, false, m, n, k, type: .bf16, lda: k, ldb: n, ldc: n), "n/a")
            let meas = GemmBench.measure(backend: .onednn, type: .bf16, m: 64, n: 64, k: 64, seconds: 0.01)
            XCTAssertFalse(meas.available)
            XCTAssertTrue(meas.bestCell.hasPrefix("n/a ("), meas.bestCell)
        }
    }

    /// A GEMM that fails inside a training step (here: the native bf16 kernel forced on a CPU
    /// without one) stops the step on every rank with the GEMM's message; where the kernel
    /// exists, the same step trains.
    func testAGemmFailureInAStepStopsEveryRankWithItsMessage() throws {
        Gemm.clearFailure()
        defer { Gemm.clearFailure() }
        let cfg = Fixtures.tiny
        var o = TrainOptions()
        o.steps = 2
        o.globalBatch = 2
        o.microBatch = 1
        o.seq = 8
        o.precision = .bf16
        o.lora = LoRAConfig(rank: 2, alpha: 4, targets: LoRATarget.available(in: .gpt2))
        let outcomes = try Gemm.with(bf16Kernel: .native) {
            try InProcessCommunicator.run(ranks: 2) { raw -> String in
                let ledger = Ledger()
                let grid = try ProcessGrid(world: RecordingCommunicator(raw, ledger: ledger), tp: 2)
                let model = try Fixtures.randomModel(
                    cfg, grid.tp, trainable: .lora(o.lora), precision: .bf16,
                    baseSeed: 3)
                model.lora!.initialize(seed: 1)
                let t = try Trainer(grid: grid, ledger: ledger, model: model, options: o)
                let mb = MicroBatch(batch: 1, seq: 8)
                for i in 0..<8 {
                    mb.tokens[i] = Int32(i + 1)
                    mb.targets[i] = Int32(i + 2)
                    mb.mask[i] = 1
                }
                do {
                    let s = try t.trainStep([mb], globalTokens: 8)
                    return "loss \(s.loss)"
                } catch {
                    return "error: \(error)"
                }
            }
        }
        XCTAssertEqual(outcomes.count, 2)
        if CPUInfo.current.nativeBF16 {
            for o in outcomes { XCTAssertTrue(o.hasPrefix("loss ") && !o.contains("nan"), o) }
        } else {
            for o in outcomes {
                XCTAssertTrue(
                    o.contains("a GEMM failed: oneDNN") && o.contains("use the widened bf16 kernel")
                        && o.contains("(on rank 0)"), o)
            }
        }
    }

    // MARK: the command line, on this CPU and under ONEDNN_MAX_CPU_ISA=AVX2 (no bf16 on any CPU)

    static let avx2 = ["ONEDNN_MAX_CPU_ISA": "AVX2"]
    static let quickTrain = [
        "train", "--precision", "bf16", "--steps", "1", "--batch", "2", "--eval-examples", "0", "--valid-limit", "2"
    ]

    func testNativeBF16IsRefusedOnEveryRankWhereTheCPUHasNone() throws {
        for env in [["LORA_DIST_BF16": "native"], ["LORA_DIST_BF16": "native"].merging(Self.avx2) { $1 }] {
            let capped = env["ONEDNN_MAX_CPU_ISA"] != nil
            let refused = capped || !CPUInfo.current.nativeBF16
            let one = try Launcher.lora(Self.quickTrain + ["--out", makeTempDir("native")], timeout: 300, env: env)
            XCTAssertFalse(one.timedOut)
            if refused {
                XCTAssertEqual(one.status, 1, one.output)
                XCTAssertTrue(
                    one.output.contains("lora-dist: error: LORA_DIST_BF16=native needs oneDNN's native bf16 kernel"),
                    one.output)
                XCTAssertTrue(one.output.contains("unset LORA_DIST_BF16 (or set it to widened)"), one.output)
                XCTAssertFalse(one.output.contains("Fatal error") || one.output.contains("Backtrace"), one.output)
                XCTAssertEqual(one.output.split(separator: "\n").count, 1, "one clear line:\n\(one.output)")
                for n in [2, 4] {
                    let r = try Launcher.mpirun(
                        n, Self.quickTrain + ["--out", makeTempDir("native")], timeout: 120, env: env)
                    XCTAssertFalse(r.timedOut)
                    XCTAssertNotEqual(r.status, 0, r.output)
                    for k in 0..<n {
                        XCTAssertTrue(
                            r.output.contains("lora-dist: error: rank \(k): LORA_DIST_BF16=native needs"),
                            "rank \(k) of \(n):\n\(r.output)")
                    }
                    XCTAssertFalse(r.output.contains("Fatal error") || r.output.contains("Backtrace"), r.output)
                }
                let local = try Launcher.lora(
                    Self.quickTrain + ["--local-ranks", "2", "--out", makeTempDir("native")], timeout: 120, env: env)
                XCTAssertEqual(local.status, 1, local.output)
                XCTAssertTrue(local.output.contains("LORA_DIST_BF16=native needs"), local.output)
            } else {
                XCTAssertEqual(one.status, 0, one.output)
            }
        }
    }

    func testBF16TrainingRunsOnTheWidenedKernelUnderAnAVX2Cap() throws {
        let out = makeTempDir("avx2")
        let r = try Launcher.lora(Self.quickTrain + ["--steps", "3", "--out", out], timeout: 300, env: Self.avx2)
        XCTAssertEqual(r.status, 0, r.output)
        let summary =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/summary.json")))
            as! [String: Any]
        XCTAssertEqual(summary["gemm"] as? String, "onednn bf16 widened")
        let cpu = try XCTUnwrap(summary["cpu"] as? [String: Any])
        XCTAssertEqual(cpu["onednn_isa"] as? String, "avx2")
        XCTAssertEqual(cpu["onednn_max_isa"] as? String, "AVX2")
        XCTAssertEqual(cpu["native_bf16"] as? Bool, false)
        XCTAssertTrue((summary["train_loss_final"] as? Double).map(\.isFinite) ?? false, "\(summary)")
    }

    func testDoctorPrintsEveryRanksCPUAndBF16OrNotAvailable() throws {
        for env in [[:], Self.avx2] {
            let capped = !env.isEmpty
            let native = !capped && CPUInfo.current.nativeBF16
            let args = [
                "doctor", "--bandwidth-mib", "1", "--sgemm-size", "64", "--gemm-shapes", "64x64x64", "--gemm-seconds",
                "0.02"
            ]
            let runs = [
                try Launcher.lora(args + ["--local-ranks", "4"], timeout: 120, env: env),
                try Launcher.mpirun(4, args, timeout: 120, env: env)
            ]
            for r in runs {
                XCTAssertEqual(r.status, 0, r.output)
                XCTAssertFalse(r.output.contains("Fatal error"), r.output)
                let cpuRows = r.output.split(separator: "\n").filter { $0.contains(CPUInfo.current.model) }
                XCTAssertEqual(cpuRows.count, 4, "one CPU row per rank:\n\(r.output)")
                let gemmRows = r.output.split(separator: "\n").filter { $0.contains("64×64×64") }
                XCTAssertEqual(gemmRows.count, 4, r.output)
                for row in gemmRows {
                    XCTAssertEqual(row.contains("n/a ("), !native, String(row))
                }
                if capped { XCTAssertTrue(r.output.contains("avx2 (ONEDNN_MAX_CPU_ISA=AVX2)"), r.output) }
            }
        }
    }

    func testBenchGemmAndBenchTrainRunToTheEndUnderAnAVX2Cap() throws {
        let json = makeTempDir("gemm") + "/gemm.json"
        let g = try Launcher.lora(
            ["bench", "gemm", "--shapes", "64x96x32", "--tiny", "16", "--seconds", "0.02", "--json", json],
            timeout: 120, env: Self.avx2)
        XCTAssertEqual(g.status, 0, g.output)
        XCTAssertTrue(
            g.output.contains("CPU: \(CPUInfo.current.model)")
                && g.output.contains("oneDNN avx2 (ONEDNN_MAX_CPU_ISA=AVX2)"), g.output)
        XCTAssertTrue(g.output.contains("n/a ("), "the native bf16 column is n/a:\n\(g.output)")
        let obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as! [String: Any]
        let ms = try XCTUnwrap(obj["measurements"] as? [[String: Any]])
        let natives = ms.filter { $0["backend"] as? String == "onednn" && $0["type"] as? String == "bf16" }
        XCTAssertFalse(natives.isEmpty)
        for m in natives { XCTAssertEqual(m["available"] as? Bool, false) }
        for m in ms where m["type"] as? String == "f32" { XCTAssertGreaterThan(m["bestGflops"] as? Double ?? 0, 0) }
        XCTAssertTrue(g.output.contains("onednn ") || g.output.contains("openblas "), g.output)

        let t = try Launcher.lora(
            ["bench", "train", "--models", "tiny", "--methods", "lora", "--precision", "bf16", "--steps", "1"],
            timeout: 300, env: Self.avx2)
        XCTAssertEqual(t.status, 0, t.output)
        XCTAssertTrue(t.output.contains("measured tiny lora:") && t.output.contains("bf16 widened"), t.output)
        XCTAssertTrue(t.output.contains("CPU: \(CPUInfo.current.model)"), t.output)
    }
}
