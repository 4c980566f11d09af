import Foundation

/// Reading a GPT-2 tokenizer from Hugging Face's files: vocab.json + merges.txt (GPT-2's own
/// pair), or tokenizer.json (the `tokenizers` library's format; merges as "a b" strings or, in
/// newer files, [a, b] pairs). Anything that would make the ids differ from a plain GPT-2
/// byte-level BPE (a normalizer, another pre-tokenizer, BPE dropout…) is refused, not ignored.
extension GPT2Tokenizer {
    /// `path` is a tokenizer.json, or a directory holding one (preferred, as HF's fast tokenizer
    /// does) or vocab.json + merges.txt.
    public static func load(_ path: String) throws -> GPT2Tokenizer {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw IOError.cannotRead(path, "no such file or directory")
        }
        if !isDir.boolValue { return try GPT2Tokenizer(tokenizerJSON: path) }
        guard let found = files(in: path) else {
            throw IOError.cannotRead(path, "no tokenizer.json, and no vocab.json + merges.txt, in this directory")
        }
        if let j = found.tokenizerJSON { return try GPT2Tokenizer(tokenizerJSON: j) }
        return try GPT2Tokenizer(vocabFile: found.vocab!, mergesFile: found.merges!)
    }

    /// The tokenizer files in `dir`, or nil if it has neither tokenizer.json nor both of vocab.json and merges.txt.
    public static func files(in dir: String) -> (tokenizerJSON: String?, vocab: String?, merges: String?)? {
        let fm = FileManager.default
        let j = dir + "/tokenizer.json", v = dir + "/vocab.json", m = dir + "/merges.txt"
        if fm.fileExists(atPath: j) { return (j, nil, nil) }
        if fm.fileExists(atPath: v) && fm.fileExists(atPath: m) { return (nil, v, m) }
        return nil
    }

    /// GPT-2's vocab.json (token → id) and merges.txt (one "a b" pair a line, best first, after a
    /// `#version` line).
    public convenience init(vocabFile: String, mergesFile: String) throws {
        let vocab = try Self.vocabulary(try Self.readJSON(vocabFile), source: vocabFile)
        let text = try Self.readText(mergesFile)
        var pairs: [(String, String)] = [], lines: [Int] = []
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if line.isEmpty || line.hasPrefix("#version") { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw IOError.corrupt(mergesFile, "line \(n + 1) is not two tokens separated by one space: \"\(line)\"")
            }
            pairs.append((String(parts[0]), String(parts[1])))
            lines.append(n + 1)
        }
        try self.init(vocab: vocab, merges: pairs, added: [:], addPrefixSpace: false, source: mergesFile,
                      mergeName: { "line \(lines[$0])" },
                      description: { "GPT-2 BPE from \(vocabFile) + merges.txt (\($0) ids, end-of-text \($1))" })
    }

    /// A `tokenizers` tokenizer.json whose model is BPE over GPT-2's byte-level pre-tokenizer.
    public convenience init(tokenizerJSON path: String) throws {
        guard let root = try Self.readJSON(path) as? [String: Any] else { throw IOError.corrupt(path, "not a JSON object") }
        func refuse(_ why: String) -> IOError { IOError.corrupt(path, "\(why); lora-dist reads GPT-2 byte-level BPE tokenizers only") }
        guard let model = root["model"] as? [String: Any] else { throw IOError.corrupt(path, "no \"model\" object") }
        if let type = model["type"] as? String, type != "BPE" { throw refuse("the model is \(type), not BPE") }
        for k in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let s = model[k] as? String, !s.isEmpty { throw refuse("model.\(k) is \"\(s)\"") }
        }
        for k in ["byte_fallback", "ignore_merges"] where (model[k] as? Bool) == true { throw refuse("model.\(k) is set") }
        if let d = model["dropout"], !(d is NSNull) { throw refuse("model.dropout is set (BPE dropout makes encoding random)") }
        if let n = root["normalizer"], !(n is NSNull) { throw refuse("it has a normalizer (\(Self.typeName(n)))") }
        guard let pre = root["pre_tokenizer"] as? [String: Any], pre["type"] as? String == "ByteLevel" else {
            throw refuse("the pre-tokenizer is \(Self.typeName(root["pre_tokenizer"] ?? NSNull())), not ByteLevel")
        }
        if (pre["use_regex"] as? Bool) == false { throw refuse("the ByteLevel pre-tokenizer has use_regex false") }
        if let post = root["post_processor"] as? [String: Any], let t = post["type"] as? String, t != "ByteLevel" {
            throw refuse("the post-processor \(t) may add tokens")
        }
        guard let vocabObject = model["vocab"] else { throw IOError.corrupt(path, "no model.vocab") }
        let vocab = try Self.vocabulary(vocabObject, source: path + " (model.vocab)")
        guard let list = model["merges"] as? [Any] else { throw IOError.corrupt(path, "model.merges is not a list") }
        var pairs: [(String, String)] = []
        pairs.reserveCapacity(list.count)
        for (k, m) in list.enumerated() {
            if let s = m as? String {
                let p = s.split(separator: " ", omittingEmptySubsequences: false)
                guard p.count == 2, !p[0].isEmpty, !p[1].isEmpty else { throw IOError.corrupt(path, "model.merges[\(k)] is not \"a b\": \"\(s)\"") }
                pairs.append((String(p[0]), String(p[1])))
            } else if let p = m as? [String], p.count == 2 {
                pairs.append((p[0], p[1]))
            } else {
                throw IOError.corrupt(path, "model.merges[\(k)] is neither \"a b\" nor a pair of strings")
            }
        }
        var added: [String: Int] = [:]
        for (k, a) in ((root["added_tokens"] as? [Any]) ?? []).enumerated() {
            guard let t = a as? [String: Any], let content = t["content"] as? String, let id = t["id"] as? Int else {
                throw IOError.corrupt(path, "added_tokens[\(k)] has no content and id")
            }
            for flag in ["lstrip", "rstrip", "single_word"] where (t[flag] as? Bool) == true {
                throw refuse("added token \"\(content)\" has \(flag) set")
            }
            added[content] = id
        }
        // tokenizers' ByteLevel defaults add_prefix_space to true when the key is absent.
        try self.init(vocab: vocab, merges: pairs, added: added, addPrefixSpace: (pre["add_prefix_space"] as? Bool) ?? true,
                      source: path, mergeName: { "model.merges[\($0)]" },
                      description: { "GPT-2 BPE from \(path) (\($0) ids, end-of-text \($1))" })
    }

    static func typeName(_ o: Any) -> String {
        if o is NSNull { return "none" }
        return ((o as? [String: Any])?["type"] as? String) ?? "unknown"
    }

    static func vocabulary(_ o: Any, source: String) throws -> [String: Int] {
        guard let d = o as? [String: Any] else { throw IOError.corrupt(source, "the vocabulary is not a JSON object of token → id") }
        var v: [String: Int] = [:]
        v.reserveCapacity(d.count)
        for (token, id) in d {
            guard let i = id as? Int else { throw IOError.corrupt(source, "the id of \"\(token)\" is not an integer") }
            v[token] = i
        }
        // Ids number the tokens 0, 1, 2, ...: a far larger one is a damaged file (and would size the tables).
        if let top = v.values.max(), top >= 2 * v.count + 1024 {
            throw IOError.corrupt(source, "token id \(top) is far beyond the \(v.count) tokens (ids number the tokens from 0)")
        }
        return v
    }

    /// merges.txt's text (BOM and CRLF line ends accepted).
    static func readText(_ path: String) throws -> String {
        try TextFile.read(path, emptyHint: "GPT-2's merges.txt holds a #version line and one merge (two tokens and a space) a line")
    }

    static func readJSON(_ path: String) throws -> Any {
        try TextFile.readJSON(path, emptyHint: "expected the tokenizer's JSON")
    }
}
