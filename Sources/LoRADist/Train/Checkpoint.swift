import Foundation

/// Errors of checkpoints; each names the directory or file and what is wrong with it.
public enum CheckpointError: Error, CustomStringConvertible {
    case notFound(String)
    case notACheckpoint(String, String)
    case badChecksum(String)
    case incompatible(String, String)

    public var description: String {
        switch self {
        case .notFound(let p): return "no checkpoint found at \(p)"
        case .notACheckpoint(let p, let why): return "\(p) is not a valid checkpoint: \(why)"
        case .badChecksum(let p): return "\(p) fails its checksum: the file is corrupt (refusing to resume from it)"
        case .incompatible(let p, let why): return "cannot resume from \(p): \(why)"
        }
    }
}

/// What a checkpoint restores besides tensors.
public struct CheckpointState: Codable, Equatable, Sendable {
    public var step: Int
    public var loader: LoaderPosition
    /// A fingerprint of everything that must match to continue the same run: method, model shape,
    /// base weights, LoRA/adapter config, optimizer and schedule settings, data source, grid.
    public var fingerprint: String
    public var world: Int
    public var tp: Int
    /// The options the fingerprint covers, each with its value, to name the ones a refused resume
    /// changed (absent in checkpoints written before they were recorded).
    public var settings: [RunSetting]? = nil
}

/// One option of a run as a checkpoint records it: `--lora-rank` and `8`.
public struct RunSetting: Codable, Equatable, Sendable {
    public var option: String
    public var value: String

    public init(_ option: String, _ value: String) {
        self.option = option
        self.value = value
    }

    /// The options whose values differ between `old` (a checkpoint's) and `new` (this run's), in
    /// the order this run lists them, then those only the checkpoint has.
    public static func differences(old: [RunSetting], new: [RunSetting]) -> [(
        option: String, old: String?, new: String?
    )] {
        var out: [(option: String, old: String?, new: String?)] = []
        for n in new {
            let o = old.first { $0.option == n.option }?.value
            if o != n.value { out.append((n.option, o, n.value)) }
        }
        for o in old where !new.contains(where: { $0.option == o.option }) { out.append((o.option, o.value, nil)) }
        return out
    }

    /// "the checkpoint was written with --lora-rank 8, this run has --lora-rank 4; --lr 0.003 vs 0.002",
    /// nil when no recorded option differs.
    public static func describeDifferences(old: [RunSetting], new: [RunSetting]) -> String? {
        let d = differences(old: old, new: new)
        guard let first = d.first else { return nil }
        func v(_ s: String?) -> String { s ?? "(not set)" }
        var parts = [
            """
            the checkpoint was written with \(first.option) \(v(first.old)), this run has \(first.option) \
            \(v(first.new))
            """
        ]
        parts += d.dropFirst().map { "\($0.option) \(v($0.old)) vs \(v($0.new))" }
        return parts.joined(separator: "; ")
    }
}

/// Training checkpoints: OUT/checkpoints/step-NNNNNNNN/ holding, per rank that owns distinct
/// state, `rank-R.safetensors` with the trainable tensors and AdamW moments, a checksum of their
/// bytes and the state as metadata. LoRA and replicated adapters are identical on every rank, so
/// rank 0 writes the only file; full fine-tuning and sharded adapters write one file per TP rank
/// of replica 0. Each file is written atomically (temp, fsync, rename, fsync dir); the directory
/// is complete once its MANIFEST (written last, atomically) exists.
public enum Checkpoint {
    public static let format = "lora-dist-checkpoint-v1"

    public static func dir(_ out: String, step: Int) -> String {
        out + "/checkpoints/" + "step-" + String(repeating: "0", count: max(0, 8 - String(step).count)) + String(step)
    }

    /// FNV-1a 64 over the raw bits of the tensors, in order.
    static func checksum(_ arrays: [[Float]]) -> String {
        var h = FNV1a()
        for a in arrays { for v in a { h.mix(v) } }
        return h.hex
    }

