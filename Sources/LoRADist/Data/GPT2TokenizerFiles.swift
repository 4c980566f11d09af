import Foundation

/// Reading a byte-level BPE tokenizer from Hugging Face's files: vocab.json + merges.txt (GPT-2's
/// own pair), or tokenizer.json (the `tokenizers` library's format; merges as "a b" strings or,
/// in newer files, [a, b] pairs), GPT-2's or the Llama family's variants. Anything that would
/// make the ids differ from what lora-dist implements (another normalizer or pre-tokenizer, BPE
/// dropout…) is refused, not ignored.
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
        let j = dir + "/tokenizer.json"
        let v = dir + "/vocab.json"
        let m = dir + "/merges.txt"
        if fm.fileExists(atPath: j) { return (j, nil, nil) }
        if fm.fileExists(atPath: v) && fm.fileExists(atPath: m) { return (nil, v, m) }
        return nil
    }

    /// GPT-2's vocab.json (token → id) and merges.txt (one "a b" pair a line, best first, after a
    /// `#version` line).
    public convenience init(vocabFile: String, mergesFile: String) throws {
        let vocab = try Self.vocabulary(try Self.readJSON(vocabFile), source: vocabFile)
        let text = try Self.readText(mergesFile)
        var pairs: [(String, String)] = []
        var lines: [Int] = []
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if line.isEmpty || line.hasPrefix("#version") { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw IOError.corrupt(mergesFile, "line \(n + 1) is not two tokens separated by one space: \"\(line)\"")
            }
            pairs.append((String(parts[0]), String(parts[1])))
            lines.append(n + 1)
        }
        try self.init(
            vocab: vocab, merges: pairs, added: [:], addPrefixSpace: false, source: mergesFile,
            mergeName: { "line \(lines[$0])" },
            description: { "GPT-2 BPE from \(vocabFile) + merges.txt (\($0) ids, end-of-text \($1))" })
    }

    /// A `tokenizers` tokenizer.json whose model is a byte-level BPE: GPT-2's, or the Llama-3,
    /// Qwen2 or SmolLM2 variant (`BPEPreTokenizer` says what each does). A normalizer,
    /// pre-tokenizer, model setting, post-processor or decoder lora-dist does not implement is
    /// refused with its key, never ignored.
    public convenience init(tokenizerJSON path: String) throws {
        guard let root = try Self.readJSON(path) as? [String: Any] else {
            throw IOError.corrupt(path, "not a JSON object")
        }
        func refuse(_ why: String) -> IOError {
            IOError.corrupt(
                path,
                """
                \(why); lora-dist reads byte-level BPE tokenizers only (GPT-2's and the Llama-3, Qwen2 and SmolLM2 \
                variants)
                """
            )
        }
        guard let model = root["model"] as? [String: Any] else { throw IOError.corrupt(path, "no \"model\" object") }
        if let type = model["type"] as? String, type != "BPE" {
            throw refuse("the model is \(type), not BPE (model.type)")
        }
        for k in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let s = model[k] as? String, !s.isEmpty { throw refuse("model.\(k) is \"\(s)\"") }
        }
        if (model["byte_fallback"] as? Bool) == true { throw refuse("model.byte_fallback is set") }
        if let d = model["dropout"], !(d is NSNull) {
            throw refuse("model.dropout is set (BPE dropout makes encoding random)")
        }
        var options = Options()
        options.ignoreMerges = (model["ignore_merges"] as? Bool) == true
        options.preTokenizer = try Self.preTokenizer(root, refuse)
        if let d = root["decoder"], !(d is NSNull), Self.typeName(d) != "ByteLevel" {
            throw refuse("the decoder is \(Self.typeName(d)) (decoder.type), not ByteLevel")
        }
        (options.prefix, options.suffix) = try Self.template(root, refuse)
        guard let vocabObject = model["vocab"] else { throw IOError.corrupt(path, "no model.vocab") }
        let vocab = try Self.vocabulary(vocabObject, source: path + " (model.vocab)")
        guard let list = model["merges"] as? [Any] else { throw IOError.corrupt(path, "model.merges is not a list") }
        var pairs: [(String, String)] = []
        pairs.reserveCapacity(list.count)
        for (k, m) in list.enumerated() {
            if let s = m as? String {
                let p = s.split(separator: " ", omittingEmptySubsequences: false)
                guard p.count == 2, !p[0].isEmpty, !p[1].isEmpty else {
                    throw IOError.corrupt(path, "model.merges[\(k)] is not \"a b\": \"\(s)\"")
                }
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
                throw refuse("added token \"\(content)\" has \(flag) set (added_tokens[\(k)].\(flag))")
            }
            added[content] = id
            // tokenizers' default: special tokens are found in the raw text, others in the normalized text.
            if (t["normalized"] as? Bool) ?? ((t["special"] as? Bool) != true) {
                options.normalizedAdded.insert(content)
            }
        }
        options.endOfText = try Self.endOfText(besides: path, vocab: vocab, added: added)
        let pre = options.preTokenizer
        let plain = pre.isGPT2 && !options.ignoreMerges && options.prefix.isEmpty && options.suffix.isEmpty
        let kind =
            plain ? "GPT-2 BPE" : "byte-level BPE (\(pre.summary)\(options.ignoreMerges ? ", ignore_merges" : ""))"
        try self.init(
            vocab: vocab, merges: pairs, added: added, addPrefixSpace: pre.addPrefixSpace,
            source: path, mergeName: { "model.merges[\($0)]" },
            description: { "\(kind) from \(path) (\($0) ids, end-of-text \($1))" }, options: options)
    }

    /// tokenizer.json's normalizer and pre-tokenizer as a `BPEPreTokenizer`: NFC (alone or in a
    /// Sequence) or none; ByteLevel, or a Sequence of Split (an implemented regex, Isolated) and
    /// Digits steps ending in ByteLevel.
    static func preTokenizer(_ root: [String: Any], _ refuse: (String) -> IOError) throws -> BPEPreTokenizer {
        var p = BPEPreTokenizer()
        for (o, key) in try steps(root["normalizer"], "normalizer", list: "normalizers", refuse) {
            switch typeName(o) {
            case "none": continue
            case "NFC": p.nfc = true
            case let t:
                throw refuse(
                    "the normalizer is \(t) (\(key).type), which lora-dist does not implement (it implements NFC)")
            }
        }
        let pre = try steps(root["pre_tokenizer"], "pre_tokenizer", list: "pretokenizers", refuse)
        for (k, (o, key)) in pre.enumerated() {
            let d = o as? [String: Any] ?? [:]
            switch typeName(o) {
            case "ByteLevel" where k == pre.count - 1:
                // tokenizers' ByteLevel defaults add_prefix_space and use_regex to true when the keys are absent.
                p.addPrefixSpace = (d["add_prefix_space"] as? Bool) ?? true
                p.byteLevelRegex = (d["use_regex"] as? Bool) ?? true
            case "ByteLevel":
                throw refuse(
                    "\(key) is ByteLevel before the last step; lora-dist implements ByteLevel as the last step only")
            case "Split":
                guard let regex = (d["pattern"] as? [String: Any])?["Regex"] as? String else {
                    throw refuse("\(key).pattern is not a Regex")
                }
                guard let known = BPEPreTokenizer.Pattern(rawValue: regex) else {
                    throw refuse(
                        """
                        the Split regex (\(key).pattern.Regex) is not one lora-dist implements (GPT-2's, Llama-3's and \
                        Qwen2's): \"\(regex)\"
                        """
                    )
                }
                let behavior = d["behavior"] as? String ?? "none"
                guard behavior == "Isolated" else { throw refuse("\(key).behavior is \(behavior), not Isolated") }
                if (d["invert"] as? Bool) == true { throw refuse("\(key).invert is set") }
                p.stages.append(.split(known))
            case "Digits":
                p.stages.append(.digits(individual: (d["individual_digits"] as? Bool) == true))
            case let t:
                throw refuse("the pre-tokenizer is \(t) (\(key).type), which lora-dist does not implement")
            }
        }
        guard typeName(pre.last?.0 ?? NSNull()) == "ByteLevel" else {
            throw refuse("the pre-tokenizer does not end in ByteLevel (pre_tokenizer), which a byte-level BPE needs")
        }
        return p
    }

    /// The tokens tokenizer.json's post-processor puts around a text: TemplateProcessing's single
    /// template (alone or in a Sequence); ByteLevel adds none (it moves offsets only).
    static func template(_ root: [String: Any], _ refuse: (String) -> IOError) throws -> (prefix: [Int], suffix: [Int])
    {
        var prefix: [Int] = []
        var suffix: [Int] = []
        for (o, key) in try steps(root["post_processor"], "post_processor", list: "processors", refuse) {
            switch typeName(o) {
            case "none", "ByteLevel": continue
            case "TemplateProcessing":
                let d = o as? [String: Any] ?? [:]
                guard let single = d["single"] as? [Any] else { throw refuse("\(key).single is not a list") }
                let specials = d["special_tokens"] as? [String: Any] ?? [:]
                var seenText = false
                for (i, item) in single.enumerated() {
                    let e = item as? [String: Any] ?? [:]
                    if let s = e["Sequence"] as? [String: Any], s["id"] as? String == "A", !seenText {
                        seenText = true
                    } else if let name = (e["SpecialToken"] as? [String: Any])?["id"] as? String,
                        let raw = (specials[name] as? [String: Any])?["ids"] as? [Any]
                    {
                        let ids = raw.compactMap { $0 as? Int }
                        guard ids.count == raw.count else {
                            throw refuse("\(key).special_tokens[\"\(name)\"].ids are not integers")
                        }
                        if seenText { suffix += ids } else { prefix += ids }
                    } else {
                        throw refuse(
                            "\(key).single[\(i)] is neither a SpecialToken of its special_tokens nor the one sequence A"
                        )
                    }
                }
                guard seenText else { throw refuse("\(key).single has no sequence A") }
            case let t:
                throw refuse("the post-processor \(t) (\(key).type) may add tokens")
            }
        }
        return (prefix, suffix)
    }

    /// A normalizer, pre-tokenizer or post-processor of tokenizer.json with its key; for a
    /// Sequence, its members (under `list`) with theirs.
    static func steps(_ o: Any?, _ key: String, list: String, _ refuse: (String) -> IOError) throws -> [(Any, String)] {
        let o = o ?? NSNull()
        guard typeName(o) == "Sequence" else { return [(o, key)] }
        guard let members = (o as? [String: Any])?[list] as? [Any] else { throw refuse("\(key).\(list) is not a list") }
        return members.enumerated().map { ($1, "\(key).\(list)[\($0)]") }
    }

    /// The end-of-text token of a tokenizer.json: the eos_token of tokenizer_config.json beside it,
    /// as transformers reads it; else the first of <|endoftext|> (GPT-2, Qwen2, SmolLM2),
    /// <|end_of_text|> (Llama-3) and </s> that it has; else <|endoftext|>, added after the last id.
    static func endOfText(besides path: String, vocab: [String: Int], added: [String: Int]) throws -> String {
        let config = (path as NSString).deletingLastPathComponent + "/tokenizer_config.json"
        if FileManager.default.fileExists(atPath: config) {
            guard let o = try readJSON(config) as? [String: Any] else {
                throw IOError.corrupt(config, "not a JSON object")
            }
            // A string, or an added token written out as {"content": ...}.
            if let eos = o["eos_token"] as? String ?? (o["eos_token"] as? [String: Any])?["content"] as? String {
                guard added[eos] != nil || vocab[eos] != nil else {
                    throw IOError.corrupt(config, "eos_token \"\(eos)\" is not a token of \(path)")
                }
                return eos
            }
        }
        return ["<|endoftext|>", "<|end_of_text|>", "</s>"].first { added[$0] != nil || vocab[$0] != nil }
            ?? "<|endoftext|>"
    }

    static func typeName(_ o: Any) -> String {
        if o is NSNull { return "none" }
        return ((o as? [String: Any])?["type"] as? String) ?? "unknown"
    }

    static func vocabulary(_ o: Any, source: String) throws -> [String: Int] {
        guard let d = o as? [String: Any] else {
            throw IOError.corrupt(source, "the vocabulary is not a JSON object of token → id")
        }
        var v: [String: Int] = [:]
        v.reserveCapacity(d.count)
        for (token, id) in d {
            guard let i = id as? Int else { throw IOError.corrupt(source, "the id of \"\(token)\" is not an integer") }
            v[token] = i
        }
        // Ids number the tokens 0, 1, 2, ...: a far larger one is a damaged file (and would size the tables).
        if let top = v.values.max(), top >= 2 * v.count + 1024 {
            throw IOError.corrupt(
                source, "token id \(top) is far beyond the \(v.count) tokens (ids number the tokens from 0)")
        }
        return v
    }

    /// merges.txt's text (BOM and CRLF line ends accepted).
    static func readText(_ path: String) throws -> String {
        try TextFile.read(
            path, emptyHint: "GPT-2's merges.txt holds a #version line and one merge (two tokens and a space) a line")
    }

    static func readJSON(_ path: String) throws -> Any {
        try TextFile.readJSON(path, emptyHint: "expected the tokenizer's JSON")
    }
}
