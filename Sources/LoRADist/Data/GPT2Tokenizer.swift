import Foundation

/// A byte-level BPE tokenizer: GPT-2's, giving the ids Hugging Face's GPT2Tokenizer gives, and
/// the tokenizer.json variants of the Llama family (Llama-3, Qwen2, SmolLM2), giving the ids
/// `tokenizers` gives. Added tokens such as `<|endoftext|>` are split out of the text first
/// (leftmost, then longest), the rest is normalized and cut into pieces (`BPEPreTokenizer`), each
/// piece's UTF-8 bytes start as one token each, and adjacent pairs merge lowest rank first
/// (leftmost on ties) until no pair has a merge.
/// Invariant: every byte has a token and every id it returns is below `vocabSize`.
public final class GPT2Tokenizer: Tokenizer, @unchecked Sendable {
    public let vocabSize: Int
    public let eot: Int32
    public let description: String
    /// The token of each byte alone.
    let byteIds: [Int32]
    /// (left id << 32 | right id) → the merge's rank and the merged token's id.
    let merges: [UInt64: Merge]
    /// The bytes each id decodes to; empty for an id no token uses.
    let bytesOf: [[UInt8]]
    /// Added tokens found in the raw text, and those (`normalized` in tokenizer.json) found in
    /// the normalized text between them.
    let rawAdded: AddedTokens, normalizedAdded: AddedTokens
    let preTokenizer: BPEPreTokenizer
    /// model.ignore_merges (Llama-3): a piece that is a token of the vocabulary is that token,
    /// whatever the merges would make of it. Bytes → id; nil when merges always apply.
    let wholeTokens: [[UInt8]: Int32]?
    /// The tokens the post-processor puts before and after the text (Llama-3: <|begin_of_text|>
    /// before), which `encode(_:addSpecialTokens:)` adds.
    public let prefix: [Int32], suffix: [Int32]
    public var leading: [Int32] { prefix }
    /// Pieces already merged: text repeats its words, and merging is the expensive part.
    private var cache: [[UInt8]: [Int32]] = [:]
    private let lock = NSLock()

    struct Merge {
        var rank: Int32
        var id: Int32
    }

    /// What a tokenizer.json may say beyond GPT-2's files; the defaults are GPT-2's.
    struct Options {
        /// Its normalizer and pre-tokenizer (the byte-level stage's prefix space is `addPrefixSpace`).
        var preTokenizer = BPEPreTokenizer()
        var ignoreMerges = false
        /// Added tokens matched in the normalized text rather than the raw text.
        var normalizedAdded: Set<String> = []
        /// The end-of-text token.
        var endOfText = "<|endoftext|>"
        /// The post-processor's tokens around the text.
        var prefix: [Int] = [], suffix: [Int] = []
    }

