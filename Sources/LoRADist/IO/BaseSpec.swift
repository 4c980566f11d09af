/// Where the base model comes from.
public enum BaseSpec: Sendable, Equatable {
    /// A lora-dist or HF safetensors checkpoint: a file, a GPT-2 directory (model.safetensors +
    /// config.json), or a Llama-family directory (config.json + model.safetensors or its shards).
    case file(String)
    /// GPT-2 initialisation of a named or explicit shape, from a seed (benchmarks, pretraining).
    case random(GPTConfig, seed: UInt64)
}
