import ArgumentParser
import Foundation
import LoRADist

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Complete a prompt greedily (KV cache) with a base model and optionally a LoRA adapter, merged or not.")

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Adapter file written by train (adapter.safetensors of LoRA, bottleneck adapters or BitFit).")
    var adapter: String?
    @Flag(help: "Merge the LoRA adapter into W0 first (zero extra latency).") var merge = false
    @Option(help: "Prompt; \\n is a newline. The built-in task's prompts look like: name=Blue Spice|food=Thai\\n")
    var prompt: String
    @Option(help: "Most new tokens.") var maxTokens = 160
    @Option(help: "Beam width (1: greedy).") var beams = 1
    @OptionGroup var parallel: ParallelOptions
    @Option(help: precisionHelp) var precision: Precision = .fp32
    @Option(help: "Seconds any collective may wait for the other ranks before they report and stop (0: no limit).")
    var collectiveTimeout: Double = 300
    @Option(
        help:
            """
            Tokenizer: a tokenizer.json or a directory with tokenizer.json or vocab.json + merges.txt. Default: the \
            tokenizer files in the --base directory (tokenizer.json, or GPT-2's vocab.json + merges.txt) if there are \
            any, else bytes.
            """
    )
    var tokenizer: String?

    func run() throws {
        let spec = try modelOptions.spec()
        let tok = try TokenizerChoice.forBase(spec, override: tokenizer)
        let text = prompt.replacingOccurrences(of: "\\n", with: "\n")
        CollectiveDeadline.seconds = collectiveTimeout
        let code = parallel.run { world in
            let grid = try parallel.grid(world)
            let model = try GPTModel.forDecoding(spec, adapter: adapter, tp: grid.tp, precision: precision)
            let cfg = model.config
            if merge, let a = adapter, case .bottleneck(let c) = try TrainedFile.kind(a).kind {
                throw IOError.unsupported(a, TrainedFile.cannotMerge(a, c))
            }
            if merge { model.loraRuntime?.merge() }
            try TokenizerChoice.check(tok, fits: cfg.vocabSize)
            let ids = tok.encodeStart(text)
            let room = min(maxTokens, cfg.nPositions - ids.count)
            // Beams ranked by Σ log p alone (no length penalty), no n-gram blocking.
            let decoding = Decoding(beams: beams, lengthPenalty: 0)
            let out = try Generator(model).generate(prompt: ids, decoding: decoding, maxNew: room, stop: tok.eot)
            if world.rank == 0 { print(tok.decode(out)) }
        }
        if code != 0 { throw ExitCode(code) }
    }
}

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            """
            Write base + adapter merged (W = W0 + (α/r)·B·A; a BitFit file: the base with its biases) as a model \
            directory (model.safetensors + config.json).
            """,
        discussion:
            """
            Bottleneck adapters (adapter-h, adapter-l) are layers of their own and cannot be merged: generate and \
            evaluate --adapter run them.
            """
    )

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Adapter file written by train: LoRA's or BitFit's adapter.safetensors.") var adapter: String
    @Option(help: "Output directory.") var out: String

    func run() throws {
        let spec = try modelOptions.spec()
        let code = World.run(localRanks: nil) { world in
            guard world.size == 1 else {
                throw ModelError.invalidParallel("merge runs on one process (not under mpirun)")
            }
            let base = try BaseFiles.open(spec)
            let (cfg, source, id) = (base.config, base.weights, base.identity)
            let (kind, trainedOn) = try TrainedFile.kind(adapter)
            try AdapterFile.check(adapter, trainedOn: trainedOn, against: id)
            let model: GPTModel
            switch kind {
            case .bottleneck(let c):
                throw IOError.unsupported(adapter, TrainedFile.cannotMerge(adapter, c))
            case .bitfit:
                // The base with BitFit's biases in place of its own.
                model = try GPTModel(config: cfg, tp: world, trainable: nil, training: false)
                try model.base.load(from: try TrainedFile.bitfitSource(adapter, over: source, config: cfg))
            case .lora:
                let h = try AdapterFile.header(adapter)
                model = try GPTModel(config: cfg, tp: world, trainable: .lora(h.lora), training: false)
                try model.base.load(from: source)
                try AdapterFile.load(adapter, into: model.lora!, expecting: id)
                model.loraRuntime?.merge()
            }
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let hfBase = ModelFiles.hfDirectory(of: spec)
            try ModelFiles.save(model.base, to: out + "/model.safetensors", hfConfig: true, hfBase: hfBase)
            print(
                "wrote \(out)/model.safetensors and \(out)/config.json"
                    + (hfBase.map { " (other config keys and tokenizer files from \($0))" } ?? ""))
        }
        if code != 0 { throw ExitCode(code) }
    }
}
