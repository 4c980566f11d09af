import ArgumentParser
import Foundation
import LoRADist

struct ExportPEFT: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-peft",
        abstract: "Write a trained adapter as a PEFT LoRA directory (adapter_config.json + adapter_model.safetensors).",
        discussion: """
            PeftModel.from_pretrained(base, OUT) then loads it onto the same Hugging Face GPT-2 base and computes the \
            same logits. o, mlp_in and mlp_out map one to one onto attn.c_proj, mlp.c_fc and mlp.c_proj. PEFT has one \
            LoRA on the fused attn.c_attn: the n targeted of q, k, v become one of rank n·r with A = [A_q; A_k; A_v], \
            B block-shaped (each target's B in its rows and its block of columns, zeros elsewhere) and alpha n·α (√n·α \
            with --rslora), so the scale stays the same; rank_pattern/alpha_pattern {"c_attn": ...} record that rank \
            when other modules keep r. q, k and v with one identical A (as import-peft makes them) stay one LoRA of \
            rank r.
            """)

    @Option(help: "LoRA adapter file written by train (OUT/adapter.safetensors of a LoRA run).") var adapter: String
    @Option(
        help:
            """
            The base the adapter was trained on (HF GPT-2 directory or safetensors file): checked against the adapter \
            and written as base_model_name_or_path.
            """
    )
    var base: String?
    @Option(help: "Output directory.") var out: String

    func run() throws {
        let (cfg, trainedOn) = try AdapterFile.header(adapter)
        let expected = try base.map { try BaseFiles.open(.file($0)).identity }
        let lora = LoRAWeights(config: cfg, model: trainedOn.config)
        try AdapterFile.load(adapter, into: lora, expecting: expected)
        try PEFTAdapter.save(lora, to: out, baseModel: base)
        print(
            """
            wrote \(out)/adapter_config.json and \(out)/adapter_model.safetensors (PEFT LoRA, targets \
            \(cfg.targets.map(\.rawValue).joined(separator: ",")))
            """
        )
    }
}

struct ImportPEFT: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-peft",
        abstract: "Convert a PEFT LoRA directory into an adapter file for generate and merge.",
        discussion: """
            attn.c_attn's LoRA becomes q, k and v sharing its A (or, for a directory export-peft wrote, the targets it \
            came from); per-module ranks and alphas load exactly (zero-padded to the largest rank, each scale folded \
            into B). DoRA, trained biases, modules_to_save and other LoRA variants are refused.
            """)

    @Option(help: "PEFT adapter directory (adapter_config.json + adapter_model.safetensors).") var peft: String
    @Option(help: "The HF GPT-2 base directory (or safetensors file) the adapter belongs to.") var base: String
    @Option(help: "Adapter file to write.") var out: String

    func run() throws {
        let opened = try BaseFiles.open(.file(base))
        let (model, id) = (opened.config, opened.identity)
        let p = try PEFTAdapter.load(dir: peft, model: model)
        let lora = LoRAWeights(config: p.config, model: model)
        try PEFTAdapter.apply(p, to: lora)
        try AdapterFile.save(lora, base: id, to: out)
        print(
            """
            wrote \(out) (LoRA r \(p.config.rank), α \(p.config.alpha), targets \
            \(p.config.targets.map(\.rawValue).joined(separator: ",")))
            """
        )
    }
}
