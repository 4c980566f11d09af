import Foundation

/// A base with one LoRA adapter merged into its weights, W = W0 + (α/r)·B·A (the paper's
/// zero-latency case), GPT-2 and the Llama family alike: `lora-dist serve --merge NAME` serves
/// it as a base of its own (`BaseSpec.merged`). The merge is LoRA's own (`LoRARuntime.merge`,
/// each `LoRADelta` folding itself into its op's weight, as `generate --merge` and `merge` do) on a
/// one-rank model in fp32, whose whole tensors then load like any base's, on any rank.
public enum MergedBase {
    /// Opens `base` and merges the LoRA adapter at `path` (a lora-dist adapter file, refused when
    /// trained on another base, or a PEFT directory) into it. Its identity is the base's fingerprint
    /// and the adapter's, so an adapter trained on the bare base is refused on it.
    public static func open(_ base: BaseSpec, adapter path: String) throws -> OpenedBase {
        let opened = try BaseFiles.open(base)
        let cfg = opened.config
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue {
            switch try TrainedFile.kind(path).kind {
            case .lora: break
            case .bottleneck(let c): throw IOError.unsupported(path, TrainedFile.cannotMerge(path, c))
            case .bitfit:
                throw IOError.unsupported(path, "a BitFit file is not a LoRA adapter (lora-dist merge writes its base)")
            }
        }
        let lora = try LoRAWeights.read(path, model: cfg, base: opened.identity)
        let source = opened.weights
        let tensors = try InProcessCommunicator.run(ranks: 1) { comm in
            let model = try GPTModel(config: cfg, tp: comm, trainable: .lora(lora.config), training: false)
            try model.base.load(from: source)
            model.lora!.arena.base.update(from: lora.arena.base, count: lora.count)
            model.loraRuntime!.merge()
            return try model.base.fullTensors()
        }[0]
        // The base was checked as it loaded; an adapter with NaN or Inf shows in the merged tensors.
        for (name, t) in tensors.sorted(by: { $0.key < $1.key }) where !t.data.allSatisfy(\.isFinite) {
            throw IOError.corrupt(path, "merged into the base it gives NaN or Inf in \(name)")
        }
        let adapterFile = isDir.boolValue ? path + "/adapter_model.safetensors" : path
        var id = opened.identity
        id.fingerprint += "+" + (try fileFingerprint(adapterFile))
        id.source += " + " + URL(fileURLWithPath: path).lastPathComponent + " merged"
        return OpenedBase(config: cfg, weights: DictionaryWeightSource(tensors), identity: id)
    }
}
