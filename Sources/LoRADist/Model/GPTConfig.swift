import Foundation

/// Shape of a GPT-2-architecture model (HF GPT2Config's names in comments).
public struct GPTConfig: Codable, Equatable, Sendable {
    public var nLayer: Int      // n_layer
    public var nEmbd: Int       // n_embd (d)
    public var nHead: Int       // n_head
    public var vocabSize: Int   // vocab_size (real tokens; padded for sharding, see paddedVocab)
    public var nPositions: Int  // n_positions (context length)
    public var lnEps: Float = 1e-5

    public init(nLayer: Int, nEmbd: Int, nHead: Int, vocabSize: Int, nPositions: Int, lnEps: Float = 1e-5) {
        self.nLayer = nLayer
        self.nEmbd = nEmbd
        self.nHead = nHead
        self.vocabSize = vocabSize
        self.nPositions = nPositions
        self.lnEps = lnEps
    }

    public var headDim: Int { nEmbd / nHead }
    public var ffn: Int { 4 * nEmbd }
    /// The vocabulary rounded up to a multiple of 8, so tensor-parallel degrees 1, 2, 4 and 8 divide it.
    /// Padded rows of the embedding are zero and padded logits never enter the softmax.
    public var paddedVocab: Int { (vocabSize + 7) / 8 * 8 }

    /// Parameters as the model defines them (real vocabulary, tied head counted once).
    public var parameterCount: Int {
        let d = nEmbd
        let perLayer = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
        return vocabSize * d + nPositions * d + nLayer * perLayer + 2 * d
    }

    /// Named shapes: `tiny` (the built-in model), `gpt2` (124M), `gpt2-medium` (355M), and larger ones
    /// for cost predictions.
    public static func named(_ name: String) -> GPTConfig? {
        switch name {
        case "tiny": return GPTConfig(nLayer: 4, nEmbd: 128, nHead: 4, vocabSize: 257, nPositions: 192)
        case "gpt2": return GPTConfig(nLayer: 12, nEmbd: 768, nHead: 12, vocabSize: 50257, nPositions: 1024)
        case "gpt2-medium": return GPTConfig(nLayer: 24, nEmbd: 1024, nHead: 16, vocabSize: 50257, nPositions: 1024)
        case "gpt2-large": return GPTConfig(nLayer: 36, nEmbd: 1280, nHead: 20, vocabSize: 50257, nPositions: 1024)
        case "gpt2-xl": return GPTConfig(nLayer: 48, nEmbd: 1600, nHead: 25, vocabSize: 50257, nPositions: 1024)
        default: return nil
        }
    }
    public static let names = ["tiny", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]

    /// Checks the shape itself (independent of parallelism).
    public func validate() throws {
        func bad(_ m: String) -> ModelError { .invalidConfig(m) }
        guard nLayer >= 1 else { throw bad("--layers must be at least 1 (got \(nLayer))") }
        guard nEmbd >= 1, nHead >= 1 else { throw bad("--dim and --heads must be positive") }
        guard nEmbd % nHead == 0 else { throw bad("--dim \(nEmbd) is not divisible by --heads \(nHead)") }
        guard vocabSize >= 2 else { throw bad("--vocab must be at least 2 (got \(vocabSize))") }
        guard nPositions >= 2 else { throw bad("--context must be at least 2 (got \(nPositions))") }
    }
}

/// Errors of model construction and loading; messages name the option or file at fault.
public enum ModelError: Error, CustomStringConvertible {
    case invalidConfig(String)
    case invalidParallel(String)
    case shapeMismatch(String)
    case missingTensor(String)

    public var description: String {
        switch self {
        case let .invalidConfig(m), let .invalidParallel(m), let .shapeMismatch(m), let .missingTensor(m): return m
        }
    }
}
