import Foundation
import LoRADist

/// What every rank does in one serving step, decided by rank 0's scheduler and broadcast to the
/// others once per step (site `serve-plan`) as a frame of fixed size: an adapter to load or unload
/// first, the KV caches to free, then one forward over `sequences` (each on its cache slot, its
/// rows on its adapter), and whether to stop after it. Every rank then runs the same step.
public struct StepPlan: Equatable, Sendable {
    public enum Control: Equatable, Sendable {
        case load(name: String, path: String)
        case unload(name: String)
    }

    public struct Sequence: Equatable, Sendable {
        /// The KV cache this sequence appends to (a request's for its whole life).
        public var slot: Int32
        /// Positions of a cache made by this step (the sequence's first), 0 for an existing one.
        public var capacity: Int32
        /// The adapter of its rows; nil: the bare base.
        public var adapter: String?
        /// Its new tokens: the prompt (or a chunk of it), or the last token decoded.
        public var tokens: [Int32]

        public init(slot: Int32, capacity: Int32 = 0, adapter: String?, tokens: [Int32]) {
            self.slot = slot
            self.capacity = capacity
            self.adapter = adapter
            self.tokens = tokens
        }
    }

    public var stop = false
    /// Whether some sequence samples: the ranks gather the logits of every sequence's last row
    /// instead of their argmax candidates.
    public var sample = false
    public var control: Control?
    /// Cache slots to free before the forward.
    public var release: [Int32] = []
    /// In row order: sequences of one adapter are consecutive (one GEMM pair per adapter and op).
    public var sequences: [Sequence] = []

    public init() {}

    /// Bytes of the longest adapter name and path a plan carries.
    public static let maxPath = 4096
    public static let maxName = 64

    /// The frame every plan of an engine with these limits fits in.
    public static func frameBytes(maxBatch: Int, tokenBudget: Int) -> Int {
        64 + 2 * (4 + maxPath) + maxBatch * (4 + 12 + 4 + maxName) + 4 * tokenBudget
    }

    /// The plan as a frame of `bytes` bytes (zero-padded).
    public func encoded(bytes: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes)
        func int(_ v: Int32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func string(_ s: String) {
            int(Int32(s.utf8.count))
            out.append(contentsOf: s.utf8)
        }
        out.append((stop ? 1 : 0) | (sample ? 2 : 0))
        switch control {
        case nil: out.append(0)
        case .load(let name, let path):
            out.append(1)
            string(name)
            string(path)
        case .unload(let name):
            out.append(2)
            string(name)
        }
        int(Int32(release.count))
        release.forEach(int)
        int(Int32(sequences.count))
        for s in sequences {
            int(s.slot)
            int(s.capacity)
            string(s.adapter ?? "")
            int(Int32(s.tokens.count))
            s.tokens.forEach(int)
        }
        guard out.count <= bytes else {
            throw ModelError.invalidConfig("a step plan of \(out.count) bytes exceeds its frame of \(bytes)")
        }
        out += [UInt8](repeating: 0, count: bytes - out.count)
        return out
    }

    /// The plan of a frame `encoded` wrote.
    public init(frame: [UInt8]) throws {
        var at = 0
        func byte() throws -> UInt8 {
            guard at < frame.count else { throw ModelError.invalidConfig("a step plan ends early") }
            at += 1
            return frame[at - 1]
        }
        func int() throws -> Int32 {
            guard at + 4 <= frame.count else { throw ModelError.invalidConfig("a step plan ends early") }
            var v: UInt32 = 0
            for i in 0..<4 { v |= UInt32(frame[at + i]) << (8 * UInt32(i)) }
            at += 4
            return Int32(bitPattern: v)
        }
        func count() throws -> Int {
            let n = Int(try int())
            guard n >= 0, n <= frame.count else { throw ModelError.invalidConfig("a step plan holds a bad count") }
            return n
        }
        func string() throws -> String {
            let n = try count()
            guard at + n <= frame.count else { throw ModelError.invalidConfig("a step plan ends early") }
            defer { at += n }
            return String(decoding: frame[at..<(at + n)], as: UTF8.self)
        }
        let flags = try byte()
        stop = flags & 1 != 0
        sample = flags & 2 != 0
        switch try byte() {
        case 0: control = nil
        case 1: control = .load(name: try string(), path: try string())
        case 2: control = .unload(name: try string())
        default: throw ModelError.invalidConfig("a step plan holds an unknown control")
        }
        release = try (0..<count()).map { _ in try int() }
        sequences = try (0..<count()).map { _ in
            let slot = try int()
            let capacity = try int()
            let name = try string()
            let tokens = try (0..<count()).map { _ in try int() }
            return Sequence(slot: slot, capacity: capacity, adapter: name.isEmpty ? nil : name, tokens: tokens)
        }
    }
}
