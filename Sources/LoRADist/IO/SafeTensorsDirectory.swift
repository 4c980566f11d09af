import Foundation

/// The weights of a Hugging Face model directory as `save_pretrained` leaves them: one
/// model.safetensors, or shards (model-00001-of-0000N.safetensors ...) with
/// model.safetensors.index.json, whose `weight_map` names each tensor's file. Every file is mapped
/// and its header checked when the source opens, so a missing or damaged shard is found before
/// anything is allocated; a rank then reads only its shard's bytes. `rename` maps the model's
/// tensor names to the files'.
public struct SafeTensorsDirectorySource: FileWeightSource {
    public static let single = "model.safetensors", indexName = "model.safetensors.index.json"

    public let dir: String
    /// The index's path; nil for a single model.safetensors.
    public let index: String?
    /// The files by name, and each tensor's file (by the files' tensor names).
    private let files: [String: SafeTensorsFile]
    private let fileOf: [String: String]
    public var rename: (String) -> String = { $0 }

    /// Every tensor name the files hold (the files' names).
    public var names: Set<String> { Set(fileOf.keys) }

    /// One safetensors file (a model lora-dist saved, named as transformers names the tensors).
    public init(file path: String) throws {
        let f = try SafeTensorsFile(path: path)
        let name = URL(fileURLWithPath: path).lastPathComponent
        dir = URL(fileURLWithPath: path).deletingLastPathComponent().path
        files = [name: f]
        fileOf = Dictionary(uniqueKeysWithValues: f.infos.keys.map { ($0, name) })
        index = nil
    }

    /// The paths of the weight files, sorted.
    public var paths: [String] { files.values.map(\.path).sorted() }

    public init(dir: String) throws {
        self.dir = dir
        let fm = FileManager.default
        let singlePath = dir + "/" + Self.single
        let indexPath = dir + "/" + Self.indexName
        if fm.fileExists(atPath: singlePath) {
            let f = try SafeTensorsFile(path: singlePath)
            files = [Self.single: f]
            fileOf = Dictionary(uniqueKeysWithValues: f.infos.keys.map { ($0, Self.single) })
            index = nil
            return
        }
        guard fm.fileExists(atPath: indexPath) else {
            throw IOError.cannotRead(
                singlePath,
                """
                no such file, and no \(Self.indexName) beside it: a Hugging Face model directory holds its weights in \
                one of these (save_pretrained writes them; lora-dist reads safetensors only, never pickled weights)
                """
            )
        }
        index = indexPath
        let o = try TextFile.readJSON(
            indexPath, emptyHint: "expected {\"weight_map\": {tensor name: shard file}} as save_pretrained writes it")
        guard let top = o as? [String: Any], let map = top["weight_map"] as? [String: Any] else {
            throw IOError.corrupt(indexPath, "no weight_map object (tensor name → shard file)")
        }
        var fileOf: [String: String] = [:]
        for (tensor, v) in map {
            // A plain file name: the shards sit beside the index, never elsewhere.
            guard let f = v as? String, !f.isEmpty, !f.contains("/"), f != ".", f != ".." else {
                throw IOError.corrupt(
                    indexPath,
                    "weight_map[\"\(tensor)\"] is \(ModelFiles.describe(v)), not the name of a file in \(dir)")
            }
            fileOf[tensor] = f
        }
        var files: [String: SafeTensorsFile] = [:]
        for f in Set(fileOf.values).sorted() {
            let path = dir + "/" + f
            guard fm.fileExists(atPath: path) else {
                let placed = fileOf.filter { $0.value == f }.keys.sorted()
                throw IOError.cannotRead(
                    path,
                    """
                    no such file: \(indexPath) places \(placed.count) tensor\(placed.count == 1 ? "" : "s") in this \
                    shard (\(placed[0])\(placed.count > 1 ? ", ..." : "")); the download is incomplete, fetch the \
                    checkpoint again
                    """
                )
            }
            files[f] = try SafeTensorsFile(path: path)
        }
        for (tensor, f) in fileOf.sorted(by: { $0.key < $1.key }) where files[f]!.infos[tensor] == nil {
            throw ModelError.missingTensor(
                """
                \(dir)/\(f) has no tensor \(tensor), though \(indexPath) places it there; the index and the shards \
                belong to different checkpoints
                """
            )
        }
        self.files = files
        self.fileOf = fileOf
    }

    /// The file holding `name` (a model name) and its name there.
    private func file(_ name: String) throws -> (SafeTensorsFile, String) {
        let t = rename(name)
        guard let f = fileOf[t] else {
            if let index { throw ModelError.missingTensor("tensor \(t) is not in the weight_map of \(index)") }
            throw ModelError.missingTensor("\(dir)/\(Self.single): tensor \(t) is missing")
        }
        return (files[f]!, t)
    }

    public func shape(of name: String) throws -> [Int] {
        let (f, t) = try file(name)
        return try f.info(t).shape
    }

    public func readBlock(_ name: String, rows: Range<Int>, cols: Range<Int>, into dst: UnsafeMutablePointer<Float>)
        throws
    {
        let (f, t) = try file(name)
        try f.readBlock(t, rows: rows, cols: cols, into: dst)
    }

    public func location(of name: String) throws -> (path: String, tensor: String) {
        let (f, t) = try file(name)
        return (f.path, t)
    }
}
