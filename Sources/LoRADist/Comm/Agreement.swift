import Foundation

/// An error every rank of a communicator learned together (see `Communicator.agree`): each rank
/// throws it, so each can report it and the job can end normally instead of through MPI_Abort.
public struct AgreedFailure: Error, CustomStringConvertible {
    /// The lowest rank whose work failed.
    public let origin: Int
    /// That rank's error, as text.
    public let message: String
    /// What is left and how to go on, when the caller knows.
    public let hint: String

    public init(origin: Int, message: String, hint: String = "") {
        self.origin = origin
        self.message = message
        self.hint = hint
    }

    public var description: String { "\(message) (on rank \(origin))" + (hint.isEmpty ? "" : "; " + hint) }
}

extension Communicator {
    /// Runs `body` on this rank (it may do nothing on some ranks), then tells every rank whether
    /// any rank's `body` threw: if one did, every rank throws `AgreedFailure` with the message of
    /// the lowest such rank. Costs two small collectives (a length maximum and an AllGather), so it
    /// guards rare work such as file writes, where a failure on one rank must not leave the others
    /// waiting in their next collective.
    public func agree(_ body: () throws -> Void) throws {
        var message = ""
        do { try body() } catch let e as AgreedFailure { message = e.message } catch { message = "\(error)" }
        let all = try allGatherStrings(message)
        if let first = all.firstIndex(where: { !$0.isEmpty }) {
            throw AgreedFailure(origin: first, message: all[first])
        }
    }
}
