/// The named operations every collective of the project goes through: the generic sum, max,
/// broadcast, gather and agreement, each stamped with its call site in the ledger. Whether a call
/// is needed at all (a group of one) is the caller's decision, as before; these only name and issue it.
public enum Collective {
    /// Runs `body` with `site` stamped on the ledger of `comm`, if it records one.
    static func at<R>(_ site: Site, _ comm: Communicator, _ body: () throws -> R) rethrows -> R {
        guard let rc = comm as? RecordingCommunicator else { return try body() }
        return try rc.ledger.at(site, body)
    }

    /// Runs `body` with `phase` stamped on the ledger of `comm`, if it records one.
    static func during<R>(_ phase: Phase, _ comm: Communicator, _ body: () throws -> R) rethrows -> R {
        guard let rc = comm as? RecordingCommunicator else { return try body() }
        return try rc.ledger.with(phase, body)
    }

    public static func sum<T: CollectiveElement>(
        _ buffer: UnsafeMutableBufferPointer<T>, over comm: Communicator, at site: Site
    ) throws {
        try at(site, comm) { try comm.allReduce(buffer, op: .sum) }
    }

    public static func sum<T: CollectiveElement>(_ values: inout [T], over comm: Communicator, at site: Site) throws {
        try values.withUnsafeMutableBufferPointer { try sum($0, over: comm, at: site) }
    }

    public static func max<T: CollectiveElement>(
        _ buffer: UnsafeMutableBufferPointer<T>, over comm: Communicator, at site: Site
    ) throws {
        try at(site, comm) { try comm.allReduce(buffer, op: .max) }
    }

    public static func max<T: CollectiveElement>(_ values: inout [T], over comm: Communicator, at site: Site) throws {
        try values.withUnsafeMutableBufferPointer { try max($0, over: comm, at: site) }
    }

    public static func broadcast<T: CollectiveElement>(
        _ buffer: UnsafeMutableBufferPointer<T>, from root: Int, over comm: Communicator,
        at site: Site
    ) throws {
        try at(site, comm) { try comm.broadcast(buffer, root: root) }
    }

    public static func gather<T: CollectiveElement>(
        _ send: UnsafeBufferPointer<T>, into recv: UnsafeMutableBufferPointer<T>,
        over comm: Communicator, at site: Site
    ) throws {
        try at(site, comm) { try comm.allGather(send, into: recv) }
    }

    /// Every rank's `values`, rank after rank.
    public static func gather<T: CollectiveElement>(_ values: [T], over comm: Communicator, at site: Site) throws -> [T]
    {
        try at(site, comm) { try comm.allGather(values) }
    }

    /// Every rank's string, by rank.
    public static func gatherStrings(_ s: String, over comm: Communicator, at site: Site) throws -> [String] {
        try at(site, comm) { try comm.allGatherStrings(s) }
    }

    /// `body` on this rank, then every rank learns whether any rank's body threw (`Communicator.agree`).
    public static func agree(over comm: Communicator, at site: Site, _ body: () throws -> Void) throws {
        try at(site, comm) { try comm.agree(body) }
    }

    public static func barrier(over comm: Communicator, at site: Site) throws {
        try at(site, comm) { try comm.barrier() }
    }
}