    /// `vocab`: token (in GPT-2's byte alphabet) → id. `merges`: pairs in rank order; `mergeName(k)`
    /// says where merge k comes from in `source` for errors. `added`: tokens matched whole in text
    /// (content → id). The end-of-text token (`options.endOfText`, `<|endoftext|>` unless said)
    /// is always an added token, as transformers' GPT2Tokenizer makes it: with its id in `vocab`,
    /// or after the last id if the files lack it.
    init(
        vocab: [String: Int], merges pairs: [(String, String)], added: [String: Int], addPrefixSpace: Bool,
        source: String, mergeName: (Int) -> String, description: (Int, Int32) -> String,
        options: Options = Options()
    ) throws {
        var added = added
        let eotText = options.endOfText
        var top = max(vocab.values.max() ?? -1, added.values.max() ?? -1)
        if added[eotText] == nil {
            if vocab[eotText] == nil { top += 1 }
            added[eotText] = vocab[eotText] ?? top
        }
        guard top < Int(Int32.max) else { throw IOError.corrupt(source, "token id \(top) is too large") }
        // Ids number the tokens 0, 1, 2, ...: a far larger one is a damaged file (and would size the tables).
        let tokens = Set(vocab.values).union(added.values).count
        guard top < 2 * tokens + 1024 else {
            throw IOError.corrupt(
                source, "token id \(top) is far beyond the \(tokens) tokens (ids number the tokens from 0)")
        }
        var bytesOf = [[UInt8]](repeating: [], count: top + 1)
        var ownerOf = [String?](repeating: nil, count: top + 1)
        var byteIds = [Int32](repeating: -1, count: 256)
        var whole: [[UInt8]: Int32] = [:]
        for (token, id) in vocab {
            guard id >= 0 else { throw IOError.corrupt(source, "token \"\(token)\" has the negative id \(id)") }
            if let other = ownerOf[id] {
                throw IOError.corrupt(source, "id \(id) belongs to both \"\(other)\" and \"\(token)\"")
            }
            ownerOf[id] = token
            bytesOf[id] = Self.bytes(of: token)
            let s = token.unicodeScalars
            if s.count == 1, let b = GPT2PreTokenizer.scalarToByte[s.first!] { byteIds[Int(b)] = Int32(id) }
            // Only a token spelled in the byte alphabet can equal a piece.
            if options.ignoreMerges && s.allSatisfy({ GPT2PreTokenizer.scalarToByte[$0] != nil }) {
                whole[bytesOf[id]] = Int32(id)
            }
        }
        if let missing = byteIds.firstIndex(of: -1) {
            throw IOError.corrupt(
                source,
                """
                the vocabulary has no token for byte 0x\(String(missing, radix: 16, uppercase: true)) \
                (\"\(GPT2PreTokenizer.byteToScalar[missing])\"); a byte-level BPE needs all 256
                """
            )
        }
        for (token, id) in added {
            guard id >= 0 else { throw IOError.corrupt(source, "added token \"\(token)\" has the negative id \(id)") }
            bytesOf[id] = Self.bytes(of: token)  // an added token decodes as itself, as in HF
        }
        var table: [UInt64: Merge] = [:]
        table.reserveCapacity(pairs.count)
        for (k, (a, b)) in pairs.enumerated() {
            for t in [a, b] where vocab[t] == nil {
                throw IOError.corrupt(
                    source, "\(mergeName(k)) (\"\(a) \(b)\") uses \"\(t)\", which is not in the vocabulary")
            }
            guard let merged = vocab[a + b] else {
                throw IOError.corrupt(
                    source, "\(mergeName(k)) (\"\(a) \(b)\") makes \"\(a + b)\", which is not in the vocabulary")
            }
            // A repeated pair keeps its last rank, as HF's table does.
            table[Self.key(Int32(vocab[a]!), Int32(vocab[b]!))] = Merge(rank: Int32(k), id: Int32(merged))
        }
        for (name, ids) in [("prefix", options.prefix), ("suffix", options.suffix)] {
            if let bad = ids.first(where: { $0 < 0 || $0 > top }) {
                throw IOError.corrupt(
                    source, "the post-processor's \(name) token id \(bad) is not a token (ids 0..<\(top + 1))")
            }
        }
        self.byteIds = byteIds
        self.bytesOf = bytesOf
        self.merges = table
        var pre = options.preTokenizer
        pre.addPrefixSpace = addPrefixSpace
        preTokenizer = pre
        // A normalized added token is looked for in normalized text, so in its normalized form.
        rawAdded = AddedTokens(added.filter { !options.normalizedAdded.contains($0.key) })
        normalizedAdded = AddedTokens(
            Dictionary(
                added.filter { options.normalizedAdded.contains($0.key) }.map { (pre.normalize($0.key), $0.value) },
                uniquingKeysWith: min))
        wholeTokens = options.ignoreMerges ? whole : nil
        prefix = options.prefix.map(Int32.init)
        suffix = options.suffix.map(Int32.init)
        vocabSize = top + 1
        eot = Int32(added[eotText]!)
        self.description = description(top + 1, eot)
    }

    /// A token's bytes: its characters read through GPT-2's alphabet, or (for a token with a
    /// character outside it, such as some added tokens) its own UTF-8 — HF's ByteLevel decoder.
    static func bytes(of token: String) -> [UInt8] {
        var out: [UInt8] = []
        for s in token.unicodeScalars {
            guard let b = GPT2PreTokenizer.scalarToByte[s] else { return Array(token.utf8) }
            out.append(b)
        }
        return out
    }

