import Foundation

// How the commands build their model: for a training run (`train`, `bench train`), and for
// decoding (`evaluate`, `generate`).

extension Trainer {
    /// The trainer of a training run (`train`, `bench train`) with the model it builds for the
    /// method: this rank's TP shard of the base loaded from `base` (every rank learns whether each
    /// could), LoRA's A or the adapters initialised from the seed. `packed`: the largest packed pass
    /// the run's data makes (`Batcher.packedBound`), which the activations are planned for instead
    /// of micro-batch × seq tokens (nil: one example per row, or not known).
    public convenience init(
        grid: ProcessGrid, ledger: Ledger, config: GPTConfig, base: WeightSource, options o: TrainOptions,
        adapters: AdapterConfig?, packed: PackedCapacity? = nil
    ) throws {
        guard o.seq <= config.nPositions else {
            throw TrainError.invalidOption("--seq \(o.seq) exceeds the model's context \(config.nPositions)")
        }
        // A shape or method the model refuses (full fine-tuning of shared key/value heads) stops every rank with its
        // message.
        var model: GPTModel?
        var acts: Activations?
        try Collective.agree(over: grid.world, at: .load) {
            // A degree the layout cannot split the model over: named with the degrees that fit it and the world.
            try TPLayout.check(config, degree: grid.tpDegree, world: grid.world.size)
            let m = try GPTModel(
                config: config, tp: grid.tp, trainable: o.trainable(adapters: adapters),
                precision: o.precision)
            acts = try m.activations(batch: o.microBatch, seq: o.seq, recompute: o.recompute, packed: packed)
            model = m
        }
        let m = model!
        try Collective.agree(over: grid.world, at: .load) { try m.base.load(from: base) }
        m.trainable?.lora?.initialize(seed: o.seed)
        m.trainable?.adapters?.initialize(seed: o.seed)
        try self.init(grid: grid, ledger: ledger, model: m, options: o, activations: acts)
    }
}

extension TrainOptions {
    /// What the model of a run of `method` trains: LoRA as `lora` says, or `adapters` for an
    /// adapter method (nil when none are given, which the trainer refuses).
    public func trainable(adapters: AdapterConfig?) -> Trainable.Spec? {
        switch method {
        case .lora: return .lora(lora)
        case .full: return .full
        case .bitfit: return .bitfit
        case .adapterH, .adapterL: return adapters.map { .adapters($0) }
        }
    }
}

extension GPTModel {
    /// The model `evaluate` and `generate` decode with: this rank's TP shard of `spec`, and the
    /// trained file `adapter` (checked against the base it was trained on) if one is given: a LoRA
    /// adapter, bottleneck adapters (run as extra layers, held whole on every rank), or BitFit's
    /// biases (in place of the base's). `world`, when given, is the size of the world `tp` belongs
    /// to (a refused degree then names only those that divide it). Bottleneck adapters are placed
    /// over the TP group as `placement` says (whatever placement they were trained with: the file
    /// holds them whole).
    public static func forDecoding(
        _ spec: BaseSpec, adapter: String?, tp: Communicator, precision: Precision, world: Int? = nil,
        placement: AdapterPlacement = .replicated
    ) throws -> GPTModel {
        try forDecoding(
            try BaseFiles.open(spec), adapter: adapter, tp: tp, precision: precision, world: world, placement: placement
        )
    }

    /// `forDecoding` on a base already opened.
    public static func forDecoding(
        _ base: OpenedBase, adapter: String?, tp: Communicator, precision: Precision, world: Int? = nil,
        placement: AdapterPlacement = .replicated
    ) throws -> GPTModel {
        let (cfg, baseSource, id) = (base.config, base.weights, base.identity)
        try TPLayout.check(cfg, degree: tp.size, world: world)
        var source = baseSource
        var added: Trainable.Spec?
        if let a = adapter {
            let (kind, trainedOn) = try TrainedFile.kind(a)
            try AdapterFile.check(a, trainedOn: trainedOn, against: id)
            switch kind {
            case .lora: added = .lora(try AdapterFile.header(a).lora)
            case .bottleneck(var c):
                c.placement = placement
                try c.validate(for: cfg, tp: tp.size)
                added = .adapters(c)
            case .bitfit: source = try TrainedFile.bitfitSource(a, over: baseSource, config: cfg)
            }
        }
        let model = try GPTModel(config: cfg, tp: tp, trainable: added, training: false, precision: precision)
        try model.base.load(from: source)
        if let a = adapter, let l = model.lora { try AdapterFile.load(a, into: l, expecting: id) }
        if let a = adapter, let ad = model.trainable?.adapters { try TrainedFile.loadBottleneck(a, into: ad) }
        return model
    }
}