    /// Which ranks write a file: those holding distinct trainable state (one replica's TP group,
    /// or rank 0 alone when the state is replicated).
    public static func writes(grid: ProcessGrid, replicated: Bool) -> Bool {
        replicated ? grid.world.rank == 0 : grid.replica == 0
    }

    /// Saves this rank's part (if it writes one), then rank 0 writes the manifest after everyone
    /// has finished, and prunes all but the newest `keep` checkpoints. Every step is agreed on by
    /// all ranks (`Communicator.agree`): a write that fails on any rank (a full disk, an I/O error)
    /// makes every rank throw the same error naming the file, the incomplete directory is removed,
    /// and older checkpoints stay as they were (pruning happens only after a complete one).
    public static func save(
        out: String, state: CheckpointState, params: UnsafePointer<Float>, count: Int,
        optimizer: AdamW, grid: ProcessGrid, replicated: Bool, keep: Int
    ) throws {
        let d = dir(out, step: state.step)
        let world = grid.world
        do {
            try Collective.agree(over: world, at: .checkpoint) {
                if world.rank == 0 {
                    do { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) } catch {
                        throw IOError.cannotWrite(d, (error as NSError).localizedDescription)
                    }
                }
            }
            try Collective.agree(over: world, at: .checkpoint) {
                guard writes(grid: grid, replicated: replicated) else { return }
                let p = Array(UnsafeBufferPointer(start: params, count: count))
                let m = Array(optimizer.m.buffer)
                let v = Array(optimizer.v.buffer)
                var meta = ["format": format, "checksum": checksum([p, m, v]), "adam_t": String(optimizer.t)]
                meta["state"] = try compactJSON(state)
                try SafeTensorsFile.write(
                    path: d + "/rank-\(replicated ? 0 : grid.tp.rank).safetensors",
                    tensors: [("params", [count], p), ("adam.m", [count], m), ("adam.v", [count], v)], metadata: meta)
            }
            try Collective.agree(over: world, at: .checkpoint) {
                guard world.rank == 0 else { return }
                let files = replicated ? 1 : grid.tpDegree
                try writeFileAtomically(
                    Data("{\"format\":\"\(format)\",\"step\":\(state.step),\"files\":\(files)}\n".utf8),
                    to: d + "/MANIFEST")
                // Keep the newest `keep` complete checkpoints.
                let all = completeCheckpoints(out)
                if keep > 0 && all.count > keep {
                    for old in all.dropLast(keep) { try? FileManager.default.removeItem(atPath: old) }
                }
            }
        } catch let e as AgreedFailure {
            // An incomplete checkpoint is never used (no MANIFEST); remove it to give back its space.
            if world.rank == 0 && !FileManager.default.fileExists(atPath: d + "/MANIFEST") {
                try? FileManager.default.removeItem(atPath: d)
            }
            throw e
        }
    }

    /// Complete checkpoint directories under out/checkpoints, oldest first.
    public static func completeCheckpoints(_ out: String) -> [String] {
        let root = out + "/checkpoints"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.filter { $0.hasPrefix("step-") }.sorted()
            .map { root + "/" + $0 }
            .filter { FileManager.default.fileExists(atPath: $0 + "/MANIFEST") }
    }

    /// Resolves --resume: "latest" (the newest complete checkpoint under out) or a directory.
    public static func resolve(_ spec: String, out: String) throws -> String {
        if spec == "latest" {
            guard let d = completeCheckpoints(out).last else {
                throw CheckpointError.notFound(out + "/checkpoints (--resume latest)")
            }
            return d
        }
        guard FileManager.default.fileExists(atPath: spec + "/MANIFEST") else {
            if FileManager.default.fileExists(atPath: spec) {
                throw CheckpointError.notACheckpoint(spec, "no MANIFEST (an interrupted write?)")
            }
            throw CheckpointError.notFound(spec)
        }
        return spec
    }

    /// The sequence length checkpoint directory `d` recorded among its settings (`--seq`), nil when
    /// it recorded none or cannot be read (resuming it then reports why).
    public static func recordedSeq(_ d: String) -> Int? {
        guard let f = try? SafeTensorsFile(path: d + "/rank-0.safetensors"), let json = f.metadata["state"],
            let state = try? JSONDecoder().decode(CheckpointState.self, from: Data(json.utf8))
        else { return nil }
        return state.settings?.first { $0.option == "--seq" }.flatMap { Int($0.value) }
    }

    /// Loads this rank's part into params and the optimizer, verifying format, checksum, shapes
    /// and the run fingerprint. Returns the saved state.
    public static func load(
        _ d: String, params: UnsafeMutablePointer<Float>, count: Int, optimizer: AdamW, grid: ProcessGrid,
        replicated: Bool, fingerprint: String, settings: [RunSetting]? = nil
    ) throws -> CheckpointState {
        let path = d + "/rank-\(replicated ? 0 : grid.tp.rank).safetensors"
        guard FileManager.default.fileExists(atPath: path) else {
            throw CheckpointError.notACheckpoint(
                d,
                """
                \(URL(fileURLWithPath: path).lastPathComponent) is missing (was it written by a run with another --tp?)
                """
            )
        }
        let c = try read(path, count: count, fingerprint: fingerprint, settings: settings, dir: d)
        params.update(from: c.params, count: count)
        optimizer.m.base.update(from: c.m, count: count)
        optimizer.v.base.update(from: c.v, count: count)
        optimizer.t = c.t
        return c.state
    }

    /// One rank's checkpoint file, checked: format, state, fingerprint (when given; a mismatch names
    /// each option that differs from `settings` when the file recorded its own), shapes ([count]
    /// each) and checksum.
    public static func read(
        _ path: String, count: Int, fingerprint: String?, settings: [RunSetting]? = nil, dir: String? = nil
    )
        throws -> (state: CheckpointState, params: [Float], m: [Float], v: [Float], t: Int)
    {
        let f: SafeTensorsFile
        do { f = try SafeTensorsFile(path: path) } catch { throw CheckpointError.notACheckpoint(path, "\(error)") }
        guard f.metadata["format"] == format, let stateJSON = f.metadata["state"], let sum = f.metadata["checksum"],
            let t = Int(f.metadata["adam_t"] ?? "")
        else {
            throw CheckpointError.notACheckpoint(path, "wrong magic: no \(format) metadata")
        }
        let state: CheckpointState
        do { state = try JSONDecoder().decode(CheckpointState.self, from: Data(stateJSON.utf8)) } catch {
            throw CheckpointError.notACheckpoint(path, "state metadata does not decode")
        }
        if let fingerprint, state.fingerprint != fingerprint {
            if let old = state.settings, let new = settings, let d = RunSetting.describeDifferences(old: old, new: new)
            {
                throw CheckpointError.incompatible(dir ?? path, "it belongs to another configuration: \(d)")
            }
            throw CheckpointError.incompatible(
                dir ?? path,
                """
                it belongs to another configuration or base model (fingerprint \(state.fingerprint), this run \
                \(fingerprint))
                """
            )
        }
        for name in ["params", "adam.m", "adam.v"] {
            let s: [Int]
            do { s = try f.info(name).shape } catch { throw CheckpointError.notACheckpoint(path, "no tensor \(name)") }
            guard s == [count] else {
                throw CheckpointError.incompatible(path, "tensor \(name) has shape \(s), this run needs [\(count)]")
            }
        }
        let p = try f.floats("params")
        let m = try f.floats("adam.m")
        let v = try f.floats("adam.v")
        guard checksum([p, m, v]) == sum else { throw CheckpointError.badChecksum(path) }
        return (state, p, m, v, t)
    }
}
