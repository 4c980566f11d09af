import Foundation

/// What part of the work a collective belongs to; the trainer sets it on the ledger (and the model's
/// backward `recompute` around the forward of a block it recomputes, `Recompute.blocks`).
public enum Phase: String, Sendable, Codable, CaseIterable {
    case setup, forward, backward, recompute
    case gradSync = "grad-sync"
    case optimizer, metrics, control, checkpoint, eval, inference
}

/// The names of the collectives the ledger records.
public enum CollectiveOp: String, Sendable, Codable, CaseIterable {
    case allReduce = "AllReduce"
    case broadcast = "Broadcast"
    case allGather = "AllGather"
    case barrier = "Barrier"
    case split = "Split"
}

/// One recorded collective call on one rank.
public struct LedgerEntry: Sendable, Codable {
    public var op: CollectiveOp
    public var group: String
    public var elements: Int
    public var bytes: Int
    public var phase: Phase
    /// Which call site issued it (`Site`, Comm/Site.swift).
    public var site: String
    public var seconds: Double
}

/// Per-rank record of every collective, shared by a communicator and the groups split from it.
/// Reports read communication figures from here, never from formulas.
public final class Ledger {
    public private(set) var entries: [LedgerEntry] = []
    /// The phase stamped on the next calls.
    public var phase: Phase = .setup
    /// The call site stamped on the next calls (set by the operations of Parallel/).
    public private(set) var site = ""
    /// When false, calls pass through unrecorded (e.g. warm-up).
    public var enabled = true

    public init() { entries.reserveCapacity(1 << 14) }

    func record(_ e: LedgerEntry) { if enabled { entries.append(e) } }

    public func reset() { entries.removeAll(keepingCapacity: true) }

    /// Runs `body` with `phase` set, restoring the previous phase afterwards.
    public func with<R>(_ phase: Phase, _ body: () throws -> R) rethrows -> R {
        let saved = self.phase
        self.phase = phase
        defer { self.phase = saved }
        return try body()
    }

    /// Runs `body` with `site` stamped on its calls, restoring the previous site afterwards.
    public func at<R>(_ site: Site, _ body: () throws -> R) rethrows -> R {
        let saved = self.site
        self.site = site.rawValue
        defer { self.site = saved }
        return try body()
    }

    /// Totals per (phase, site, op, group): count, bytes, seconds.
    public struct Row: Sendable, Codable, Equatable {
        public var phase: Phase
        public var site: String
        public var op: CollectiveOp
        public var group: String
        public var count: Int
        public var bytes: Int
        public var seconds: Double
    }

    public func summary(where include: (LedgerEntry) -> Bool = { _ in true }) -> [Row] {
        Ledger.summary(of: entries.filter(include))
    }

    /// Totals per (phase, site, op, group) of any list of entries, in phase order, then in the order of `Site`.
    public static func summary(of entries: [LedgerEntry]) -> [Row] {
        var rows: [String: Row] = [:]
        var order: [String] = []
        for e in entries {
            let k = "\(e.phase.rawValue)|\(e.site)|\(e.op.rawValue)|\(e.group)"
            if rows[k] == nil {
                rows[k] = Row(phase: e.phase, site: e.site, op: e.op, group: e.group, count: 0, bytes: 0, seconds: 0)
                order.append(k)
            }
            rows[k]!.count += 1
            rows[k]!.bytes += e.bytes
            rows[k]!.seconds += e.seconds
        }
        let phaseIndex = Dictionary(uniqueKeysWithValues: Phase.allCases.enumerated().map { ($1, $0) })
        let siteIndex = Dictionary(uniqueKeysWithValues: Site.allCases.enumerated().map { ($1.rawValue, $0) })
        func key(_ r: Row) -> (Int, Int, String, String) {
            (phaseIndex[r.phase]!, siteIndex[r.site] ?? -1, r.op.rawValue, r.group)
        }
        return order.map { rows[$0]! }.sorted { key($0) < key($1) }
    }

