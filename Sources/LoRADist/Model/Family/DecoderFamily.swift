/// What differs between the decoder families lora-dist runs (GPT-2 and the Llama family), as the
/// table each family fills in once: GPT2Family.swift and LlamaFamily.swift. The forward and
/// backward passes, the block's linear layers and the base's layout read these pieces and never
/// the family itself; a third family is a third table (and its file readers in IO/).
protocol DecoderFamily {
    /// How its linear layers' weights are stored: Conv1D's [in, out] or nn.Linear's [out, in].
    static var orientation: WeightOrientation { get }
    /// The MLP's activation (GELU over c_fc, SwiGLU over gate | up).
    static var activation: any MLPActivation { get }
    /// Its norm (LayerNorm, RMSNorm) over the model's width, with the config's ε.
    static func norm(_ c: GPTConfig) -> any Norm
    /// How its tokens learn their positions (a learned table in the base, rotary q and k).
    static func positions(_ layout: TPLayout, base: BaseWeights) -> any Positions
    /// Places its tensors (their Hugging Face names, full shapes and this rank's shards) for `BaseLayout`.
    static func placeTensors(_ plan: inout SlotPlanner, _ t: TPLayout) -> TopOffsets
    /// The MLP width as the family's configuration names it, for messages.
    static func mlpWidthName(_ c: GPTConfig) -> String
}

extension ModelFamily {
    /// The family's table: the one place outside the file readers and the config where a family
    /// is told apart.
    var table: any DecoderFamily.Type {
        switch self {
        case .gpt2: return GPT2Family.self
        case .llama: return LlamaFamily.self
        }
    }
}

/// The pieces of its family one model runs (GPT-2's or the Llama family's), made once with the
/// model: its norm, its MLP activation and its positions.
struct FamilyParts {
    let norm: any Norm
    let activation: any MLPActivation
    let positions: any Positions

    init(layout: TPLayout, base: BaseWeights) {
        let table = layout.config.family.table
        norm = table.norm(layout.config)
        activation = table.activation
        positions = table.positions(layout, base: base)
    }
}
