import Foundation

@testable import LoRADist

/// The GPT-2 byte-level BPE the tokenizer, fuzzing and bad-input tests share: the fixture
/// reference/make_tokenizer_fixture.py writes, and a vocabulary and merges written by hand.
enum TokenizerFixtures {
    /// The fixture directory, written once for all tests (nil if the script failed).
    static let gpt2: String? = {
        let d = makeTempDir("bpe-fixture")
        return (try? PythonReference.run("make_tokenizer_fixture.py", [d])).flatMap { $0 }.map { _ in d }
    }()

    /// All 256 bytes, then: Ġt, he, Ġthe, ll, ell, aa, and the end-of-text token.
    static let handVocab: [String: Int] = {
        var v: [String: Int] = [:]
        for (b, s) in GPT2PreTokenizer.byteToScalar.enumerated() { v[String(Character(s))] = b }
        for (i, t) in ["Ġt", "he", "Ġthe", "ll", "ell", "aa", "<|endoftext|>"].enumerated() { v[t] = 256 + i }
        return v
    }()
    static let handMerges = ["Ġ t", "h e", "Ġt he", "l l", "e ll", "a a"]
}
