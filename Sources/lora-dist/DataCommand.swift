import ArgumentParser
import Foundation
import LoRADist

struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "data", abstract: "Write the built-in task (train/valid/test.jsonl) and pretraining text (pretrain.txt) to a directory.")

    @Option(help: "Output directory.") var out = "data/builtin"
    @Option(help: "Training examples.") var train = 4000
    @Option(help: "Bytes of pretraining text.") var pretrainBytes = 6_000_000
    @Option(help: "Seed.") var seed: UInt64 = 42

    func run() throws {
        try BuiltinTask.writeFiles(dir: out, train: train, pretrainBytes: pretrainBytes, seed: seed)
        print("wrote \(out)/train.jsonl, valid.jsonl, test.jsonl, pretrain.txt")
    }
}
