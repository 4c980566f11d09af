import ArgumentParser
import Foundation
import LoRADist

extension Method: ExpressibleByArgument {}
extension LoRAInit: ExpressibleByArgument {}
extension LRSchedule.Decay: ExpressibleByArgument {}
extension AdapterPlacement: ExpressibleByArgument {}
extension Precision: ExpressibleByArgument {}
extension Recompute: ExpressibleByArgument {}

/// Help text of --precision, shared by the commands that take it.
let precisionHelp = ArgumentHelp(
    """
    fp32, or bf16: the frozen base stored in bf16 and its GEMMs on bf16 inputs with fp32 accumulation (LoRA, optimizer \
    state, norms, softmax and loss stay fp32).
    """
)

/// Help text of --recompute, shared by the commands that take it.
let recomputeHelp = ArgumentHelp(
    """
    What the forward keeps for the backward: none (every block's activations) or blocks (each block's input; \
    backward recomputes each block's forward before its backward: less memory for about one more forward, the same \
    numbers bit for bit).
    """
)

/// Options that pick the base model: a checkpoint, a named shape, or explicit dimensions.
struct ModelOptions: ParsableArguments {
    @Option(
        help:
            """
            Base model: a safetensors file, an HF GPT-2 directory (model.safetensors + config.json), or an HF Llama, \
            Qwen2 or Mistral directory (config.json + model.safetensors or its shards). Default: the built-in base.
            """
    )
    var base: String?
    @Option(help: "Random-init shape instead of a checkpoint: \(GPTConfig.names.joined(separator: ", ")).")
    var model: String?
    @Option(help: "Explicit shape (random init): layers.") var layers: Int?
    @Option(help: "Explicit shape: model width d.") var dim: Int?
    @Option(help: "Explicit shape: attention heads.") var heads: Int?
    @Option(help: "Explicit shape: context length.") var context: Int?
    @Option(help: "Explicit shape: vocabulary size.") var vocab: Int?
    @Option(help: "Seed of a random initialisation.") var initSeed: UInt64 = 1

    func validate() throws {
        try checkRanges()
        let explicit = [layers, dim, heads, context, vocab].contains { $0 != nil }
        if base != nil && (model != nil || explicit) {
            throw ValidationError("--base cannot be combined with --model or explicit dimensions")
        }
        if let m = model, GPTConfig.named(m) == nil {
            throw ValidationError("--model \(m) is not one of \(GPTConfig.names.joined(separator: ", "))")
        }
    }

    func spec() throws -> BaseSpec {
        if let b = base { return .file(b) }
        let explicit = [layers, dim, heads, context, vocab].contains { $0 != nil }
        if model != nil || explicit {
            var c = GPTConfig.named(model ?? "tiny")!
            if let v = layers { c.nLayer = v }
            if let v = dim { c.nEmbd = v }
            if let v = heads { c.nHead = v }
            if let v = context { c.nPositions = v }
            if let v = vocab { c.vocabSize = v }
            try c.validate()
            return .random(c, seed: initSeed)
        }
        return .file(try ModelFiles.builtinBase())
    }
}

/// The library's defaults, which `train`'s options show and start from (`TrainOptions`).
let trainDefaults = TrainOptions()

/// LoRA hyper-parameters.
struct LoRAOptions: ParsableArguments {
    @Option(name: .customLong("lora-rank"), help: "LoRA rank r (the paper's GPT-2 setting: 4).")
    var rank = trainDefaults.lora.rank
    @Option(name: .customLong("lora-alpha"), help: "LoRA alpha (scale α/r).") var alpha = trainDefaults.lora.alpha
    @Option(
        name: .customLong("lora-targets"),
        help:
            """
            Comma-separated targets: GPT-2's q,k,v,o,mlp_in,mlp_out; the Llama family's q,k,v,o,gate,up,down; or the \
            modules as PEFT's target_modules names them (GPT-2's c_attn = q,k,v, c_proj = o,mlp_out, attn.c_proj, \
            mlp.c_proj, c_fc; q_proj, ..., down_proj). Default: every projection of the model (the paper's GPT-2 \
            setting: q,v; the built-in 0.85 M-parameter model needs the MLP too to learn its task).
            """
    )
    var targets: String?
    @Option(name: .customLong("lora-dropout"), help: "Dropout on the LoRA input.")
    var dropout = trainDefaults.lora.dropout
    @Option(name: .customLong("lora-init"), help: "Init of A: gaussian (the paper) or kaiming (loralib, PEFT).")
    var initA = trainDefaults.lora.initA
    @Flag(name: .customLong("rslora"), help: "Scale by α/√r (rsLoRA) instead of α/r.") var rsLoRA = false

