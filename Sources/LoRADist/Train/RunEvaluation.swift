import Foundation

/// Held-out loss and generations, as measured before and after training.
struct Evaluation {
    var loss: Double?
    var generation: Evaluate.Generation?
}

/// What the evaluation covers: the held-out examples of the validation loss and the test
/// examples generated for, with the bound on new tokens.
struct EvalPlan {
    var validExamples = 0, validTotal = 0
    var generations = 0, maxNew = 0
}

/// The one evaluation of a run, before and after training, on `data` with the run's model.
struct RunEvaluation {
    let run: TrainRun
    let data: RunData
    let plan: EvalPlan
    /// The validation loss's micro-batch, one for both evaluations.
    let batch: MicroBatch

    /// The evaluation's size from the data and the options, said once before it first runs.
    init(_ run: TrainRun, data: RunData) {
        self.run = run
        self.data = data
        batch = MicroBatch(batch: run.options.train.microBatch, seq: run.options.train.seq)
        plan = Self.plan(run.options, data: data, say: { run.say($0) })
    }

    static func plan(_ options: RunOptions, data: RunData, say: (String) -> Void) -> EvalPlan {
        var p = EvalPlan()
        if let v = data.valid {
            p.validTotal = v.count
            p.validExamples = min(options.validLimit ?? v.count, v.count)
            say("validation loss on \(p.validExamples) of \(v.count) held-out examples (--valid-limit)")
        }
        guard !data.test.isEmpty && options.evalExamples > 0 else { return p }
        let ex = Array(data.test.prefix(options.evalExamples))
        let generations =
            "generations for \(ex.count) of \(data.test.count) test examples (--eval-examples), "
            + "each until end-of-text or"
        p.generations = ex.count
        if let m = options.evalMaxTokens {
            p.maxNew = m
            say("\(generations) \(m) new tokens (--eval-max-tokens)")
        } else {
            let tokenizer = data.tokenizer
            p.maxNew = Evaluate.maxNewTokens(for: ex, tokenizer: tokenizer)
            let longest = ex.flatMap(\.allReferences).map { tokenizer.encode($0).count }.max() ?? 0
            let bound = "\(p.maxNew) new tokens (the longest reference, \(longest) tokens, + \(p.maxNew - longest)"
            say("\(generations) \(bound); --eval-max-tokens)")
        }
        return p
    }

    /// Before training, unless --eval-before is off (said when there was something to evaluate).
    func before() throws -> Evaluation {
        if run.options.evalBefore { return try measure(label: "before:") }
        if plan.validExamples > 0 || plan.generations > 0 { run.say("before: not evaluated (--eval-before off)") }
        return Evaluation()
    }

    /// After training, with two samples and the E2E metrics said; nothing when a signal stopped the steps.
    func after(_ loop: LoopOutcome) throws -> Evaluation {
        if loop.interrupted { return Evaluation() }
        let e = try measure(label: "after: ")
        if let g = e.generation { for smp in g.samples.prefix(2) { run.say("  \(smp[0])\n    → \(smp[1])") } }
        if let m = e.generation?.e2e {
            let scored = "\(run.options.decoding), \(m.segments) examples, \(m.references) references"
            run.say("E2E metrics (\(scored)): " + Evaluate.describe(m))
        }
        return e
    }

    /// Says its line as `label`, and progress lines with an ETA while a pass takes long.
    func measure(label: String) throws -> Evaluation {
        var e = Evaluation()
        let (model, grid, o) = (run.model, run.grid, run.options)
        let line: (String) -> Void = { [run] in run.say($0) }
        try run.world.ledger.with(.eval) {
            if let v = data.valid, plan.validExamples > 0 {
                let progress = ProgressMeter("validation examples", total: plan.validExamples, say: line)
                e.loss = try Evaluate.loss(
                    model: model, acts: run.trainer.activations, data: v, grid: grid,
                    batch: batch, limit: plan.validExamples, packing: o.train.packing, progress: progress)
            }
            if plan.generations > 0 {
                let progress = ProgressMeter("generations", total: plan.generations, say: line)
                e.generation = try Evaluate.generation(
                    model: model, examples: data.test, limit: plan.generations,
                    grid: grid, tokenizer: data.tokenizer, decoding: o.decoding,
                    maxNew: plan.maxNew, progress: progress)
            }
        }
        var parts: [String] = []
        if let l = e.loss { parts.append("eval loss \(fixed(l, 4))") }
        if let g = e.generation {
            parts.append("exact match \(fixed(100 * g.exactMatch, 1))%, BLEU \(fixed(g.bleu, 1))")
        }
        if !parts.isEmpty { run.say("\(label) " + parts.joined(separator: ", ")) }
        return e
    }
}
