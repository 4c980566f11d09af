import Foundation
import LoRADist

// The readers of user files as fuzz targets (LoRADist's FuzzTargets).
//
// Built by launch/fuzz with -sanitize=fuzzer,address -parse-as-library -D FUZZING, libFuzzer
// provides main and calls LLVMFuzzerTestOneInput; LORA_DIST_FUZZ_TARGET names the target.
// Built plainly (as `swift build` does), it replays inputs: lora-dist-fuzz TARGET FILE|DIR...

#if FUZZING
let fuzzTarget: String = {
    let t = ProcessInfo.processInfo.environment["LORA_DIST_FUZZ_TARGET"] ?? ""
    guard FuzzTargets.names.contains(t) else {
        fatalError("set LORA_DIST_FUZZ_TARGET to one of \(FuzzTargets.names.joined(separator: ", ")) (got \"\(t)\")")
    }
    return t
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzTargets.run(fuzzTarget, Data(bytes: data, count: size))
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32
) -> Int32

// SwiftPM links an executable's entry point under this name: hand over to libFuzzer's driver.
@_cdecl("lora_dist_fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var c = argc
    var v = argv
    return runFuzzerDriver(&c, &v) { data, size in fuzzOneInput(data, size) }
}
#else
@main
enum Replay {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        guard let target = args.first, FuzzTargets.names.contains(target) else {
            FileHandle.standardError.write(
                Data(
                    """
                    usage: lora-dist-fuzz TARGET FILE|DIR...  (targets: \(FuzzTargets.names.joined(separator: ", ")))\n
                    """
                    .utf8))
            exit(2)
        }
        var accepted = 0
        var refused = 0
        for path in args.dropFirst() {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { continue }
            let files =
                isDir.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 }
                : [path]
            for f in files {
                guard let d = try? Data(TextFile.readWholeFile(f)) else { continue }
                if FuzzTargets.run(target, d) { accepted += 1 } else { refused += 1 }
            }
        }
        print("\(target): \(accepted) accepted, \(refused) refused")
    }
}
#endif
