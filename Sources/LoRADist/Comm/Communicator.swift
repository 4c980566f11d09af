import Foundation

/// How a collective combines the contributions of the ranks.
public enum ReduceOp: String, Sendable, Codable {
    case sum, max
}

/// The element types collectives carry; each backend maps them to its own type tag.
public enum ElementKind: Sendable {
    case float32, float64, int64, uint8
}

/// A scalar a collective can move and reduce.
public protocol CollectiveElement: Numeric, Comparable {
    static var kind: ElementKind { get }
}
extension Float: CollectiveElement { public static var kind: ElementKind { .float32 } }
extension Double: CollectiveElement { public static var kind: ElementKind { .float64 } }
extension Int64: CollectiveElement { public static var kind: ElementKind { .int64 } }
extension UInt8: CollectiveElement { public static var kind: ElementKind { .uint8 } }

/// Errors raised by a communicator. `aborted` is what a rank sees when another rank brought the job down.
public enum CommError: Error, CustomStringConvertible {
    case mpi(call: String, code: Int32, message: String)
    case aborted(String)
    case invalid(String)
    case timeout(CollectiveTimeout)

    public var description: String {
        switch self {
        case .mpi(let call, let code, let message): return "\(call) failed (MPI error \(code)): \(message)"
        case .aborted(let message): return "job aborted: \(message)"
        case .invalid(let message): return message
        case .timeout(let t): return t.description
        }
    }
}

/// How long any collective may wait for the other ranks of its group before the waiting ranks
/// give up and report (`--collective-timeout`); 0: no deadline (MPI's blocking collectives).
/// One value per process, set before the communicators are used.
public enum CollectiveDeadline {
    nonisolated(unsafe) public static var seconds: Double = 300
}

/// What a rank that gave up waiting in a collective knows: the operation and group, how long it
/// waited, which members never arrived, and what the others are doing.
public struct CollectiveTimeout: Sendable, CustomStringConvertible {
    public var op: String
    /// The group's name ("tp", "dp", "world") and its members as world ranks.
    public var group: String
    public var members: [Int]
    /// This group's collective number (the same on every member).
    public var sequence: Int
    public var bytes: Int
    public var seconds: Double
    /// World ranks of the group that did not arrive.
    public var missing: [Int]
    /// World ranks of the group that arrived and wait too.
    public var waiting: [Int]
    /// What other ranks last said they were waiting in (world rank → description), when known.
    public var elsewhere: [Int: String] = [:]
    /// The training phase, when the caller knows it (the ledger's).
    public var phase: String?
    /// What is left and how to go on, when the caller knows (the newest checkpoint).
    public var hint: String?

    public var description: String {
        func list(_ r: [Int]) -> String {
            (r.count == 1 ? "rank " : "ranks ") + r.map(String.init).joined(separator: ", ")
        }
        var s =
            """
            collective timeout: waited \(fixed(seconds, 1)) s in \(phase.map { $0 + " " } ?? "")\(op) on group \
            \(group) (world ranks \(members.map(String.init).joined(separator: ", "))), its collective #\(sequence) of \
            \(bytes) bytes;\u{20}
            """
        s += missing.isEmpty ? "every member arrived" : "\(list(missing)) did not arrive"
        if !waiting.isEmpty { s += "; \(list(waiting)) \(waiting.count == 1 ? "is" : "are") waiting in it too" }
        for (r, what) in elsewhere.sorted(by: { $0.key < $1.key }) { s += "; rank \(r) waits in \(what)" }
        if let hint { s += "; " + hint }
        return s
    }
}

/// The one door every collective of the project goes through.
///
/// Invariant: every rank of a communicator calls the same collectives in the same order with the
/// same element counts (as in MPI). Buffers are the caller's; collectives are in place unless a
/// receive buffer is named.
public protocol Communicator: AnyObject {
    /// This rank's index in the group, 0 ..< size.
    var rank: Int { get }
    /// Number of ranks in the group.
    var size: Int { get }
    /// A short name for the group ("world", "tp", "dp", ...), used by the ledger.
    var name: String { get }

    /// Reduces `buffer` over all ranks; every rank receives the same result.
    func allReduce<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp) throws
    /// Copies root's `buffer` into every rank's `buffer`.
    func broadcast<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws
    /// Concatenates every rank's `send` (equal lengths) in rank order into `recv` (size × send.count).
    func allGather<T: CollectiveElement>(_ send: UnsafeBufferPointer<T>, into recv: UnsafeMutableBufferPointer<T>)
        throws
    /// Returns once every rank has entered it.
    func barrier() throws
    /// Splits the group as MPI_Comm_split does: ranks with equal `color` form a new group, ordered by
    /// (`key`, old rank). `name` labels the new group in the ledger.
    func split(color: Int, key: Int, name: String) throws -> Communicator
    /// Brings every rank of the job down with `message`. Never returns normally: the MPI backend
    /// ends the processes, the in-process backend throws `CommError.aborted` here and on every rank.
    func abort(_ message: String) throws -> Never
}

extension Communicator {
    public func allReduce<T: CollectiveElement>(_ array: inout [T], op: ReduceOp = .sum) throws {
        try array.withUnsafeMutableBufferPointer { try allReduce($0, op: op) }
    }
    public func broadcast<T: CollectiveElement>(_ array: inout [T], root: Int) throws {
        try array.withUnsafeMutableBufferPointer { try broadcast($0, root: root) }
    }
    public func allGather<T: CollectiveElement>(_ array: [T]) throws -> [T] {
        var out = [T](repeating: 0, count: array.count * size)
        try array.withUnsafeBufferPointer { s in
            try out.withUnsafeMutableBufferPointer { r in try allGather(s, into: r) }
        }
        return out
    }
    /// Gathers one string per rank (UTF-8, padded to the longest).
    public func allGatherStrings(_ s: String) throws -> [String] {
        let bytes = Array(s.utf8)
        var len: [Int64] = [Int64(bytes.count)]
        try allReduce(&len, op: .max)
        let n = Int(len[0])
        let padded = bytes + [UInt8](repeating: 0, count: n - bytes.count)
        let all = try allGather(padded)
        return (0..<size).map { r in
            let chunk = all[(r * n)..<((r + 1) * n)].prefix { $0 != 0 }
            return String(decoding: chunk, as: UTF8.self)
        }
    }
}
