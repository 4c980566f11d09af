// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "lora-dist",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "lora-dist", targets: ["lora-dist"]),
        .library(name: "LoRADist", targets: ["LoRADist"]),
        // The file readers as libFuzzer targets (launch/fuzz builds it with -sanitize=fuzzer,address).
        .executable(name: "lora-dist-fuzz", targets: ["lora-dist-fuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // Open MPI through a C shim of static inline getters for its handle macros.
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
        // OpenBLAS (cblas_sgemm) and LAPACKE.
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev", "liblapacke-dev"])]),
        .target(
            name: "LoRADist",
            dependencies: ["CMPI", "COpenBLAS"],
            swiftSettings: [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]
        ),
        .executableTarget(
            name: "lora-dist",
            dependencies: ["LoRADist", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(name: "lora-dist-fuzz", dependencies: ["LoRADist"]),
        .testTarget(name: "LoRADistTests", dependencies: ["LoRADist"]),
    ],
    swiftLanguageModes: [.v5]
)
