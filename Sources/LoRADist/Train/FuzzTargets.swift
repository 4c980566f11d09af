import Foundation

/// The readers of files lora-dist takes from users, as fuzz targets: each gets arbitrary bytes,
/// may refuse them with an error (that is fine), and must otherwise return something consistent,
/// checked here with preconditions (a violation is a crash the fuzzer reports). Run by
/// `lora-dist-fuzz` under libFuzzer (launch/fuzz) and by the tests over mutated real files.
public enum FuzzTargets {
    public static let names = [
        "safetensors", "config", "peft-config", "peft-config-llama", "tokenizer-json", "vocab-merges", "jsonl",
        "adapter",
        "checkpoint"
    ]

    /// A scratch directory for the files the readers open (in memory when /dev/shm exists).
    nonisolated(unsafe) static var scratch: String = {
        let root = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let d = root + "/lora-dist-fuzz-\(getpid())"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()

    static func file(_ name: String, _ bytes: Data) -> String {
        let p = scratch + "/" + name
        FileManager.default.createFile(atPath: p, contents: bytes)
        return p
    }

    /// Runs target `name` on `data`. Returns true if the input was accepted, false if it was refused
    /// with an error; traps if an accepted input is inconsistent.
    @discardableResult
    public static func run(_ name: String, _ data: Data) -> Bool {
        do {
            switch name {
            case "safetensors": try safetensors(data)
            case "config": try config(data)
            case "peft-config": try peftConfig(data, model: peftModel, in: "peft")
            case "peft-config-llama": try peftConfig(data, model: peftLlamaModel, in: "peft-llama")
            case "tokenizer-json": try tokenizerJSON(data)
            case "vocab-merges": try vocabMerges(data)
            case "jsonl": try jsonl(data)
            case "adapter": try adapter(data)
            case "checkpoint": try checkpoint(data)
            default: preconditionFailure("unknown fuzz target \(name); targets: \(names.joined(separator: ", "))")
            }
            return true
        } catch {
            return false
        }
    }

    /// Safetensors header and data: every tensor lies inside the data, its shape × dtype size is its
    /// byte range, the ranges tile the data, and every value reads back.
    static func safetensors(_ data: Data) throws {
        let f = try SafeTensorsFile(path: file("t.safetensors", data))
        let n = data.count
        precondition(n >= 8)
        let header = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian })
        let dataBytes = n - 8 - header
        var covered = 0
        for name in f.names {
            let i = try f.info(name)
            let count = i.shape.reduce(1, *)
            precondition(i.begin >= 0 && i.begin <= i.end && i.end <= dataBytes, "tensor \(name) outside the data")
            precondition(count * i.dtype.size == i.end - i.begin, "tensor \(name): shape × dtype ≠ bytes")
            covered += i.end - i.begin
            let read = i.dtype == .I64 || i.dtype == .I32 ? try f.int64s(name).count : try f.floats(name).count
            precondition(read == count, "tensor \(name): \(read) values read, \(count) in its shape")
            if i.shape.count == 2 && count > 0 {
                var one: Float = 0
                try f.readBlock(
                    name, rows: (i.shape[0] - 1)..<i.shape[0], cols: (i.shape[1] - 1)..<i.shape[1], into: &one)
            }
        }
        precondition(covered == dataBytes, "tensors do not tile the data")
    }

    /// config.json: an accepted shape is valid, within the limits, and reads back the same from
    /// the config.json lora-dist writes for it.
    static func config(_ data: Data) throws {
        let c = try ModelFiles.parse(data, source: "config.json")
        try c.validate()
        for (key, value) in [
            ("n_layer", c.nLayer), ("n_embd", c.nEmbd), ("n_head", c.nHead), ("vocab_size", c.vocabSize),
            ("n_positions", c.nPositions)
        ] {
            precondition(
                value >= 1 && value <= ModelFiles.limits.first { $0.key == key }!.max, "\(key) \(value) accepted")
        }
        let again = try ModelFiles.parse(
            try JSONSerialization.data(withJSONObject: ModelFiles.hfConfigJSON(c)), source: "again")
        precondition(again == c, "config.json does not round-trip: \(c) vs \(again)")
    }

    /// Small models and a PEFT adapter for each, saved once: the fuzzed adapter_config.json goes
    /// beside it. GPT-2 (PEFT's fused c_attn), and the Llama family (one module a target, grouped
    /// key/value heads, per-module ranks).
    static let peftModel = GPTConfig(nLayer: 2, nEmbd: 8, nHead: 2, vocabSize: 16, nPositions: 8)
    static let peftLlamaModel = GPTConfig.llama(
        nLayer: 2, nEmbd: 8, nHead: 2, nKVHead: 1, ffn: 12, vocabSize: 16, nPositions: 8)
    nonisolated(unsafe) static var peftWeightsWritten: Set<String> = []

    /// adapter_config.json of a PEFT adapter: an accepted one gives every target A [r, in] and B
    /// [out, r] at its slot's rank.
    static func peftConfig(_ data: Data, model: GPTConfig, in name: String) throws {
        let dir = scratch + "/" + name
        if !peftWeightsWritten.contains(name) {
            let patterns = model.family == .gpt2 ? nil : ["gate_proj": 3]
            let l = LoRAWeights(
                config: LoRAConfig(
                    rank: 2, alpha: 4, targets: LoRATarget.available(in: model.family), rankPattern: patterns),
                model: model)
            l.initialize(seed: 1)
            try PEFTAdapter.save(l, to: dir, baseModel: nil)
            peftWeightsWritten.insert(name)
        }
        FileManager.default.createFile(atPath: dir + "/adapter_config.json", contents: data)
        let p = try PEFTAdapter.load(dir: dir, model: model)
        try p.config.validate(for: model)
        for (key, t) in p.tensors {
            let parts = key.split(separator: ".")
            let target = LoRATarget(rawValue: String(parts[1]))!
            let r = p.config.slot(layer: Int(parts[0])!, target: target, family: model.family).rank
            precondition(
                t.a.count == r * target.inDim(model) && t.b.count == target.outDim(model) * r,
                "\(key) has the wrong size")
        }
    }

    /// Checks a tokenizer that loaded: end-of-text and every id of a few texts (with and without
    /// the post-processor's tokens) within its vocabulary.
    static func checkTokenizer(_ t: GPT2Tokenizer) {
        precondition(
            t.eot >= 0 && Int(t.eot) < t.vocabSize, "end-of-text \(t.eot) outside the vocabulary \(t.vocabSize)")
        for text in [
            "", "hello world", " the  end\n\n", "naïve café 😀 ½", "<|endoftext|>x<|endoftext|>", "aaaa bbbb",
            "IT'S 'ſ x 12345\r\n\r\n  y", "cafe\u{301} \u{2126} \u{1100}\u{1161}", "<|end_of_text|><|im_start|>"
        ] {
            for special in [false, true] {
                let ids = t.encode(text, addSpecialTokens: special)
                precondition(ids.allSatisfy { $0 >= 0 && Int($0) < t.vocabSize }, "an id outside the vocabulary")
                _ = t.decode(ids)
            }
        }
    }

    static func tokenizerJSON(_ data: Data) throws {
        checkTokenizer(try GPT2Tokenizer(tokenizerJSON: file("tokenizer.json", data)))
    }

    /// vocab.json, a NUL byte, merges.txt.
    static func vocabMerges(_ data: Data) throws {
        let cut = data.firstIndex(of: 0) ?? data.endIndex
        let v = file("vocab.json", data[..<cut])
        let m = file("merges.txt", cut < data.endIndex ? data[(cut + 1)...] : Data())
        checkTokenizer(try GPT2Tokenizer(vocabFile: v, mergesFile: m))
    }

    /// JSONL examples: no more than the lines, and their byte tokens within the byte vocabulary.
    static func jsonl(_ data: Data) throws {
        let ex = try JSONLines.read(file("train.jsonl", data))
        precondition(ex.count <= data.filter { $0 == 0x0A }.count + 1)
        let d = try TokenDataset(examples: ex, tokenizer: ByteTokenizer(), seq: 64, source: "train.jsonl")
        precondition(d.largestToken < 257 && d.examples.allSatisfy { $0.tokens.count <= 65 })
    }

    /// An adapter file: an accepted header describes a LoRA the file holds exactly, and loads.
    static func adapter(_ data: Data) throws {
        let p = file("adapter.safetensors", data)
        let (cfg, base) = try AdapterFile.header(p)
        let l = LoRAWeights(config: cfg, model: base.config)
        try AdapterFile.load(p, into: l, expecting: nil)
        precondition(l.arena.buffer.allSatisfy { $0.isFinite }, "a loaded adapter holds NaN or Inf")
    }

    /// A checkpoint file of 16 trainable values.
    static func checkpoint(_ data: Data) throws {
        let c = try Checkpoint.read(file("rank-0.safetensors", data), count: 16, fingerprint: nil)
        precondition(c.params.count == 16 && c.m.count == 16 && c.v.count == 16)
    }
}
