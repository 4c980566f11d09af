/// world = dp × tp. Ranks r with the same r / tp form one tensor-parallel group (one model
/// replica, reading the same batch); ranks with the same r % tp form one data-parallel group.
public struct ProcessGrid {
    public let world: Communicator
    public let tp: Communicator
    public let dp: Communicator
    public var tpDegree: Int { tp.size }
    public var dpDegree: Int { dp.size }
    /// Which data-parallel replica this rank belongs to (0 ..< dp).
    public var replica: Int { dp.rank }

    public init(world: Communicator, tp degree: Int) throws {
        guard degree >= 1 else { throw ModelError.invalidParallel("--tp must be at least 1 (got \(degree))") }
        guard world.size % degree == 0 else {
            throw ModelError.invalidParallel("the world of \(world.size) ranks is not divisible by --tp \(degree)")
        }
        self.world = world
        tp = try Collective.at(.split, world) {
            try world.split(color: world.rank / degree, key: world.rank % degree, name: "tp")
        }
        dp = try Collective.at(.split, world) {
            try world.split(color: world.rank % degree, key: world.rank / degree, name: "dp")
        }
    }
}
