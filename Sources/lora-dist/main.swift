import ArgumentParser
import LoRADist

struct LoRADistCLI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lora-dist",
        abstract: "Distributed LoRA fine-tuning of GPT-2-architecture models over MPI.",
        subcommands: [])
}

LoRADistCLI.main()
