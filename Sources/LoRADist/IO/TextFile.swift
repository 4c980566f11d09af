import Foundation

/// Reading the text files people have: UTF-8 with or without a byte-order mark (Windows editors
/// write one), LF or CRLF line ends. Errors name the file, and for bytes that are not UTF-8 the
/// line and column, and say what to do.
public enum TextFile {
    /// The file's bytes with a leading UTF-8 BOM dropped and every CR of a CRLF removed; throws
    /// naming the file when it is missing, unreadable or (unless `allowEmpty`) empty, where
    /// `emptyHint` says what the file should hold.
    public static func bytes(_ path: String, allowEmpty: Bool = false, emptyHint: String = "") throws -> [UInt8] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw IOError.cannotRead(path, "no such file")
        }
        guard !isDir.boolValue else { throw IOError.cannotRead(path, "it is a directory, not a file") }
        var b = try readWholeFile(path)
        if b.starts(with: [0xEF, 0xBB, 0xBF]) { b.removeFirst(3) }
        if b.contains(0x0D) {
            var out: [UInt8] = []
            out.reserveCapacity(b.count)
            for (i, x) in b.enumerated() where !(x == 0x0D && i + 1 < b.count && b[i + 1] == 0x0A) { out.append(x) }
            b = out
        }
        if !allowEmpty && b.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x09 }) {
            throw IOError.empty(path, emptyHint)
        }
        return b
    }

    /// A file's bytes with read(2). (FileManager.contents(atPath:) leaks its buffer for some
    /// files in this Foundation; the fuzzer found it.)
    public static func readWholeFile(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw IOError.cannotRead(path, String(cString: strerror(errno))) }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw IOError.cannotRead(path, String(cString: strerror(errno))) }
            if n == 0 { return out }
            out.append(contentsOf: chunk[0..<n])
        }
    }

    /// The whole file as text (BOM dropped, CRLF as LF), refusing bytes that are not UTF-8 with
    /// their line and column.
    public static func read(_ path: String, allowEmpty: Bool = false, emptyHint: String = "") throws -> String {
        try decode(try bytes(path, allowEmpty: allowEmpty, emptyHint: emptyHint), path: path)
    }

    /// The file's lines (numbered from 1, without their line ends), each checked as UTF-8.
    public static func lines(_ path: String, allowEmpty: Bool = false, emptyHint: String = "") throws -> [(
        number: Int, text: String
    )] {
        let b = try bytes(path, allowEmpty: allowEmpty, emptyHint: emptyHint)
        _ = try decode(b, path: path)
        return b.split(separator: 0x0A, omittingEmptySubsequences: false).enumerated().map { (i, l) in
            (i + 1, String(decoding: l, as: UTF8.self))
        }
    }

    /// A JSON file (BOM and CRLF accepted); errors name the file and, where the parser says, the position.
    public static func readJSON(_ path: String, emptyHint: String = "") throws -> Any {
        let b = try bytes(path, emptyHint: emptyHint)
        _ = try decode(b, path: path)
        do { return try JSONSerialization.jsonObject(with: Data(b), options: [.fragmentsAllowed]) } catch {
            let detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String
            throw IOError.corrupt(path, "not valid JSON" + (detail.map { " (\($0))" } ?? ""))
        }
    }

    /// `b` as a String, or an error naming the line and column of the first byte that is not UTF-8.
    static func decode(_ b: [UInt8], path: String) throws -> String {
        if let bad = firstInvalidUTF8(b) {
            let line = b[..<bad].reduce(1) { $0 + ($1 == 0x0A ? 1 : 0) }
            let col = bad - (b[..<bad].lastIndex(of: 0x0A).map { $0 + 1 } ?? 0) + 1
            throw IOError.notUTF8(path, line: line, column: col, byte: b[bad])
        }
        return String(decoding: b, as: UTF8.self)
    }

    /// Offset of the first byte that does not start or continue a valid UTF-8 sequence; nil if all do.
    public static func firstInvalidUTF8(_ b: [UInt8]) -> Int? {
        var it = b.makeIterator()
        var decoder = Unicode.UTF8()
        var offset = 0
        while true {
            switch decoder.decode(&it) {
            case .scalarValue(let s): offset += Unicode.UTF8.width(s)
            case .emptyInput: return nil
            case .error: return offset
            }
        }
    }
}
