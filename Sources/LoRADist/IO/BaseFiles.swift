import Foundation

/// Where the base model comes from.
public enum BaseSpec: Sendable, Equatable {
    /// A lora-dist or HF safetensors checkpoint: a file, a GPT-2 directory (model.safetensors +
    /// config.json), or a Llama-family directory (config.json + model.safetensors or its shards).
    case file(String)
    /// GPT-2 initialisation of a named or explicit shape, from a seed (benchmarks, pretraining).
    case random(GPTConfig, seed: UInt64)
}

/// A base opened for reading: its shape, its weights (each rank reads its shard when it loads
/// them) and the identity a trained file records (`AdapterFile`).
public struct OpenedBase {
    public var config: GPTConfig
    public var weights: WeightSource
    public var identity: BaseIdentity
}

/// How every command opens its base, GPT-2's and the Llama family's alike: `open` for the
/// weights, `shape` for the configuration alone.
public enum BaseFiles {
    /// Opens the base `spec` names. Shapes are checked against config.json and the tensors before
    /// anything is allocated; each rank checks the weights it loads for NaN and Inf.
    public static func open(_ spec: BaseSpec) throws -> OpenedBase {
        switch spec {
        case .random(let c, let seed):
            let id = BaseIdentity(config: c, fingerprint: "random-\(seed)", source: "random init")
            return OpenedBase(config: c, weights: try RandomInitSource(config: c, seed: seed), identity: id)
        case .file(let p):
            if let dir = try LlamaFiles.directory(p) {
                let (c, src) = try LlamaFiles.open(dir)
                let fingerprint = try LlamaFiles.fingerprint(configPath: dir + "/config.json", source: src)
                let name = URL(fileURLWithPath: p).lastPathComponent
                let id = BaseIdentity(config: c, fingerprint: fingerprint, source: name)
                return OpenedBase(config: c, weights: FiniteWeightSource(src), identity: id)
            }
            let (path, dir) = try ModelFiles.locate(p)
            let f = try SafeTensorsFile(path: path)
            let (c, configSource) = try ModelFiles.configAndSource(of: f, dir: dir)
            let weights: WeightSource
            if c.family == .llama {
                // A Llama-family model in one file (as --save-model and merge write it), its shape in
                // the file's metadata or the config.json beside it.
                var src = try SafeTensorsDirectorySource(file: path)
                src.rename = LlamaFiles.renamer(for: src.names)
                try LlamaFiles.checkShapes(c, source: src, configSource: configSource)
                weights = FiniteWeightSource(src)
            } else {
                let rename = ModelFiles.renamer(for: f)
                try ModelFiles.checkShapes(c, file: f, rename: rename, configSource: configSource)
                weights = FiniteWeightSource(SafeTensorsWeightSource(file: f, rename: rename))
            }
            let id = BaseIdentity(
                config: c, fingerprint: try fileFingerprint(path),
                source: URL(fileURLWithPath: path).lastPathComponent)
            return OpenedBase(config: c, weights: weights, identity: id)
        }
    }

    /// The shape of the base `spec` names, read from its configuration alone (no weights are read).
    public static func shape(of spec: BaseSpec) throws -> GPTConfig {
        switch spec {
        case .random(let c, _): return c
        case .file(let p):
            if let dir = try LlamaFiles.directory(p) {
                let config = dir + "/config.json"
                let json = try TextFile.readJSON(config, emptyHint: "expected the model's Hugging Face configuration")
                return try ModelFiles.parse(json, source: config)
            }
            let (path, dir) = try ModelFiles.locate(p)
            return try ModelFiles.config(of: try SafeTensorsFile(path: path), dir: dir)
        }
    }
}
