import Foundation

/// Errors of the safetensors reader; each names the file (and tensor) at fault.
public enum SafeTensorsError: Error, CustomStringConvertible, Equatable {
    case unreadable(String, String)
    case tooShort(String)
    case headerTooLarge(String, Int)
    case headerPastEnd(String, Int, Int)
    case badHeader(String, String)
    case unknownDType(String, String, String)
    case sizeMismatch(String, String, String)
    case badOffsets(String, String, String)
    case missing(String, String)

    public var description: String {
        switch self {
        case .unreadable(let p, let why): return "cannot read \(p): \(why)"
        case .tooShort(let p): return "\(p): not a safetensors file (shorter than its 8-byte header length)"
        case .headerTooLarge(let p, let n): return "\(p): header length \(n) exceeds the 100 MB cap"
        case .headerPastEnd(let p, let n, let size):
            return "\(p): header length \(n) runs past the end of the \(size)-byte file"
        case .badHeader(let p, let why): return "\(p): bad header: \(why)"
        case .unknownDType(let p, let t, let d): return "\(p): tensor \(t) has unknown dtype \(d)"
        case .sizeMismatch(let p, let t, let why): return "\(p): tensor \(t): \(why)"
        case .badOffsets(let p, let t, let why): return "\(p): tensor \(t): \(why)"
        case .missing(let p, let t): return "\(p): no tensor named \(t)"
        }
    }
}

/// A safetensors file, memory-mapped and validated before anything is read: header size cap,
/// JSON object, known dtypes, shape × dtype size equal to each byte range, ranges in bounds,
/// non-overlapping and contiguous from 0 to the end of the data, all with checked arithmetic.
public final class SafeTensorsFile {
    public enum DType: String, Sendable {
        case F32, F16, BF16, F64, I64, I32
        var size: Int {
            switch self {
            case .F32, .I32: return 4
            case .F16, .BF16: return 2
            case .F64, .I64: return 8
            }
        }
    }
    public struct Info: Sendable {
        public let dtype: DType
        public let shape: [Int]
        public let begin: Int
        public let end: Int
    }

    public static let headerCap = 100_000_000
    public let path: String
    public let infos: [String: Info]
    public let metadata: [String: String]
    private let base: UnsafeRawPointer
    private let mapped: Int
    private let dataStart: Int

