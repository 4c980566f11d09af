import Foundation

@testable import LoRADist

/// The tiny random models the model, parallel and training tests build: their shapes, a random
/// base (RandomInitSource, GPT-2's initialisation), LoRA with a non-zero B, a sharpened head, and
/// random tokens. Each helper does exactly what the tests did inline, draw for draw, so the
/// numbers a test checks do not depend on which of them it calls.
enum Fixtures {
    /// The shape most tests use: 2 blocks, d = 32, 4 heads (TP 1, 2, 4 divide it), a vocabulary
    /// of 61 (padded to 64: the last shard holds padding columns) and 16 positions.
    static let tiny = GPTConfig(nLayer: 2, nEmbd: 32, nHead: 4, vocabSize: 61, nPositions: 16)

    /// A Llama-family model of `tiny`'s size: 2 key/value heads (split at TP 2, shared at TP 4),
    /// an MLP of 48 (TP 1, 2, 4 divide it), q/k/v biases and an untied head.
    static let llamaTiny = GPTConfig.llama(
        nLayer: 2, nEmbd: 32, nHead: 4, nKVHead: 2, ffn: 48, vocabSize: 61, nPositions: 16,
        tiedHead: false, qkvBias: true)

    /// `tiny` with another vocabulary or context length.
    static func tiny(vocabSize: Int = 61, nPositions: Int = 16) -> GPTConfig {
        GPTConfig(
            nLayer: tiny.nLayer, nEmbd: tiny.nEmbd, nHead: tiny.nHead, vocabSize: vocabSize, nPositions: nPositions)
    }

    /// A model on `comm` whose base is RandomInitSource(config, seed: baseSeed), built with
    /// `trainable` (its gradients when `training`).
    static func randomModel(
        _ config: GPTConfig, _ comm: Communicator, trainable: Trainable.Spec? = nil,
        training: Bool = true, precision: Precision = .fp32, baseSeed: UInt64
    ) throws -> GPTModel {
        let m = try GPTModel(config: config, tp: comm, trainable: trainable, training: training, precision: precision)
        try m.base.load(from: RandomInitSource(config: config, seed: baseSeed))
        return m
    }

    /// What a model of `method` is built with: LoRA as `lora` says (none: the base alone), the
    /// `adapters` of an adapter method, or the base's own parameters.
    static func trainable(
        _ method: Method, lora: LoRAConfig? = nil,
        adapters: AdapterConfig? = nil
    ) -> Trainable.Spec? {
        switch method {
        case .lora: return lora.map { .lora($0) }
        case .full: return .full
        case .bitfit: return .bitfit
        case .adapterH, .adapterL: return adapters.map { .adapters($0) }
        }
    }

    /// LoRA initialised with `seed` (A random, B zero), then every B set to scale·N(0, 1) drawn
    /// from `rng`, slot by slot: an adapter that changes the model's outputs.
    static func initLoRA(_ lora: LoRAWeights, seed: UInt64, nonZeroB scale: Float, rng: inout RNG) {
        lora.initialize(seed: seed)
        for s in lora.slots { for i in 0..<(s.outDim * s.rank) { lora.ptr(s.b)[i] = scale * rng.normal() } }
    }

    /// `initLoRA` with B drawn from RNG(seed: bSeed).
    static func initLoRA(_ lora: LoRAWeights, seed: UInt64, nonZeroB scale: Float, bSeed: UInt64) {
        var rng = RNG(seed: bSeed)
        initLoRA(lora, seed: seed, nonZeroB: scale, rng: &rng)
    }

    /// Multiplies this rank's rows of the tied embedding (wte, the LM head) by `factor`: a sharper
    /// head than GPT-2's 0.02 initialisation gives.
    static func sharpenHead(_ m: GPTModel, by factor: Float) {
        let wte = m.base.ptr(m.base.shape.wte.f32)
        for i in 0..<(m.layout.localVocab * m.config.nEmbd) { wte[i] *= factor }
    }

    /// `n` token ids below `vocab`, drawn from `rng`.
    static func randomTokens(_ n: Int, below vocab: Int, rng: inout RNG) -> [Int32] {
        (0..<n).map { _ in Int32(rng.below(vocab)) }
    }

    /// `n` token ids below `vocab`, drawn from RNG(seed: seed).
    static func randomTokens(_ n: Int, below vocab: Int, seed: UInt64) -> [Int32] {
        var rng = RNG(seed: seed)
        return randomTokens(n, below: vocab, rng: &rng)
    }

    /// Loss weights 1/n on each of `n` rows (the mean over the batch).
    static func meanWeights(_ n: Int) -> [Float] { [Float](repeating: 1 / Float(n), count: n) }
}
