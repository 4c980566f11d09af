import ArgumentParser
import Foundation
import LoRADist

struct EvaluateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evaluate",
        abstract:
            """
            Generate for held-out examples with a base and optionally a LoRA adapter, and score them with the E2E \
            metrics.
            """,
        discussion: """
            Scores BLEU (sacreBLEU's corpus BLEU on its 0-100 scale, 13a tokens), NIST, ROUGE-L and CIDEr against \
            every reference of each example (the "references" of JSONL written by `data --from-e2e`), and writes \
            OUT/predictions.txt (one generation a line), OUT/references.txt (each example's references, a blank line \
            between examples: the files the official E2E scripts read) and OUT/scores.json. Runs on the sharded model \
            under mpirun like generate.
            """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup(title: "Decoding") var decodingOptions: DecodingOptions
    @Option(help: "Adapter file written by train (adapter.safetensors of LoRA, bottleneck adapters or BitFit).")
    var adapter: String?
    @Option(help: "Directory with test.jsonl or valid.jsonl (see --split). Default: the built-in task.") var data:
        String?
    @Option(help: "test or valid.") var split = "test"
    @Option(help: "Score the first N examples only.") var limit: Int?
    @Option(
        help:
            """
            Most new tokens per generation. Default: the longest reference of the examples scored, in tokens, plus a \
            quarter (at least 8); a generation also ends at end-of-text.
            """
    )
    var maxTokens: Int?
    @Flag(help: "Keep case when scoring (default: lowercase, as the official E2E BLEU and NIST do).") var cased = false
    @Option(help: "Output directory.") var out = "runs/evaluate"
    @OptionGroup var parallel: ParallelOptions
    @Option(help: precisionHelp) var precision: Precision = .fp32
    @Option(
        help:
            """
            Tokenizer: a tokenizer.json or a directory with tokenizer.json or vocab.json + merges.txt. Default: the \
            tokenizer files in the --base directory (tokenizer.json, or GPT-2's vocab.json + merges.txt) if there are \
            any, else bytes.
            """
    )
    var tokenizer: String?

    func validate() throws {
        try checkRanges()
        guard split == "test" || split == "valid" else {
            throw ValidationError("--split must be test or valid (got \(split))")
        }
        if let l = limit, l < 1 { throw ValidationError("--limit must be at least 1 (got \(l))") }
        if let m = maxTokens, m < 1 { throw ValidationError("--max-tokens must be at least 1 (got \(m))") }
    }

    func run() throws {
        let spec = try modelOptions.spec()
        let tok = try TokenizerChoice.forBase(spec, override: tokenizer)
        let examples: [Example]
        if let d = data {
            examples = try JSONLines.read(d + "/\(split).jsonl")
        } else {
            let s = BuiltinTask.standardSplits()
            examples = split == "test" ? s.test : s.valid
        }
        let decoding = decodingOptions.decoding
        let code = parallel.run { world in
            let grid = try parallel.grid(world)
            let model = try GPTModel.forDecoding(
                spec, adapter: adapter, tp: grid.tp, precision: precision, world: world.size)
            try TokenizerChoice.check(tok, fits: model.config.vocabSize)
            let n = min(limit ?? examples.count, examples.count)
            let bound = maxTokens ?? Evaluate.maxNewTokens(for: Array(examples.prefix(n)), tokenizer: tok)
            let say: (String) -> Void = {
                if world.rank == 0 {
                    print($0)
                    fflush(stdout)
                }
            }
            say(
                """
                generating for \(n) examples, each until end-of-text or \(bound) new tokens \
                (\(maxTokens == nil ? "the longest reference + a quarter, at least 8; " : "")--max-tokens)
                """
            )
            let t0 = Date()
            let g = try Evaluate.generation(
                model: model, examples: examples, limit: n, grid: grid, tokenizer: tok,
                decoding: decoding, maxNew: bound, lowercase: !cased,
                progress: ProgressMeter("generations", total: n, say: say))
            let seconds = Date().timeIntervalSince(t0)
            try Collective.agree(over: world, at: .write) {
                guard world.rank == 0 else { return }
                try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
                try E2EMetrics.writeFiles(
                    hypotheses: g.hypotheses, references: g.references,
                    predictions: out + "/predictions.txt", referencesPath: out + "/references.txt")
                try writeFileAtomically(try encodeJSON(g), to: out + "/scores.json")
                print(
                    """
                    \(g.examples) examples, \(g.references.reduce(0) { $0 + $1.count }) references, \(decoding), \
                    \(fixed(seconds, 1)) s
                    """
                )
                if let e = g.e2e { print(Evaluate.describe(e) + (cased ? " (cased)" : " (lowercased)")) }
                print("\(g.tokensGenerated) tokens generated")
                print("exact match \(fixed(100 * g.exactMatch, 1))%")
                for s in g.samples.prefix(2) { print("  \(s[0])\n    → \(s[1])") }
                print("wrote \(out)/predictions.txt, references.txt, scores.json")
            }
        }
        if code != 0 { throw ExitCode(code) }
    }
}
