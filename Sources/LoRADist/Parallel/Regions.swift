/// The only operators through which the model communicates (Megatron's `mappings.py`); one grep for
/// `regions.` shows the whole communication pattern of a forward and backward pass.
///
/// A group of size 1 needs no communication, so none is issued (and the ledger records none).
public struct TPRegions {
    public let comm: Communicator

    public init(comm: Communicator) { self.comm = comm }

    /// g: leaving a row-parallel region (or a vocab-parallel lookup): AllReduce(sum) in forward,
    /// identity in backward.
    public func reduceFromRegion(_ p: UnsafeMutablePointer<Float>, _ count: Int, at site: Site) throws {
        if comm.size > 1 {
            try Collective.sum(UnsafeMutableBufferPointer(start: p, count: count), over: comm, at: site)
        }
    }

    /// f, backward half: entering a column-parallel region is identity in forward; in backward the
    /// partial input gradients of the ranks are summed.
    public func reduceGradIntoRegion(_ p: UnsafeMutablePointer<Float>, _ count: Int, at site: Site) throws {
        if comm.size > 1 {
            try Collective.sum(UnsafeMutableBufferPointer(start: p, count: count), over: comm, at: site)
        }
    }

    /// Owner placement: the rank holding a module (TP rank 0) sends its output to the others.
    public func broadcastFromOwner(_ p: UnsafeMutablePointer<Float>, _ count: Int) throws {
        if comm.size > 1 {
            try Collective.broadcast(
                UnsafeMutableBufferPointer(start: p, count: count), from: 0, over: comm, at: .adapterOwner)
        }
    }

    /// Runs `body` with its collectives recorded under `phase` (the backward's recomputed block
    /// forwards: `Phase.recompute`), on the ledger of the group if it records one.
    public func during<R>(_ phase: Phase, _ body: () throws -> R) rethrows -> R {
        try Collective.during(phase, comm, body)
    }

    /// Vocab-parallel cross-entropy: the row maxima of the sharded logits.
    public func vocabMax(_ p: UnsafeMutablePointer<Float>, _ count: Int) throws {
        if comm.size > 1 {
            try Collective.max(UnsafeMutableBufferPointer(start: p, count: count), over: comm, at: .lossMax)
        }
    }

    /// Vocab-parallel cross-entropy: sums of exponentials, target logits and logit sums, fused.
    public func vocabSums(_ p: UnsafeMutablePointer<Float>, _ count: Int) throws {
        if comm.size > 1 {
            try Collective.sum(UnsafeMutableBufferPointer(start: p, count: count), over: comm, at: .lossSums)
        }
    }

    /// Vocab-parallel argmax: gathers each rank's (value, global index) pairs for `rows` rows.
    public func gatherCandidates(_ send: UnsafePointer<Float>, _ count: Int, into recv: UnsafeMutablePointer<Float>)
        throws
    {
        if comm.size > 1 {
            try Collective.gather(
                UnsafeBufferPointer(start: send, count: count),
                into: UnsafeMutableBufferPointer(start: recv, count: count * comm.size), over: comm, at: .argmax)
        } else {
            recv.update(from: send, count: count)
        }
    }
}
