import Foundation

/// A run's checkpoints: what each carries to be continued (`fingerprint`, `settings`), writing
/// one at a step boundary, and `--resume`.
struct RunCheckpoints {
    let run: TrainRun
    /// Everything that must match for a checkpoint to continue this run.
    let fingerprint: String
    /// The options `fingerprint` covers, by their names on the command line, for a refused
    /// resume to name the ones that differ.
    let settings: [RunSetting]
    /// Whether every rank holds the same trainable state (rank 0 writes it alone).
    let replicated: Bool

    init(_ run: TrainRun, data: RunData) {
        self.run = run
        let source = data.train.source
        let tokenizer = data.tokenizer.description
        fingerprint = Self.fingerprint(run, data: source + "|" + tokenizer)
        settings = Self.settings(run, data: source, tokenizer: tokenizer)
        replicated = run.options.train.method.replicatedState(placement: run.options.adapters?.placement)
    }

    static func fingerprint(_ run: TrainRun, data: String) -> String {
        let o = run.options.train
        var parts = [
            o.method.modeName, "\(run.model.config)", run.baseIdentity.fingerprint, data,
            "tp\(run.grid.tpDegree)"
        ]
        parts.append("\(o.lora)")
        parts.append("\(String(describing: run.options.adapters))")
        if o.precision != .fp32 { parts.append(o.precision.rawValue) }
        if !o.packing { parts.append("packing off") }
        parts.append(
            "\(o.steps) \(o.globalBatch) \(o.microBatch) \(o.seq) \(o.lr) \(o.warmup) \(o.decay) "
                + "\(o.minLRRatio) \(o.weightDecay) \(o.beta1) \(o.beta2) \(o.clip) \(o.labelSmoothing) \(o.seed)")
        var h = FNV1a()
        for b in parts.joined(separator: "|").utf8 { h.mix(UInt64(b)) }
        return h.hex
    }

    static func settings(_ run: TrainRun, data: String, tokenizer: String) -> [RunSetting] {
        let o = run.options.train
        let id = run.baseIdentity
        var s = [
            RunSetting("--method", run.options.train.method.rawValue),
            RunSetting("--base", "\(id.source) (fingerprint \(id.fingerprint))"),
            RunSetting("model", "\(run.model.config)"), RunSetting("--data", data),
            RunSetting("--tokenizer", tokenizer), RunSetting("--tp", "\(run.grid.tpDegree)")
        ]
        if o.method == .lora {
            let l = o.lora
            s += [
                RunSetting("--lora-rank", "\(l.rank)"), RunSetting("--lora-alpha", "\(l.alpha)"),
                RunSetting("--lora-targets", l.targets.map(\.rawValue).joined(separator: ",")),
                RunSetting("--lora-dropout", "\(l.dropout)"), RunSetting("--lora-init", l.initA.rawValue),
                RunSetting("--rslora", "\(l.rsLoRA)")
            ]
        }
        if o.method.adapterKind != nil, let a = run.options.adapters {
            s += [RunSetting("--bottleneck", "\(a.bottleneck)"), RunSetting("--placement", a.placement.rawValue)]
        }
        s += [
            RunSetting("--precision", o.precision.rawValue), RunSetting("--steps", "\(o.steps)"),
            RunSetting("--batch", "\(o.globalBatch)"), RunSetting("--micro-batch", "\(o.microBatch)"),
            RunSetting("--seq", "\(o.seq)"), RunSetting("--packing", o.packing ? "on" : "off"),
            RunSetting("--lr", "\(o.lr)"), RunSetting("--warmup", "\(o.warmup)"),
            RunSetting("--decay", o.decay.rawValue), RunSetting("--weight-decay", "\(o.weightDecay)"),
            RunSetting("--clip", "\(o.clip)"), RunSetting("--label-smoothing", "\(o.labelSmoothing)"),
            RunSetting("--seed", "\(o.seed)")
        ]
        return s
    }

    /// Writes the checkpoint of the trainer's current step and `batcher`'s position (every rank).
    func save(_ batcher: Batcher) throws {
        let (trainer, grid, world) = (run.trainer, run.grid, run.world)
        let st = CheckpointState(
            step: trainer.step, loader: batcher.position, fingerprint: fingerprint,
            world: world.size, tp: grid.tpDegree, settings: settings)
        let (out, keep) = (run.options.out, run.options.keep)
        try RunFiles.resumeHint(out: out) {
            try world.ledger.with(.checkpoint) {
                try Checkpoint.save(
                    out: out, state: st, params: trainer.parameters, count: trainer.trainableCount,
                    optimizer: trainer.optimizer, grid: grid, replicated: replicated, keep: keep)
            }
        }
    }

    /// Restores the checkpoint `--resume` names into the trainer and `batcher`: the step it
    /// continues from, and the lines of metrics.jsonl up to it (later ones were of the interrupted run).
    func resume(_ r: String, batcher: Batcher) throws -> (step: Int, log: [String]) {
        let (trainer, out) = (run.trainer, run.options.out)
        let d = try Checkpoint.resolve(r, out: out)
        let st = try run.world.ledger.with(.checkpoint) {
            try Checkpoint.load(
                d, params: trainer.parameters, count: trainer.trainableCount,
                optimizer: trainer.optimizer, grid: run.grid, replicated: replicated,
                fingerprint: fingerprint, settings: settings)
        }
        trainer.publishParameters()  // the restored parameters into what the model computes with
        batcher.restore(st.loader)
        trainer.setStep(st.step)
        var log: [String] = []
        if let text = try? String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8) {
            for line in text.split(separator: "\n") {
                if let d = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                    let k = (d["step"] as? NSNumber)?.intValue, k <= st.step
                {
                    log.append(String(line))
                }
            }
        }
        run.say("resumed from \(d) at step \(st.step)")
        return (st.step, log)
    }
}
