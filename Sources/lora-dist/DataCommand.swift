import ArgumentParser
import Foundation
import LoRADist

struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "data",
        abstract:
            """
            Write the built-in task (train/valid/test.jsonl) and pretraining text (pretrain.txt) to a directory, or \
            convert the E2E NLG Challenge CSV files.
            """,
        discussion: """
            --from-e2e DIR reads DIR/trainset.csv, devset.csv and testset_w_refs.csv (columns mr and ref) and writes \
            train.jsonl (one example per MR and reference), valid.jsonl and test.jsonl (one line per MR: the first \
            reference as "completion", all of them as "references") for train --data and evaluate --data.
            """)

    @Option(help: "Output directory.") var out = "data/builtin"
    @Option(help: "Training examples.") var train = 4000
    @Option(help: "Bytes of pretraining text.") var pretrainBytes = 6_000_000
    @Option(help: "Seed.") var seed: UInt64 = 42
    @Option(help: "Directory with the E2E NLG Challenge files trainset.csv, devset.csv, testset_w_refs.csv.")
    var fromE2e: String?

    func run() throws {
        if let dir = fromE2e {
            let c = try E2EData.convert(dir: dir, out: out)
            print(
                """
                wrote \(out)/train.jsonl (\(c.trainPairs) pairs of \(c.trainMRs) MRs), valid.jsonl (\(c.validMRs) MRs, \
                \(c.validRefs) references), test.jsonl (\(c.testMRs) MRs, \(c.testRefs) references)
                """
            )
            return
        }
        try BuiltinTask.writeFiles(dir: out, train: train, pretrainBytes: pretrainBytes, seed: seed)
        print("wrote \(out)/train.jsonl, valid.jsonl, test.jsonl, pretrain.txt")
    }
}