    static func key(_ a: Int32, _ b: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))
    }

    /// The ids of `text` alone, as `tokenizers`' encode(text, add_special_tokens=False); added
    /// tokens in the text are found all the same.
    public func encode(_ text: String) -> [Int32] { encode(text, addSpecialTokens: false) }

    /// The ids of `text`; with `addSpecialTokens`, between the post-processor's `prefix` and
    /// `suffix`, as `tokenizers`' encode(text) gives them.
    public func encode(_ text: String, addSpecialTokens: Bool) -> [Int32] {
        let bytes = Array(text.utf8)
        var out: [Int32] = addSpecialTokens ? prefix : []
        out.reserveCapacity(bytes.count / 3)
        rawAdded.split(bytes[...]) { part, id in
            if let id { return out.append(id) }
            let normalized = preTokenizer.normalize(part)
            guard !normalizedAdded.isEmpty else { return encodeOrdinary(normalized, into: &out) }
            normalizedAdded.split(normalized) { sub, token in
                if let token { out.append(token) } else { encodeOrdinary(sub, into: &out) }
            }
        }
        if addSpecialTokens { out += suffix }
        return out
    }

    /// Normalized text with no added tokens in it. The segment lies between added tokens, so it is whole UTF-8.
    private func encodeOrdinary(_ segment: ArraySlice<UInt8>, into out: inout [Int32]) {
        preTokenizer.pieces(segment) { out += piece($0) }
    }

    private func piece(_ p: ArraySlice<UInt8>) -> [Int32] {
        if p.count == 1 { return [byteIds[Int(p.first!)]] }
        let key = Array(p)
        lock.lock()
        let hit = cache[key]
        lock.unlock()
        if let hit { return hit }
        let ids = wholeTokens?[key].map { [$0] } ?? merge(p.map { byteIds[Int($0)] })
        if key.count <= 64 {
            lock.lock()
            if cache.count >= 100_000 { cache.removeAll(keepingCapacity: true) }
            cache[key] = ids
            lock.unlock()
        }
        return ids
    }

    /// BPE on one piece: a heap of candidate merges keyed (rank, position) over a linked list of
    /// symbols, so a long piece costs n log n rather than n² scans. A popped candidate whose pair
    /// has changed since it was pushed is stale and skipped: ranks name pairs uniquely, so the
    /// pair now at that position has the popped rank only if it is the same pair.
    func merge(_ start: [Int32]) -> [Int32] {
        var ids = start
        let n = ids.count
        var next = Array(1...n)
        var prev = Array(-1..<(n - 1))
        var heap = MergeHeap()
        func push(_ a: Int) {
            let b = next[a]
            guard b < n, let m = merges[Self.key(ids[a], ids[b])] else { return }
            heap.push(UInt64(m.rank) << 32 | UInt64(a))
        }
        for a in 0..<(n - 1) { push(a) }
        while let top = heap.pop() {
            let a = Int(top & 0xFFFF_FFFF)
            let b = next[a]
            guard ids[a] >= 0, b < n, let m = merges[Self.key(ids[a], ids[b])], UInt64(m.rank) == top >> 32 else {
                continue
            }
            ids[a] = m.id
            ids[b] = -1
            next[a] = next[b]
            if next[b] < n { prev[next[b]] = a }
            if prev[a] >= 0 { push(prev[a]) }
            push(a)
        }
        var out: [Int32] = []
        var a = 0
        while a < n {
            out.append(ids[a])
            a = next[a]
        }
        return out
    }

    /// The text of `ids`: their bytes joined, as UTF-8 with each invalid sequence replaced by
    /// U+FFFD (HF decodes the same way); ids no token uses are skipped.
    public func decode(_ ids: [Int32]) -> String {
        var bytes: [UInt8] = []
        for id in ids where id >= 0 && Int(id) < bytesOf.count { bytes += bytesOf[Int(id)] }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Added tokens as UTF-8, found in text leftmost first and, of those starting there, longest
/// (the rule of `tokenizers`' added vocabulary).
struct AddedTokens {
    /// Longest first, so the first that matches is the longest.
    let tokens: [(bytes: [UInt8], id: Int32)]
    /// Whether some token starts with this byte.
    let starts: [Bool]

    init(_ contentToId: [String: Int]) {
        tokens = contentToId.map { (bytes: Array($0.key.utf8), id: Int32($0.value)) }.filter { !$0.bytes.isEmpty }
            .sorted { $0.bytes.count != $1.bytes.count ? $0.bytes.count > $1.bytes.count : $0.id < $1.id }
        var s = [Bool](repeating: false, count: 256)
        for t in tokens { s[Int(t.bytes[0])] = true }
        starts = s
    }

    var isEmpty: Bool { tokens.isEmpty }

    /// Calls `body` on `text` in order: each stretch between tokens with nil (possibly empty), each token with its id.
    func split(_ text: ArraySlice<UInt8>, _ body: (ArraySlice<UInt8>, Int32?) -> Void) {
        var segment = text.startIndex
        var i = text.startIndex
        while i < text.endIndex {
            if starts[Int(text[i])], let t = tokens.first(where: { matches($0.bytes, text, at: i) }) {
                body(text[segment..<i], nil)
                body(text[i..<(i + t.bytes.count)], t.id)
                i += t.bytes.count
                segment = i
            } else {
                i += 1
            }
        }
        body(text[segment...], nil)
    }

    private func matches(_ needle: [UInt8], _ hay: ArraySlice<UInt8>, at i: Int) -> Bool {
        guard i + needle.count <= hay.endIndex else { return false }
        for k in 0..<needle.count where hay[i + k] != needle[k] { return false }
        return true
    }
}

/// A binary min-heap of packed (rank << 32 | position) keys: the next merge is the smallest.
private struct MergeHeap {
    private var a: [UInt64] = []

    mutating func push(_ x: UInt64) {
        a.append(x)
        var i = a.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if a[p] <= a[i] { break }
            a.swapAt(p, i)
            i = p
        }
    }

    mutating func pop() -> UInt64? {
        guard let top = a.first else { return nil }
        let last = a.removeLast()
        if a.isEmpty { return top }
        a[0] = last
        var i = 0
        while true {
            let l = 2 * i + 1
            let r = l + 1
            var m = i
            if l < a.count && a[l] < a[m] { m = l }
            if r < a.count && a[r] < a[m] { m = r }
            if m == i { break }
            a.swapAt(i, m)
            i = m
        }
        return top
    }
}
