import Foundation

/// The summary a run writes to summary.json (rank 0), all figures measured in this run. It is
/// built in parts, each from the piece of the run that knows it: the run's setting
/// (`init(setting:)`), the steps, the evaluation, the ledger's report and the files.
public struct RunSummary: Codable, Sendable {
    public var method = ""
    public var world = 0, tp = 0, dp = 0
    public var steps = 0
    /// The step's shape: sequences × --seq.
    public var tokensPerStep = 0
    /// Whether each micro-batch's examples were packed (`--packing`).
    public var packing = true
    /// Tokens computed per step (mean over the steps run; packed: the examples' tokens alone), and
    /// the share of them that is padding.
    public var tokensComputedPerStep = 0.0
    public var paddingFraction = 0.0
    /// Σ len² of the sequences computed per step (mean over the steps run): attention's cost, which
    /// `Calibration` reads (a CSV's `attention_squares_per_step`).
    public var attentionSquaresPerStep = 0.0
    /// nil when no step ran (a run stopped by a signal before its first step).
    public var trainLossFirst: Double?, trainLossFinal: Double?
    public var evalLossBefore: Double?, evalLossAfter: Double?
    public var exactMatchBefore: Double?, exactMatchAfter: Double?
    /// Corpus BLEU on sacreBLEU's 0–100 scale (the `bleu` of `e2eBefore` and `e2eAfter`).
    public var bleuBefore: Double?, bleuAfter: Double?
    /// E2E metrics (BLEU, NIST, ROUGE-L, CIDEr against every reference) of the held-out generations.
    public var e2eBefore: E2EScores?, e2eAfter: E2EScores?
    public var decoding: String?
    /// The held-out examples the validation loss ran over, and how many there were.
    public var evalLossExamples: Int?, heldOutExamples: Int?
    /// The bound on new tokens per held-out generation, and the tokens generated over all of
    /// them after training (before, when training stopped early).
    public var evalMaxNewTokens: Int?, evalTokensGenerated: Int?
    public var trainableParams = 0, totalParams = 0
    /// Tokens that are not padding, per second of the steps.
    public var tokensPerSecond = 0.0
    /// Seconds of the steps' own time per step (`tokensPerStep / tokensPerSecond` is not: the one
    /// counts positions, the other real tokens).
    public var secondsPerStep = 0.0
    public var seconds = 0.0
    public var adapterFileBytes: Int?
    public var fullModelBytes = 0
    public var gradSyncBytesPerStep = 0
    public var fullFtGradBytesPerStep = 0
    public var collectivesPerStep: [String: [String: Double]] = [:]
    public var droppedTooLong = 0
    public var base = ""
    public var tokenizer: String?
    public var resumedFrom: Int?
    public var interrupted = false
    /// A hash of the trainable A/B on every rank (LoRA): all equal iff the replicas are bit-identical.
    public var replicaFingerprints: [String] = []
    public var seq = 0
    public var peakRSSBytes = 0
    /// How the frozen base computed (fp32, or bf16 storage and GEMM inputs).
    public var precision = ""
    /// What the forward kept for the backward: none (every block's intermediates) or blocks
    /// (each block's input; the backward recomputed the rest).
    public var recompute = ""
    /// Bytes of this rank's training activations (their arena and bf16 scratch).
    public var activationBytesPerRank = 0
    /// Bytes this rank holds for the base (its shard; 2 per GEMM weight under bf16).
    public var baseBytesPerRank = 0
    /// The CPU rank 0 ran on and what the GEMM libraries used of it (`lora-dist doctor` shows every rank's).
    public var cpu = CPUInfo.current
    /// The GEMM backend, and under bf16 its kernel (native or widened).
    public var gemm = ""
}

extension RunSummary {
    /// The run's setting: method, grid, the shape of a step, the model's sizes, base, tokenizer,
    /// precision and the machine.
    init(setting run: TrainRun, data: RunData, resumedFrom: Int?) {
        let o = run.options.train
        let config = run.model.config
        method = run.options.train.method.name
        world = run.world.size
        tp = run.grid.tpDegree
        dp = run.grid.dpDegree
        steps = o.steps
        tokensPerStep = o.globalBatch * o.seq
        packing = o.packing
        seq = o.seq
        fullModelBytes = 4 * config.parameterCount
        fullFtGradBytesPerStep = 4 * config.parameterCount
        droppedTooLong = data.train.droppedTooLong
        base = run.baseIdentity.source
        tokenizer = data.tokenizer.description
        self.resumedFrom = resumedFrom
        precision = o.precision.rawValue
        recompute = o.recompute.rawValue
        activationBytesPerRank = run.trainer.activations.bytes
        baseBytesPerRank = run.model.base.bytes
        let bf16Kernel = Gemm.backend == .onednn ? " bf16 \(Gemm.bf16Kernel.rawValue)" : " bf16 widened"
        gemm = Gemm.backendName + (o.precision == .bf16 ? bf16Kernel : "")
    }

    /// The steps: the first and last loss, tokens (not padding) per second over the steps' own
    /// time, the tokens computed per step and the share of them that is padding.
    mutating func add(_ loop: LoopOutcome) {
        trainLossFirst = loop.firstLoss.isNaN ? nil : loop.firstLoss
        trainLossFinal = loop.lastLoss.isNaN ? nil : loop.lastLoss
        tokensPerSecond = Double(loop.realTokens) / max(loop.trainSeconds, 1e-9)
        secondsPerStep = loop.trainSeconds / Double(max(1, loop.stepsRun))
        tokensComputedPerStep = Double(loop.computedTokens) / Double(max(1, loop.stepsRun))
        paddingFraction = StepTokens(real: loop.realTokens, computed: loop.computedTokens).paddingFraction
        attentionSquaresPerStep = Double(loop.squares) / Double(max(1, loop.stepsRun))
        interrupted = loop.interrupted
    }

    /// The held-out evaluation before and after training.
    mutating func add(before: Evaluation, after: Evaluation, of evaluation: RunEvaluation) {
        let (genBefore, genAfter) = (before.generation, after.generation)
        evalLossBefore = before.loss
        evalLossAfter = after.loss
        exactMatchBefore = genBefore?.exactMatch
        exactMatchAfter = genAfter?.exactMatch
        bleuBefore = genBefore?.bleu
        bleuAfter = genAfter?.bleu
        e2eBefore = genBefore?.e2e
        e2eAfter = genAfter?.e2e
        decoding = genAfter != nil || genBefore != nil ? evaluation.run.options.decoding.description : nil
        evalLossExamples = before.loss != nil || after.loss != nil ? evaluation.plan.validExamples : nil
        heldOutExamples = evaluation.data.valid.map { _ in evaluation.plan.validTotal }
        evalMaxNewTokens = (genAfter ?? genBefore)?.maxNewTokens
        evalTokensGenerated = (genAfter ?? genBefore)?.tokensGenerated
    }

    /// The ledger's and memory figures (`TrainingReport`).
    mutating func add(_ report: TrainingReport) {
        trainableParams = report.trainableParams
        totalParams = report.totalParams
        gradSyncBytesPerStep = report.gradSyncBytesPerStep
        collectivesPerStep = report.collectivesPerStep
        peakRSSBytes = report.peakRSSBytes
    }
}
