import Foundation

/// How a byte-level BPE cuts text into the pieces it merges within: tokenizer.json's normalizer
/// and pre-tokenizer, for the variants lora-dist implements. GPT-2: ByteLevel with its own regex.
/// Llama-3: Split by Llama-3's regex, then ByteLevel without one. Qwen2: NFC, then the same with
/// Qwen2's regex. SmolLM2: Digits (each digit alone), then ByteLevel with GPT-2's regex. Each
/// regex is a scanner over Unicode scalars (no regex engine), so cutting is linear in the text.
/// Invariant: the pieces are non-empty and, but for ByteLevel's optional prefix space, cover the
/// text exactly, in order.
struct BPEPreTokenizer: Equatable, Sendable {
    /// A Split pre-tokenizer's regex (behaviour Isolated), one of those lora-dist implements.
    enum Pattern: String, Sendable {
        case gpt2 = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
        case llama3 =
            #"""
            (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\#
            \s+(?!\S)|\s+
            """#
        case qwen2 =
            #"""
            (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\#
            \s+(?!\S)|\s+
            """#

        var name: String {
            switch self {
            case .gpt2: "GPT-2"
            case .llama3: "Llama-3"
            case .qwen2: "Qwen2"
            }
        }
    }

    /// A pre-tokenizer before the byte-level one: each cuts every piece it gets further.
    enum Stage: Equatable, Sendable {
        case split(Pattern)
        /// tokenizers' Digits: runs of `\p{N}` apart from the rest; each digit alone when `individual`.
        case digits(individual: Bool)
    }

    typealias Kind = GPT2PreTokenizer.Kind

    /// Unicode NFC before anything else (Qwen2's normalizer).
    var nfc = false
    var stages: [Stage] = []
    /// ByteLevel's add_prefix_space: a space goes before each piece it gets that does not start with one.
    var addPrefixSpace = false
    /// ByteLevel's use_regex: it cuts its pieces by GPT-2's regex.
    var byteLevelRegex = true

    /// GPT-2's: ByteLevel alone.
    static func gpt2(addPrefixSpace: Bool) -> BPEPreTokenizer { BPEPreTokenizer(addPrefixSpace: addPrefixSpace) }

    var isGPT2: Bool { !nfc && stages.isEmpty && byteLevelRegex }

    /// What it is, for descriptions: "NFC, Split(Qwen2), ByteLevel".
    var summary: String {
        var parts = nfc ? ["NFC"] : []
        for s in stages {
            switch s {
            case .split(let p): parts.append("Split(\(p.name))")
            case .digits(let individual): parts.append(individual ? "Digits(individual)" : "Digits")
            }
        }
        parts.append("ByteLevel" + (byteLevelRegex ? "" : "(no regex)") + (addPrefixSpace ? "(prefix space)" : ""))
        return parts.joined(separator: ", ")
    }

    /// `text` normalized: NFC when asked. Text whose scalars are all below U+0300 (every UTF-8
    /// byte below 0xCC) is already NFC, so the common case copies nothing.
    func normalize(_ text: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        guard nfc, text.contains(where: { $0 >= 0xCC }) else { return text }
        return ArraySlice(String(decoding: text, as: UTF8.self).precomposedStringWithCanonicalMapping.utf8)
    }

    func normalize(_ text: String) -> String {
        nfc ? String(decoding: normalize(ArraySlice(text.utf8)), as: UTF8.self) : text
    }

    /// Calls `emit` with each piece of `segment` (normalized text between added tokens), in order.
    func pieces(_ segment: ArraySlice<UInt8>, _ emit: (ArraySlice<UInt8>) -> Void) {
        guard !segment.isEmpty else { return }
        let bytes = Array(segment)
        let s = GPT2PreTokenizer.Scalars(String(decoding: bytes, as: UTF8.self))
        var ranges = [0..<s.count]
        for stage in stages {
            var next: [Range<Int>] = []
            next.reserveCapacity(ranges.count)
            for r in ranges { cut(r, by: stage, s) { next.append($0) } }
            ranges = next
        }
        for r in ranges {
            if addPrefixSpace && s.values[r.lowerBound] != 0x20 {
                let spaced: [UInt8] = [0x20] + bytes[s.offsets[r.lowerBound]..<s.offsets[r.upperBound]]
                let t = GPT2PreTokenizer.Scalars(String(decoding: spaced, as: UTF8.self))
                byteLevel(0..<t.count, t, spaced, emit)
            } else {
                byteLevel(r, s, bytes, emit)
            }
        }
    }

    private func byteLevel(
        _ r: Range<Int>, _ s: GPT2PreTokenizer.Scalars, _ bytes: [UInt8], _ emit: (ArraySlice<UInt8>) -> Void
    ) {
        guard byteLevelRegex else { return emit(bytes[s.offsets[r.lowerBound]..<s.offsets[r.upperBound]]) }
        var i = r.lowerBound
        while i < r.upperBound {
            let j = GPT2PreTokenizer.pieceEnd(from: i, end: r.upperBound, values: s.values, kinds: s.kinds)
            emit(bytes[s.offsets[i]..<s.offsets[j]])
            i = j
        }
    }

    /// The scalar ranges one stage cuts `r` into.
    private func cut(_ r: Range<Int>, by stage: Stage, _ s: GPT2PreTokenizer.Scalars, _ emit: (Range<Int>) -> Void) {
        let k = s.kinds
        var i = r.lowerBound
        while i < r.upperBound {
            var j: Int
            switch stage {
            case .split(.gpt2):
                j = GPT2PreTokenizer.pieceEnd(from: i, end: r.upperBound, values: s.values, kinds: k)
            case .split(let p):
                j = Self.llamaPieceEnd(
                    from: i, end: r.upperBound, values: s.values, kinds: k, digits: p == .llama3 ? 3 : 1)
            case .digits(let individual):
                j = i + 1
                if k[i] != .number {
                    while j < r.upperBound && k[j] != .number { j += 1 }
                } else if !individual {
                    while j < r.upperBound && k[j] == .number { j += 1 }
                }
            }
            emit(i..<j)
            i = j
        }
    }

    /// The case folds of the letters in the contractions: `(?i:s)` also matches U+017F LATIN SMALL
    /// LETTER LONG S, which folds to s; the others fold from their capitals alone.
    @inline(__always) static func folded(_ v: UInt32) -> UInt32 {
        if v >= 0x41 && v <= 0x5A { return v | 0x20 }
        return v == 0x17F ? 0x73 : v
    }

    /// Where the piece starting at scalar `i` ends (exclusive) when the text ends at `n`, for
    /// Llama-3's regex (`Pattern.llama3`, `digits` 3) or Qwen2's (`Pattern.qwen2`, `\p{N}` without
    /// `{1,3}`: `digits` 1) — the first alternative that matches wins, each quantifier greedy.
    static func llamaPieceEnd(from i: Int, end n: Int, values v: [UInt32], kinds k: [Kind], digits: Int) -> Int {
        func run(_ kind: Kind, from a: Int) -> Int {
            var j = a
            while j < n && k[j] == kind { j += 1 }
            return j
        }
        // Contractions, in any case.
        if v[i] == 0x27 && i + 1 < n {
            let a = folded(v[i + 1])
            let b = i + 2 < n ? folded(v[i + 2]) : 0
            switch a {
            case 0x73, 0x74, 0x6D, 0x64: return i + 2  // 's 't 'm 'd
            case 0x72, 0x76: if b == 0x65 { return i + 3 }  // 're 've
            case 0x6C: if b == 0x6C { return i + 3 }  // 'll
            default: break
            }
        }
        switch k[i] {
        case .letter: return run(.letter, from: i)
        case .number:  // at most `digits`, without looking further (a long number must not cost its length per piece)
            var j = i + 1
            while j < min(n, i + digits) && k[j] == .number { j += 1 }
            return j
        default: break
        }
        // `[^\r\n\p{L}\p{N}]?\p{L}+`: one space, other whitespace or symbol before letters.
        if k[i] != .lineBreak && i + 1 < n && k[i + 1] == .letter { return run(.letter, from: i + 1) }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`: symbols (after one space), then any line breaks.
        let start = v[i] == 0x20 && i + 1 < n && k[i + 1] == .other ? i + 1 : i
        if k[start] == .other { return run(.lineBreak, from: run(.other, from: start)) }
        // Whitespace from here on. `\s*[\r\n]+`: up to the run's last line break.
        var j = i
        var lastBreak = -1
        while j < n && k[j].isSpace {
            if k[j] == .lineBreak { lastBreak = j }
            j += 1
        }
        if lastBreak >= 0 { return lastBreak + 1 }
        // `\s+(?!\S)` then `\s+`, as in GPT-2's regex.
        return j < n && j - i >= 2 ? j - 1 : j
    }
}
