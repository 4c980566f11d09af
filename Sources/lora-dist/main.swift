import ArgumentParser
import LoRADist

struct LoRADistCLI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lora-dist",
        abstract: "Distributed LoRA fine-tuning of GPT-2 and Llama-family (Llama, Qwen2, Mistral) models over MPI.",
        discussion: """
            Run under mpirun for several processes (`mpirun -n 4 lora-dist train`), with --local-ranks N \
            for N ranks as threads of one process, or alone as a world of one.
            """,
        subcommands: [Train.self, EvaluateCommand.self, Generate.self, Analyze.self, Merge.self, ExportPEFT.self, ImportPEFT.self, SweepCommand.self, Bench.self, DataCommand.self, Doctor.self, CommCheck.self])
}

LoRADistCLI.main()
