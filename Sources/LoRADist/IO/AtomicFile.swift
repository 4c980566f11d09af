import Foundation

/// Errors of reading and writing files; messages name the path.
public enum IOError: Error, CustomStringConvertible {
    case cannotWrite(String, String)
    case cannotRead(String, String)
    case corrupt(String, String)
    /// Well-formed, but asks for something lora-dist does not compute (it would load into the wrong math).
    case unsupported(String, String)
    /// Nothing in it; the hint says what it should hold.
    case empty(String, String)
    /// Bytes that are not UTF-8 text, at this line and column (1-based, in bytes).
    case notUTF8(String, line: Int, column: Int, byte: UInt8)

    public var description: String {
        switch self {
        case .cannotWrite(let p, let why): return "cannot write \(p): \(why)"
        case .cannotRead(let p, let why): return "cannot read \(p): \(why)"
        case .corrupt(let p, let why): return "\(p) is corrupt: \(why)"
        case .unsupported(let p, let why): return "\(p) cannot be used: \(why)"
        case .empty(let p, let hint): return "\(p) is empty" + (hint.isEmpty ? "" : ": \(hint)")
        case .notUTF8(let p, let line, let column, let byte):
            return
                """
                \(p) line \(line), column \(column): byte 0x\(String(byte, radix: 16, uppercase: true)) is not UTF-8 \
                text; save the file as UTF-8 (with or without a BOM)
                """
        }
    }
}

/// Writes a whole file so that a reader sees either the old file or the complete new one, never a
/// part: temporary file in the same directory, fsync, rename over the target, fsync the directory.
public func writeFileAtomically(_ data: Data, to path: String) throws {
    let url = URL(fileURLWithPath: path)
    let dir = url.deletingLastPathComponent().path
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
        throw IOError.cannotWrite(path, "directory \(dir) does not exist")
    }
    let tmp = dir + "/." + url.lastPathComponent + ".tmp-\(getpid())"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw IOError.cannotWrite(path, String(cString: strerror(errno))) }
    var ok = true
    var why = ""
    data.withUnsafeBytes { raw in
        var off = 0
        while off < raw.count {
            let n = write(fd, raw.baseAddress! + off, raw.count - off)
            if n <= 0 {
                ok = false
                why = String(cString: strerror(errno))
                break
            }
            off += n
        }
    }
    if ok && fsync(fd) != 0 {
        ok = false
        why = String(cString: strerror(errno))
    }
    close(fd)
    guard ok else {
        unlink(tmp)
        throw IOError.cannotWrite(path, why)
    }
    guard rename(tmp, path) == 0 else {
        let e = String(cString: strerror(errno))
        unlink(tmp)
        throw IOError.cannotWrite(path, e)
    }
    let dfd = open(dir, O_RDONLY)
    if dfd >= 0 {
        fsync(dfd)
        close(dfd)
    }
}

/// A file written a line at a time (metrics.jsonl) with write(2): a full disk or an I/O error is an
/// error naming the file, never a crash, and a line that did not fit is cut off again so the file
/// holds whole lines only.
public final class AppendFile {
    public let path: String
    private var fd: Int32

    public init(path: String) throws {
        self.path = path
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0o644)
        guard fd >= 0 else { throw IOError.cannotWrite(path, String(cString: strerror(errno))) }
    }

    public func append(_ text: String) throws {
        guard fd >= 0 else { throw IOError.cannotWrite(path, "the file is closed") }
        let start = lseek(fd, 0, SEEK_END)
        var failure: Int32 = 0
        Array(text.utf8).withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 {
                    failure = n == 0 ? EIO : errno
                    break
                }
                off += n
            }
        }
        if failure != 0 {
            if start >= 0 { _ = ftruncate(fd, start) }
            throw IOError.cannotWrite(path, String(cString: strerror(failure)))
        }
    }

    public func close() {
        if fd >= 0 {
            _ = Glibc.close(fd)
            fd = -1
        }
    }

    deinit { close() }
}

/// JSON of an Encodable, pretty and with sorted keys (stable diffs); `snakeCase` writes
/// `grad_sync_bytes_per_step` for `gradSyncBytesPerStep` (reports read by scripts).
public func encodeJSON<T: Encodable>(_ value: T, snakeCase: Bool = false) throws -> Data {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    if snakeCase { e.keyEncodingStrategy = .convertToSnakeCase }
    return try e.encode(value)
}

/// One-line JSON with sorted keys: the same value always gives the same bytes (file metadata).
public func compactJSON<T: Encodable>(_ value: T) throws -> String {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try e.encode(value), as: UTF8.self)
}