    /// The LoRA of these options on a model of `family`: the named targets, or all the family has.
    func config(family: ModelFamily = .gpt2) throws -> LoRAConfig {
        let ts =
            try targets.map { list -> [LoRATarget] in
                var named: [LoRATarget] = []
                for part in list.split(separator: ",") {
                    for t in try LoRATarget.named(part.trimmingCharacters(in: .whitespaces), in: family)
                    where !named.contains(t) { named.append(t) }
                }
                return named
            } ?? TrainOptions.defaultLoRA(for: family).targets
        return LoRAConfig(rank: rank, alpha: alpha, targets: ts, dropout: dropout, initA: initA, rsLoRA: rsLoRA)
    }
}

extension LoRATarget {
    /// The targets `name` names on a model of `family`: its own name, or a module name as PEFT's
    /// target_modules matches it (the module's name or a dotted suffix of it), so GPT-2's c_attn is
    /// q, k and v, c_proj both attn.c_proj (o) and mlp.c_proj (mlp_out), and c_fc mlp_in. Refused
    /// with the targets the family has.
    static func named(_ name: String, in family: ModelFamily) throws -> [LoRATarget] {
        let available = available(in: family)
        if let t = LoRATarget(rawValue: name), available.contains(t) { return [t] }
        let modules = available.filter { $0.baseModule(family) == name || $0.baseModule(family).hasSuffix("." + name) }
        if !modules.isEmpty { return modules }
        var peftNames: [String] = []
        for t in available {
            let n = String(t.baseModule(family).split(separator: ".").last!)
            if !peftNames.contains(n) { peftNames.append(n) }
        }
        let what =
            LoRATarget(rawValue: name) == nil
            ? "unknown target \(name)" : "\(name) is not a projection of this \(family.rawValue)-family model"
        throw ValidationError(
            "--lora-targets: \(what); it has \(available.map(\.rawValue).joined(separator: ", "))"
                + " (PEFT's names: \(peftNames.joined(separator: ", ")))")
    }
}

/// How held-out generations are decoded (evaluate, and train's evaluation before and after).
struct DecodingOptions: ParsableArguments {
    @Option(help: "Beam width for the evaluation's generations (1: greedy).") var beams = 1
    @Option(help: "Length penalty: finished beams rank by Σ log p / length^P.") var lengthPenalty: Float = 1
    @Option(help: "Never repeat an n-gram of this many generated tokens (0: off).") var noRepeatNgram = 0
    @Flag(
        help:
            """
            The paper's E2E decoding (the LoRA repository's scripts): --beams 10 --length-penalty 0.8 \
            --no-repeat-ngram 4.
            """
    )
    var paperDecoding = false

    func validate() throws {
        guard beams >= 1 else { throw ValidationError("--beams must be at least 1 (got \(beams))") }
        guard noRepeatNgram >= 0 else {
            throw ValidationError("--no-repeat-ngram must not be negative (got \(noRepeatNgram))")
        }
        guard lengthPenalty.isFinite else { throw ValidationError("--length-penalty must be a number") }
    }

    var decoding: Decoding {
        paperDecoding ? .paper : Decoding(beams: beams, lengthPenalty: lengthPenalty, noRepeatNgram: noRepeatNgram)
    }
}

/// Where a command's ranks come from: N threads of this process, else the MPI job it belongs to
/// (mpirun, srun), else a world of one (`World.run`).
struct RanksOptions: ParsableArguments {
    @Option(help: "Run N ranks as threads of this process (in-process backend) instead of MPI.") var localRanks: Int?

    /// Runs `body` once per rank; the process exit status (`World.run`).
    func run(_ body: @escaping (RecordingCommunicator) throws -> Void) -> Int32 {
        World.run(localRanks: localRanks, body)
    }
}

/// The ranks of a command that shards the model, and its tensor-parallel degree.
struct ParallelOptions: ParsableArguments {
    @Option(help: "Tensor-parallel degree (default: the whole world); dp = world / tp.") var tp: Int?
    @OptionGroup var ranks: RanksOptions

    func validate() throws {
        if let t = tp, t < 1 { throw ValidationError("--tp must be at least 1 (got \(t))") }
    }

    var localRanks: Int? { ranks.localRanks }

    /// The TP degree on a world of `size` ranks.
    func tpDegree(world size: Int) -> Int { tp ?? size }

    /// The world's dp × tp grid.
    func grid(_ world: Communicator) throws -> ProcessGrid {
        try ProcessGrid(world: world, tp: tpDegree(world: world.size))
    }

    func run(_ body: @escaping (RecordingCommunicator) throws -> Void) -> Int32 { ranks.run(body) }
}