    public func count(op: CollectiveOp? = nil, phase: Phase? = nil, group: String? = nil, site: Site? = nil) -> Int {
        matching(op: op, phase: phase, group: group, site: site).count
    }

    private func matching(op: CollectiveOp?, phase: Phase?, group: String?, site: Site?) -> [LedgerEntry] {
        entries.filter {
            (op == nil || $0.op == op) && (phase == nil || $0.phase == phase) && (group == nil || $0.group == group)
                && (site == nil || $0.site == site!.rawValue)
        }
    }

    /// A fixed-width table; `per` divides counts, bytes and seconds (e.g. by the number of steps).
    /// Bytes are whole: a mean over steps whose packed passes differ in size is rounded to the byte.
    public static func table(of entries: [LedgerEntry], per divisor: Double = 1) -> String {
        let rows = summary(of: entries)
        var t = TextTable(["phase", "site", "op", "group", "count", "bytes", "ms"], left: [0, 1, 2, 3])
        func num(_ v: Double) -> String { v == v.rounded() ? String(Int(v)) : fixed(v, 2) }
        for r in rows {
            t.add([
                r.phase.rawValue, r.site, r.op.rawValue, r.group, num(Double(r.count) / divisor),
                String(Int((Double(r.bytes) / divisor).rounded())),
                fixed(r.seconds * 1000 / divisor, 3)
            ])
        }
        if rows.isEmpty { t.add(["(none)", "", "", "", "", "", ""]) }
        return t.render()
    }
}

/// Wraps any communicator and records every call in a ledger. Groups split from it are wrapped
/// too and share the ledger, so one rank's ledger holds all its traffic.
public final class RecordingCommunicator: Communicator {
    public let inner: Communicator
    public let ledger: Ledger
    public var rank: Int { inner.rank }
    public var size: Int { inner.size }
    public var name: String { inner.name }

    public init(_ inner: Communicator, ledger: Ledger = Ledger()) {
        self.inner = inner
        self.ledger = ledger
    }

    private func timed<R>(_ op: CollectiveOp, elements: Int, bytes: Int, _ body: () throws -> R) rethrows -> R {
        let t0 = DispatchTime.now().uptimeNanoseconds
        let r: R
        do { r = try body() } catch CommError.timeout(var t) {
            t.phase = ledger.phase.rawValue  // the backends do not know the phase; the ledger does
            throw CommError.timeout(t)
        }
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        ledger.record(
            LedgerEntry(
                op: op, group: name, elements: elements, bytes: bytes, phase: ledger.phase, site: ledger.site,
                seconds: dt))
        return r
    }

    public func allReduce<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp) throws {
        try timed(.allReduce, elements: buffer.count, bytes: buffer.count * MemoryLayout<T>.stride) {
            try inner.allReduce(buffer, op: op)
        }
    }

    public func broadcast<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws {
        try timed(.broadcast, elements: buffer.count, bytes: buffer.count * MemoryLayout<T>.stride) {
            try inner.broadcast(buffer, root: root)
        }
    }

    public func allGather<T: CollectiveElement>(
        _ send: UnsafeBufferPointer<T>, into recv: UnsafeMutableBufferPointer<T>
    ) throws {
        try timed(.allGather, elements: send.count, bytes: send.count * MemoryLayout<T>.stride) {
            try inner.allGather(send, into: recv)
        }
    }

    public func barrier() throws {
        try timed(.barrier, elements: 0, bytes: 0) { try inner.barrier() }
    }

    public func split(color: Int, key: Int, name: String) throws -> Communicator {
        let sub = try timed(.split, elements: 0, bytes: 0) { try inner.split(color: color, key: key, name: name) }
        return RecordingCommunicator(sub, ledger: ledger)
    }

    public func abort(_ message: String) throws -> Never {
        try inner.abort(message)
    }
}
