import CDNNL
import COpenBLAS
import Foundation

/// What the CPU this process runs on offers, and what the GEMM libraries will use of it: the one
/// place that asks. The instruction sets come from cpuid (and XCR0, so a feature the operating
/// system does not enable counts as absent); oneDNN's ISA from `dnnl_get_effective_cpu_isa`,
/// which honours `ONEDNN_MAX_CPU_ISA`; OpenBLAS's kernel from `openblas_get_corename`, which
/// honours `OPENBLAS_CORETYPE`. Every figure lora-dist measures records it (doctor per rank, bench
/// train, bench gemm, a run's summary.json), so a figure says what it was measured on.
public struct CPUInfo: Codable, Sendable, Equatable {
    /// The CPU's brand string, e.g. "AMD EPYC 7B13" or "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz".
    public var model: String
    /// cpuid's vendor: "GenuineIntel", "AuthenticAMD", ...
    public var vendor: String
    /// Of the features that matter to lora-dist, those this CPU has and the OS enables, in a fixed
    /// order: AVX2, FMA, AVX-512F, AVX-512-VNNI, AVX-512-BF16, AVX-VNNI, AMX-BF16.
    public var features: [String]
    /// The ISA oneDNN dispatches to (lower case, e.g. "avx2", "avx512_core_bf16", "avx512_core_amx").
    public var onednnISA: String
    /// ONEDNN_MAX_CPU_ISA, when set: the cap that made `onednnISA` what it is.
    public var onednnMaxISA: String?
    /// The CPU has bf16 dot-product instructions (AVX-512-BF16 or AMX-BF16).
    public var bf16Instructions: Bool
    /// oneDNN may use them here: the native bf16 kernel (`LORA_DIST_BF16=native`) can run.
    public var nativeBF16: Bool
    /// OpenBLAS's kernel family for this CPU, e.g. "Haswell", "Zen", "SkylakeX", "Cooperlake".
    public var openblasCore: String
    /// OPENBLAS_CORETYPE, when set.
    public var openblasCoreType: String?

    /// The CPU of this process, read once.
    public static let current = CPUInfo.read()

    /// One line: "AMD EPYC 7B13 · AVX2 FMA · oneDNN avx2 · OpenBLAS Zen · bf16 widened (no bf16 instructions)".
    public var summary: String {
        let feats = features.isEmpty ? "no AVX2" : features.joined(separator: " ")
        let cap = onednnMaxISA.map { " (ONEDNN_MAX_CPU_ISA=\($0))" } ?? ""
        let blas = "OpenBLAS \(openblasCore)" + (openblasCoreType.map { " (OPENBLAS_CORETYPE=\($0))" } ?? "")
        return "\(model) · \(feats) · oneDNN \(onednnISA)\(cap) · \(blas) · bf16 \(bf16Note)"
    }

    /// What bf16 GEMMs can use here, in words: "native or widened" or "widened (no bf16 instructions)".
    public var bf16Note: String {
        if nativeBF16 { return "native or widened" }
        if bf16Instructions { return "widened (oneDNN capped below avx512_core_bf16)" }
        return "widened (no bf16 instructions)"
    }

    static func read() -> CPUInfo {
        func cpuid(_ leaf: UInt32, _ sub: UInt32 = 0) -> [UInt32] {
            var r: [UInt32] = [0, 0, 0, 0]
            r.withUnsafeMutableBufferPointer { lora_dist_cpuid(leaf, sub, $0.baseAddress!) }
            return r
        }
        func bit(_ v: UInt32, _ i: UInt32) -> Bool { (v >> i) & 1 == 1 }
        func text(_ regs: [UInt32]) -> String {
            var bytes: [UInt8] = []
            for r in regs { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: r >> (8 * UInt32(i)))) } }
            return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
        let leaf0 = cpuid(0)
        let maxLeaf = leaf0[0]
        let vendor = text([leaf0[1], leaf0[3], leaf0[2]])
        var model = "unknown CPU"
        if cpuid(0x8000_0000)[0] >= 0x8000_0004 {
            let brand = text(cpuid(0x8000_0002) + cpuid(0x8000_0003) + cpuid(0x8000_0004))
            let trimmed = brand.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            if !trimmed.isEmpty { model = trimmed }
        }
        let xcr0 = lora_dist_xcr0()
        let osAVX = xcr0 & 0x6 == 0x6
        let osAVX512 = xcr0 & 0xE6 == 0xE6
        let osAMX = xcr0 & 0x6_0000 == 0x6_0000
        let l1 = maxLeaf >= 1 ? cpuid(1) : [0, 0, 0, 0]
        let l7 = maxLeaf >= 7 ? cpuid(7) : [0, 0, 0, 0]
        let l71 = maxLeaf >= 7 && l7[0] >= 1 ? cpuid(7, 1) : [0, 0, 0, 0]
        let avx2 = osAVX && bit(l7[1], 5)
        let fma = osAVX && bit(l1[2], 12)
        let avx512f = osAVX512 && bit(l7[1], 16)
        let vnni512 = avx512f && bit(l7[2], 11)
        let bf16512 = avx512f && bit(l71[0], 5)
        let avxVNNI = osAVX && bit(l71[0], 4)
        let amxBF16 = osAMX && bit(l7[3], 22)
        var features: [String] = []
        for (has, name) in [
            (avx2, "AVX2"), (fma, "FMA"), (avx512f, "AVX-512F"), (vnni512, "AVX-512-VNNI"), (bf16512, "AVX-512-BF16"),
            (avxVNNI, "AVX-VNNI"), (amxBF16, "AMX-BF16")
        ] where has {
            features.append(name)
        }
        let isa = dnnl_get_effective_cpu_isa()
        var isaName = String(cString: dnnl_cpu_isa2str(isa))
        if isaName.hasPrefix("cpu_isa_") { isaName.removeFirst("cpu_isa_".count) }
        let bf16Instructions = bf16512 || amxBF16
        // avx512_core_bf16 (0xe7) and avx512_core_amx (0x3e7) hold every bit of 0xe7; avx2_vnni does not.
        let oneDNNBF16 = isa.rawValue & dnnl_cpu_isa_avx512_core_bf16.rawValue == dnnl_cpu_isa_avx512_core_bf16.rawValue
        let env = ProcessInfo.processInfo.environment
        return CPUInfo(
            model: model, vendor: vendor, features: features, onednnISA: isaName,
            onednnMaxISA: env["ONEDNN_MAX_CPU_ISA"].flatMap { $0.isEmpty ? nil : $0 }
                ?? env["DNNL_MAX_CPU_ISA"].flatMap { $0.isEmpty ? nil : $0 },
            bf16Instructions: bf16Instructions, nativeBF16: bf16Instructions && oneDNNBF16,
            openblasCore: openblas_get_corename().map { String(cString: $0) } ?? "?",
            openblasCoreType: env["OPENBLAS_CORETYPE"].flatMap { $0.isEmpty ? nil : $0 })
    }
}
