/// GPT-2's byte-level alphabet and pre-tokenizer: how text becomes the pieces BPE merges within.
///
/// The pre-tokenizer is the regex
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// written as a scanner over Unicode scalars (the regex runs over code points, not graphemes):
/// at each position the first alternative that matches wins, and each `+` is greedy. Invariant:
/// the pieces are non-empty and cover the text exactly, in order.
public enum GPT2PreTokenizer {
    /// GPT-2's byte → character map: printable Latin-1 bytes stand for themselves, the other 68
    /// (controls, space, 0x7F–0xA0, soft hyphen) become U+0100… in byte order, so every token is
    /// a printable string.
    public static let byteToScalar: [Unicode.Scalar] = {
        var table: [Unicode.Scalar] = []
        var shifted: UInt32 = 256
        for b in UInt32(0)...255 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable {
                table.append(Unicode.Scalar(b)!)
            } else {
                table.append(Unicode.Scalar(shifted)!)
                shifted += 1
            }
        }
        return table
    }()

    /// The inverse of `byteToScalar`.
    public static let scalarToByte: [Unicode.Scalar: UInt8] = {
        var m: [Unicode.Scalar: UInt8] = [:]
        for (b, s) in byteToScalar.enumerated() { m[s] = UInt8(b) }
        return m
    }()

    /// The character classes the pre-tokenizer regexes tell apart. `space` is U+0020 alone (the
    /// optional ` ?` prefix); `lineBreak` is `[\r\n]` (Llama-3's pattern treats it apart);
    /// `whitespace` is the rest of `\s` (Unicode White_Space); `other` is `[^\s\p{L}\p{N}]`,
    /// which includes the apostrophe and combining marks.
    enum Kind: UInt8 {
        case space, whitespace, lineBreak, letter, number, other

        /// `\s`.
        var isSpace: Bool { rawValue <= Kind.lineBreak.rawValue }
    }

    static let asciiKinds: [Kind] = (0..<128).map { kindOfScalar(Unicode.Scalar(UInt8($0))) }

    static func kindOfScalar(_ s: Unicode.Scalar) -> Kind {
        if s == " " { return .space }
        if s == "\r" || s == "\n" { return .lineBreak }
        if s.properties.isWhitespace { return .whitespace }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }

    static func kind(_ s: Unicode.Scalar) -> Kind { s.value < 128 ? asciiKinds[Int(s.value)] : kindOfScalar(s) }

    /// A text's Unicode scalars, their classes and where each starts in its UTF-8 (one more
    /// offset at the end): what the scanners read.
    struct Scalars {
        var values: [UInt32] = [], kinds: [Kind] = [], offsets: [Int] = [0]
        var count: Int { values.count }

        init(_ text: String) {
            let n = text.utf8.count
            values.reserveCapacity(n)
            kinds.reserveCapacity(n)
            offsets.reserveCapacity(n + 1)
            for s in text.unicodeScalars {
                values.append(s.value)
                kinds.append(kind(s))
                offsets.append(offsets.last! + UTF8.width(s))
            }
        }
    }

    /// The pieces of `text` as ranges of its UTF-8 bytes.
    public static func pieces(_ text: String) -> [Range<Int>] {
        let s = Scalars(text)
        var out: [Range<Int>] = []
        var i = 0
        while i < s.count {
            let j = pieceEnd(from: i, end: s.count, values: s.values, kinds: s.kinds)
            out.append(s.offsets[i]..<s.offsets[j])
            i = j
        }
        return out
    }

    /// Where the piece starting at scalar `i` ends (exclusive) when the text ends at `n`: the
    /// regex's alternatives in order.
    static func pieceEnd(from i: Int, end n: Int, values v: [UInt32], kinds k: [Kind]) -> Int {
        func run(_ kind: Kind, from a: Int) -> Int {
            var j = a
            while j < n && k[j] == kind { j += 1 }
            return j
        }
        // 's 't 'm 'd, then 're 've 'll (lowercase only: "'S" is not a contraction to the regex).
        if v[i] == 0x27 && i + 1 < n {
            switch v[i + 1] {
            case 0x73, 0x74, 0x6D, 0x64: return i + 2
            case 0x72, 0x76: if i + 2 < n && v[i + 2] == 0x65 { return i + 3 }
            case 0x6C: if i + 2 < n && v[i + 2] == 0x6C { return i + 3 }
            default: break
            }
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: a run of one class, with one space before it.
        let start = k[i] == .space && i + 1 < n ? i + 1 : i
        if !k[start].isSpace { return run(k[start], from: start) }
        // `\s+(?!\S)`: a whitespace run that is followed by a non-space gives its last character
        // back (to become the next piece's ` ?`); a run of one then falls through to `\s+`.
        var j = i
        while j < n && k[j].isSpace { j += 1 }
        return j < n && j - i >= 2 ? j - 1 : j
    }
}
