import Foundation

extension MultiLoRASet {
    /// Loads the LoRA adapter at `path` as `name`: a lora-dist adapter file (refused when trained on
    /// another base than `base`) or a PEFT directory (adapter_config.json and
    /// adapter_model.safetensors, GPT-2's or the Llama family's modules, refused when its shapes are
    /// not this model's). Either is refused with NaN or Inf weights, and as `add` refuses.
    public func load(name: String, path: String, base: BaseIdentity) throws {
        guard Self.validName(name) else { throw AdapterSetError.badName(name) }
        guard adapter(name) == nil else { throw AdapterSetError.duplicate(name) }
        guard names.count < maxAdapters else { throw AdapterSetError.full(maxAdapters) }
        try add(name, try LoRAWeights.read(path, model: model, base: base))
    }
}

extension LoRAWeights {
    /// The LoRA adapter at `path` for a model of `model`: a lora-dist adapter file (refused when
    /// trained on another base than `base`) or a PEFT directory (adapter_config.json and
    /// adapter_model.safetensors, GPT-2's or the Llama family's modules, refused when its shapes are
    /// not this model's).
    public static func read(_ path: String, model: GPTConfig, base: BaseIdentity) throws -> LoRAWeights {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw IOError.cannotRead(path, "no such file or directory")
        }
        if isDir.boolValue {
            let p = try PEFTAdapter.load(dir: path, model: model)
            let weights = LoRAWeights(config: p.config, model: model)
            try PEFTAdapter.apply(p, to: weights)
            return weights
        }
        let (lora, trainedOn) = try AdapterFile.header(path)
        try AdapterFile.check(path, trainedOn: trainedOn, against: base)
        let weights = LoRAWeights(config: lora, model: model)
        try AdapterFile.load(path, into: weights, expecting: base)
        return weights
    }
}
