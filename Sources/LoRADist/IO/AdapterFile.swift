import Foundation

/// What identifies a base model: its shape and a fingerprint of its weights (a hash of the
/// checkpoint file, or the seed of a random initialisation).
public struct BaseIdentity: Codable, Equatable, Sendable {
    public var config: GPTConfig
    public var fingerprint: String
    public var source: String
}

/// FNV-1a 64 of a file's bytes, hex.
public func fileFingerprint(_ path: String) throws -> String {
    guard let h = FileHandle(forReadingAtPath: path) else { throw IOError.cannotRead(path, "no such file") }
    defer { try? h.close() }
    var x = FNV1a()
    // 8-byte words, then the bytes after the last whole word (chunks are whole words).
    while let chunk = try h.read(upToCount: 1 << 22), !chunk.isEmpty {
        chunk.withUnsafeBytes { raw in
            let words = raw.count / 8
            let p = raw.baseAddress!
            for i in 0..<words { x.mix(p.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)) }
            for i in (words * 8)..<raw.count { x.mix(UInt64(raw[i])) }
        }
    }
    return x.hex
}

/// A LoRA adapter on disk: A and B of every adapted matrix (nothing of W0) and, as metadata, the
/// LoRA hyper-parameters and the identity of the base it was trained on. One small safetensors
/// file; tensors are `lora.h.<layer>.<target>.A` [r, in] and `.B` [out, r], r the slot's rank (the
/// config's rank and alpha patterns are in its metadata; a file without them has one r).
public enum AdapterFile {
    public static let format = "lora-dist-adapter-v1"

    public static func save(_ lora: LoRAWeights, base: BaseIdentity, to path: String) throws {
        var tensors: [(name: String, shape: [Int], data: [Float])] = []
        for s in lora.slots {
            let k = "lora.h.\(s.layer).\(s.target.rawValue)"
            let r = s.rank
            tensors.append(
                (k + ".A", [r, s.inDim], Array(UnsafeBufferPointer(start: lora.ptr(s.a), count: r * s.inDim))))
            tensors.append(
                (k + ".B", [s.outDim, r], Array(UnsafeBufferPointer(start: lora.ptr(s.b), count: r * s.outDim))))
        }
        let meta = [
            "format": format,
            "lora": try compactJSON(lora.config),
            "base": try compactJSON(base)
        ]
        try SafeTensorsFile.write(path: path, tensors: tensors, metadata: meta)
    }

    /// Reads the LoRA config and base identity of an adapter file. They are checked before anyone
    /// allocates what they describe: a valid GPT-2 shape within `ModelFiles.limits`, a LoRA that
    /// fits it, and exactly as many A/B values in the file as they need.
    public static func header(_ path: String) throws -> (lora: LoRAConfig, base: BaseIdentity) {
        let f = try SafeTensorsFile(path: path)
        if let m = f.metadata["method"],
            [TrainedFile.bottleneckFormat, TrainedFile.bitfitFormat].contains(f.metadata["format"] ?? "")
        {
            throw IOError.unsupported(
                path,
                """
                holds what --method \(m) trained, not a LoRA adapter; this command takes LoRA adapters (generate and \
                evaluate take every method's file)
                """
            )
        }
        guard f.metadata["format"] == format, let l = f.metadata["lora"], let b = f.metadata["base"] else {
            throw IOError.corrupt(path, "not a lora-dist adapter (format metadata missing)")
        }
        let lora: LoRAConfig
        let base: BaseIdentity
        do {
            (lora, base) = (
                try JSONDecoder().decode(LoRAConfig.self, from: Data(l.utf8)),
                try JSONDecoder().decode(BaseIdentity.self, from: Data(b.utf8))
            )
        } catch {
            throw IOError.corrupt(path, "adapter metadata does not decode: \(error)")
        }
        let c = base.config
        do {
            try c.validate()
            for (key, value) in [
                ("n_layer", c.nLayer), ("n_embd", c.nEmbd), ("n_head", c.nHead), ("vocab_size", c.vocabSize),
                ("n_positions", c.nPositions)
            ] {
                if let limit = ModelFiles.limits.first(where: { $0.key == key })?.max, value > limit {
                    throw ModelError.invalidConfig("\(key) \(value) is beyond any GPT-2 (at most \(limit))")
                }
            }
            try lora.validate(for: c)
        } catch {
            throw IOError.corrupt(path, "adapter metadata describes no valid LoRA: \(error)")
        }
        let want = lora.parameterCount(for: c)
        let have = f.infos.values.reduce(0) { $0 + ($1.end - $1.begin) / max(1, $1.dtype.size) }
        guard want == have else {
            throw IOError.corrupt(
                path,
                """
                the file holds \(have) values but its LoRA (r \(lora.rank) on \
                \(lora.targets.map(\.rawValue).joined(separator: ",")), \(c.nLayer) layers, d \(c.nEmbd)) has \(want)
                """
            )
        }
        return (lora, base)
    }

    /// Refuses an adapter trained on another base than `base` (shape or weights differ).
    public static func check(_ path: String, trainedOn id: BaseIdentity, against base: BaseIdentity) throws {
        guard base != id else { return }
        throw IOError.unsupported(
            path,
            """
            the adapter was trained on base \(id.source) (\(id.config.nLayer) layers, d \(id.config.nEmbd), \
            fingerprint \(id.fingerprint)), not on \(base.source) (\(base.config.nLayer) layers, d \
            \(base.config.nEmbd), fingerprint \(base.fingerprint)); pass the --base it was trained on
            """
        )
    }

    /// Loads A and B into `lora` (whose config must match), refusing an adapter made for another
    /// base and tensors holding NaN or Inf.
    public static func load(_ path: String, into lora: LoRAWeights, expecting base: BaseIdentity?) throws {
        let (cfg, id) = try header(path)
        if let base { try check(path, trainedOn: id, against: base) }
        guard cfg == lora.config else {
            throw IOError.corrupt(path, "adapter config \(cfg) does not match the model's \(lora.config)")
        }
        let f = try SafeTensorsFile(path: path)
        for s in lora.slots {
            let k = "lora.h.\(s.layer).\(s.target.rawValue)"
            let r = s.rank
            for (name, off, shape) in [(k + ".A", s.a, [r, s.inDim]), (k + ".B", s.b, [s.outDim, r])] {
                let i = try f.info(name)
                guard i.shape == shape else {
                    throw IOError.corrupt(path, "\(name) has shape \(i.shape), expected \(shape)")
                }
                let v = try f.floats(name)
                try requireFinite(
                    v, tensor: name, file: path, shape: shape,
                    what: "the adapter is damaged (or was saved from a diverged run)")
                lora.ptr(off).update(from: v, count: v.count)
            }
        }
    }
}
