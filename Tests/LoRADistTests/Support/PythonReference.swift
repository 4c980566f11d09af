import Foundation
import XCTest

/// Runs a script of reference/ with the Python that has the reference packages ($LORA_DIST_PYTHON,
/// else python3). A missing interpreter or package fails the test, saying how to install them:
/// CI installs them, so a parity test must never pass by not running.
enum PythonReference {
    static var python: String { ProcessInfo.processInfo.environment["LORA_DIST_PYTHON"] ?? "python3" }

    struct Failure: Error, CustomStringConvertible { var description: String }

    /// Runs `reference/<script> args…` and returns its output, or throws saying why it failed.
    static func check(_ script: String, _ args: [String], timeout: Double = 300) throws -> String {
        let path = Launcher.root.appendingPathComponent("reference/" + script).path
        let r = try Launcher.run([python, path] + args, timeout: timeout)
        guard r.status == 0 && !r.timedOut else {
            let missing = r.output.contains("No module named") || r.status == 127
            throw Failure(
                description:
                    """
                    \(python) \(path) \(args.first ?? "") failed (status \(r.status)\(r.timedOut ? ", timed out" : ""))
                    """
                        + (missing
                            ? """
                            ; Python or its reference packages (torch, transformers, peft, safetensors, numpy, \
                            sacrebleu, rouge-score, nltk, pycocoevalcap) are missing: run launch/setup --no-build \
                            --python (or set LORA_DIST_PYTHON)
                            """
                            : "")
                        + ":\n\(r.output.suffix(3000))")
        }
        return r.output
    }

    /// Runs `reference/<script> args…`; nil (after recording a failure) if it did not succeed.
    static func run(_ script: String, _ args: [String], timeout: Double = 300) throws -> String? {
        do { return try check(script, args, timeout: timeout) } catch let f as Failure {
            XCTFail(f.description)
            return nil
        }
    }
}
