// swift-tools-version:6.0
import PackageDescription

// The library's own SIMD loops (LayerNorm, GELU, softmax, bf16 conversions) are written for wide
// vectors; on x86-64 they are compiled for AVX2 + FMA (Haswell, as every x86 server since 2013 has)
// instead of the SSE2 baseline. The GEMMs pick their kernels at run time (oneDNN, OpenBLAS).
#if arch(x86_64)
let vectorFlags = ["-target-cpu", "haswell"]
#else
let vectorFlags: [String] = []
#endif

let package = Package(
    name: "lora-dist",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "lora-dist", targets: ["lora-dist"]),
        .library(name: "LoRADist", targets: ["LoRADist"]),
        // The file readers as libFuzzer targets (launch/fuzz builds it with -sanitize=fuzzer,address).
        .executable(name: "lora-dist-fuzz", targets: ["lora-dist-fuzz"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // `lora-dist serve`'s HTTP server (LoRADistServe), over SwiftNIO.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0")
    ],
    targets: [
        // Open MPI through a C shim of static inline getters for its handle macros.
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
        // OpenBLAS (cblas_sgemm) and LAPACKE.
        .systemLibrary(
            name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev", "liblapacke-dev"])]),
        // oneDNN (matmul primitives, the default GEMM backend) and libgomp's thread-count calls.
        .systemLibrary(name: "CDNNL", providers: [.apt(["libdnnl-dev"])]),
        .target(
            name: "LoRADist",
            dependencies: ["CMPI", "COpenBLAS", "CDNNL"],
            // Release builds keep every precondition (-O, not -Ounchecked): a wrong shape stops
            // with its message instead of writing past a buffer.
            swiftSettings: [.unsafeFlags(vectorFlags, .when(configuration: .release))]
        ),
        // The OpenAI-style HTTP layer of `lora-dist serve` and its engine seam; Hummingbird stays out
        // of LoRADist.
        .target(
            name: "LoRADistServe",
            dependencies: ["LoRADist", .product(name: "Hummingbird", package: "hummingbird")]
        ),
        .executableTarget(
            name: "lora-dist",
            dependencies: [
                "LoRADist", "LoRADistServe", .product(name: "ArgumentParser", package: "swift-argument-parser")
            ]
        ),
        .executableTarget(name: "lora-dist-fuzz", dependencies: ["LoRADist"]),
        .testTarget(name: "LoRADistTests", dependencies: ["LoRADist", "LoRADistServe"])
    ],
    swiftLanguageModes: [.v5]
)
