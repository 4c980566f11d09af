import ArgumentParser
import Foundation
import LoRADist

struct LoRADistCLI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lora-dist",
        abstract: "Distributed LoRA fine-tuning of GPT-2 and Llama-family (Llama, Qwen2, Mistral) models over MPI.",
        discussion: """
            Run under mpirun for several processes (`mpirun -n 4 lora-dist train`), with --local-ranks N \
            for N ranks as threads of one process, or alone as a world of one.
            """,
        version: "lora-dist \(LoRADistVersion.current)",
        subcommands: [
            Train.self, EvaluateCommand.self, Generate.self, Analyze.self, Merge.self, ExportPEFT.self, ImportPEFT.self,
            SweepCommand.self, Bench.self, DataCommand.self, Doctor.self, CommCheck.self, Serve.self
        ])

    /// The prefix of every error line, whether the argument parser or a command found the error.
    static let errorPrefix = "lora-dist: error: "

    /// Parses and runs the command as `main()` does, but an error's first line starts with
    /// `lora-dist: error:` like the errors the ranks print; help and --version are unchanged.
    static func runWithProjectPrefix() -> Never {
        do {
            var command = try parseAsRoot()
            try command.run()
            Foundation.exit(0)
        } catch {
            let code = exitCode(for: error)
            // Help, --version and an exit status a command chose (its ranks have said why).
            if code == .success || error is ExitCode { exit(withError: error) }
            var text = fullMessage(for: error)
            for label in ["Error: ", "error: "] where text.hasPrefix(label) { text.removeFirst(label.count) }
            if !text.isEmpty {
                FileHandle.standardError.write(Data((errorPrefix + text + (text.hasSuffix("\n") ? "" : "\n")).utf8))
            }
            Foundation.exit(code.rawValue == 0 ? 1 : code.rawValue)
        }
    }
}

LoRADistCLI.runWithProjectPrefix()