    public var names: [String] { infos.keys.sorted() }

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw SafeTensorsError.unreadable(path, String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SafeTensorsError.unreadable(path, String(cString: strerror(errno))) }
        let size = Int(st.st_size)
        guard size >= 8 else { throw SafeTensorsError.tooShort(path) }
        guard let m = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), m != MAP_FAILED else {
            throw SafeTensorsError.unreadable(path, "mmap: " + String(cString: strerror(errno)))
        }
        let p = UnsafeRawPointer(m)
        var ok = false
        defer { if !ok { munmap(m, size) } }
        let n64 = p.loadUnaligned(as: UInt64.self).littleEndian
        guard n64 <= UInt64(SafeTensorsFile.headerCap) else {
            throw SafeTensorsError.headerTooLarge(path, Int(clamping: n64))
        }
        let n = Int(n64)
        guard n <= size - 8 else { throw SafeTensorsError.headerPastEnd(path, n, size) }
        let json = Data(bytes: p + 8, count: n)
        guard let obj = try? JSONSerialization.jsonObject(with: json), let dict = obj as? [String: Any] else {
            throw SafeTensorsError.badHeader(path, "not a JSON object")
        }
        var infos: [String: Info] = [:]
        var meta: [String: String] = [:]
        for (name, v) in dict {
            if name == "__metadata__" {
                guard let md = v as? [String: Any] else {
                    throw SafeTensorsError.badHeader(path, "__metadata__ is not an object")
                }
                for (k, val) in md {
                    guard let s = val as? String else {
                        throw SafeTensorsError.badHeader(path, "__metadata__.\(k) is not a string")
                    }
                    meta[k] = s
                }
                continue
            }
            guard let t = v as? [String: Any], let ds = t["dtype"] as? String, let shapeAny = t["shape"] as? [Any],
                let offAny = t["data_offsets"] as? [Any], offAny.count == 2
            else {
                throw SafeTensorsError.badHeader(path, "entry \(name) lacks dtype, shape or data_offsets")
            }
            guard let dt = DType(rawValue: ds) else { throw SafeTensorsError.unknownDType(path, name, ds) }
            var shape: [Int] = []
            for s in shapeAny {
                guard let i = (s as? NSNumber)?.intValue, i >= 0, (s as? NSNumber)?.doubleValue == Double(i) else {
                    throw SafeTensorsError.badHeader(path, "entry \(name) has a bad shape \(shapeAny)")
                }
                shape.append(i)
            }
            guard let b = (offAny[0] as? NSNumber)?.intValue, let e = (offAny[1] as? NSNumber)?.intValue, b >= 0, e >= b
            else {
                throw SafeTensorsError.badOffsets(
                    path, name, "data_offsets \(offAny) are not an ordered pair of byte offsets")
            }
            var count = 1
            for s in shape {
                let (m, o) = count.multipliedReportingOverflow(by: s)
                guard !o else { throw SafeTensorsError.sizeMismatch(path, name, "shape \(shape) overflows") }
                count = m
            }
            let (bytes, o) = count.multipliedReportingOverflow(by: dt.size)
            guard !o, bytes == e - b else {
                throw SafeTensorsError.sizeMismatch(
                    path, name, "shape \(shape) × \(dt.size) bytes ≠ byte range \(b)..<\(e)")
            }
            infos[name] = Info(dtype: dt, shape: shape, begin: b, end: e)
        }
        let dataSize = size - 8 - n
        // Ranges must tile 0 ..< dataSize exactly: sorted, each starting where the previous ended.
        var cursor = 0
        for (name, i) in infos.sorted(by: { ($0.value.begin, $0.value.end) < ($1.value.begin, $1.value.end) }) {
            if i.begin < cursor {
                throw SafeTensorsError.badOffsets(
                    path, name, "byte range \(i.begin)..<\(i.end) overlaps another tensor")
            }
            if i.begin > cursor {
                throw SafeTensorsError.badOffsets(
                    path, name, "gap before byte \(i.begin) (previous tensor ends at \(cursor))")
            }
            if i.end > dataSize {
                throw SafeTensorsError.badOffsets(
                    path, name, "byte range \(i.begin)..<\(i.end) runs past the \(dataSize) data bytes")
            }
            cursor = i.end
        }
        guard cursor == dataSize else {
            throw SafeTensorsError.badOffsets(
                path, "(file)", "\(dataSize - cursor) trailing bytes after the last tensor")
        }
        self.infos = infos
        metadata = meta
        base = p
        mapped = size
        dataStart = 8 + n
        ok = true
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), mapped) }

    public func info(_ name: String) throws -> Info {
        guard let i = infos[name] else { throw SafeTensorsError.missing(path, name) }
        return i
    }

    @inline(__always) private func element(_ i: Info, _ k: Int) -> Float {
        let p = base + dataStart + i.begin
        switch i.dtype {
        case .F32: return Float(bitPattern: p.loadUnaligned(fromByteOffset: 4 * k, as: UInt32.self).littleEndian)
        case .F64:
            return Float(Double(bitPattern: p.loadUnaligned(fromByteOffset: 8 * k, as: UInt64.self).littleEndian))
        case .F16:
            return Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self).littleEndian))
        case .BF16:
            return Float(bitPattern: UInt32(p.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self).littleEndian) << 16)
        case .I64: return Float(Int64(littleEndian: p.loadUnaligned(fromByteOffset: 8 * k, as: Int64.self)))
        case .I32: return Float(Int32(littleEndian: p.loadUnaligned(fromByteOffset: 4 * k, as: Int32.self)))
        }
    }

    /// The whole tensor as Floats (F16, BF16, F64 and integers converted).
    public func floats(_ name: String) throws -> [Float] {
        let i = try info(name)
        let n = i.shape.reduce(1, *)
        return (0..<n).map { element(i, $0) }
    }

    /// Integer tensors (I64, I32) as Int64.
    public func int64s(_ name: String) throws -> [Int64] {
        let i = try info(name)
        let n = i.shape.reduce(1, *)
        let p = base + dataStart + i.begin
        switch i.dtype {
        case .I64: return (0..<n).map { Int64(littleEndian: p.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
        case .I32:
            return (0..<n).map { Int64(Int32(littleEndian: p.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
        default: throw SafeTensorsError.sizeMismatch(path, name, "dtype \(i.dtype) is not an integer type")
        }
    }

    /// Block rows × cols of a 2-D tensor (1-D: rows = 0..<1, cols select elements), densely into dst;
    /// only those bytes of the mapping are touched.
    public func readBlock(_ name: String, rows: Range<Int>, cols: Range<Int>, into dst: UnsafeMutablePointer<Float>)
        throws
    {
        let i = try info(name)
        let (nr, nc) = i.shape.count == 2 ? (i.shape[0], i.shape[1]) : (1, i.shape.reduce(1, *))
        guard rows.lowerBound >= 0, rows.upperBound <= nr, cols.lowerBound >= 0, cols.upperBound <= nc else {
            throw SafeTensorsError.sizeMismatch(path, name, "block \(rows)×\(cols) outside shape \(i.shape)")
        }
        var k = 0
        for r in rows {
            for c in cols {
                dst[k] = element(i, r * nc + c)
                k += 1
            }
        }
    }

    /// Writes F32 tensors (keys in sorted order, header padded with spaces to 8 bytes) atomically.
    public static func write(
        path: String, tensors: [(name: String, shape: [Int], data: [Float])], metadata: [String: String] = [:]
    ) throws {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        let sorted = tensors.sorted { $0.name < $1.name }
        for t in sorted {
            guard t.shape.reduce(1, *) == t.data.count else {
                throw IOError.cannotWrite(path, "tensor \(t.name) has \(t.data.count) values for shape \(t.shape)")
            }
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.data.count]]
            offset += 4 * t.data.count
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        var out = Data(capacity: 8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(json)
        for t in sorted {
            t.data.withUnsafeBufferPointer { b in
                b.withMemoryRebound(to: UInt32.self) { u in
                    for v in u { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
                }
            }
        }
        try writeFileAtomically(out, to: path)
    }
}

/// A safetensors file as the source of a model's weights: each rank reads only its shard's bytes.
public struct SafeTensorsWeightSource: FileWeightSource {
    public let file: SafeTensorsFile
    /// Maps the model's tensor names to the file's (e.g. adds a "transformer." prefix).
    public var rename: (String) -> String

    public init(file: SafeTensorsFile, rename: @escaping (String) -> String = { $0 }) {
        self.file = file
        self.rename = rename
    }

    public func shape(of name: String) throws -> [Int] {
        guard let i = file.infos[rename(name)] else {
            throw ModelError.missingTensor("\(file.path): tensor \(rename(name)) is missing")
        }
        return i.shape
    }

    public func readBlock(_ name: String, rows: Range<Int>, cols: Range<Int>, into dst: UnsafeMutablePointer<Float>)
        throws
    {
        try file.readBlock(rename(name), rows: rows, cols: cols, into: dst)
    }

    public func location(of name: String) throws -> (path: String, tensor: String) { (file.path, rename(name)) }
}
