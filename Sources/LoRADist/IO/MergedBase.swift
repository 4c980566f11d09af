import Foundation

extension GPTModel {
    /// This rank's shard of `base` with the LoRA adapter at `path` merged into it, W0 + (α/r)·B·A
    /// (the paper's zero-latency case), GPT-2 and the Llama family, fp32 or bf16: `serve --merge
    /// NAME`. The adapter (a lora-dist adapter file, refused when trained on another base, or a
    /// PEFT directory, refused when its shapes are not this model's; either refused with NaN or Inf
    /// in A or B) is read whole, as every rank holds LoRA's A and B, and merged by LoRA's own
    /// `LoRARuntime.merge` into this rank's part of each weight (as `generate --merge` does), so no
    /// rank ever holds more of the base than its shard. Passes then skip the deltas: the model
    /// computes as a base of its own.
    public static func merged(
        _ base: OpenedBase, adapter path: String, tp: Communicator, precision: Precision = .fp32
    ) throws -> GPTModel {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue {
            switch try TrainedFile.kind(path).kind {
            case .lora: break
            case .bottleneck(let c): throw IOError.unsupported(path, TrainedFile.cannotMerge(path, c))
            case .bitfit:
                throw IOError.unsupported(path, "a BitFit file is not a LoRA adapter (lora-dist merge writes its base)")
            }
        }
        let lora = try LoRAWeights.read(path, model: base.config, base: base.identity)
        if let t = lora.firstNonFinite { throw IOError.corrupt(path, "NaN or Inf in \(t)") }
        let model = try GPTModel(
            config: base.config, tp: tp, trainable: .lora(lora.config), training: false, precision: precision)
        try model.base.load(from: base.weights)
        model.lora!.arena.base.update(from: lora.arena.base, count: lora.count)
        model.loraRuntime!.merge()
        return model
    }
}
