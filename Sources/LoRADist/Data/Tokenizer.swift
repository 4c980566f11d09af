import Foundation

/// Text ↔ token ids for a base model. Invariant: `eot` and every id `encode` returns are below
/// `vocabSize`, which must not exceed the model's vocabulary.
public protocol Tokenizer: Sendable {
    /// One more than the largest id the tokenizer can produce.
    var vocabSize: Int { get }
    /// End-of-text: closes each training example and document, and stops generation.
    var eot: Int32 { get }
    /// What it is and where it was read from, for logs and run fingerprints.
    var description: String { get }
    func encode(_ text: String) -> [Int32]
    func decode(_ ids: [Int32]) -> String
    /// The tokens a sequence starts with, before its first text (Llama 3's <|begin_of_text|>, as
    /// the tokenizer's post-processor adds it); none for GPT-2 and Qwen2.
    var leading: [Int32] { get }
}

extension Tokenizer {
    public var leading: [Int32] { [] }

    /// The ids of a text that starts a sequence (a prompt, a training example's context, a document).
    public func encodeStart(_ text: String) -> [Int32] { leading + encode(text) }
}

/// Which tokenizer goes with a base model.
public enum TokenizerChoice {
    /// `override` (a tokenizer.json or a directory with tokenizer files) when given; else the
    /// tokenizer files in the base's directory (beside the base file; end-of-text as its
    /// tokenizer_config.json names it); else the byte tokenizer
    /// of the built-in base and of random initialisations.
    public static func forBase(_ base: BaseSpec, override: String?) throws -> any Tokenizer {
        if let o = override {
            guard FileManager.default.fileExists(atPath: o) else {
                throw IOError.cannotRead(o, "no such file or directory (--tokenizer)")
            }
            return try GPT2Tokenizer.load(o)
        }
        guard let dir = ModelFiles.directory(of: base), GPT2Tokenizer.files(in: dir) != nil else {
            return ByteTokenizer()
        }
        return try GPT2Tokenizer.load(dir)
    }

    /// Refuses a tokenizer that can produce ids beyond the model's vocabulary.
    public static func check(_ t: any Tokenizer, fits vocabSize: Int) throws {
        guard t.vocabSize <= vocabSize else {
            throw ModelError.invalidConfig(
                """
                the tokenizer has \(t.vocabSize) ids but the base's vocabulary only \(vocabSize) (\(t.description)); \
                pass the model's own tokenizer with --tokenizer
                """
            )
        }
    }
}
