/// FNV-1a, 64 bits: the one hash of run fingerprints, checkpoint checksums, replica fingerprints
/// and file identities. Each `mix` folds one value (a byte, a word, a float's bit pattern) in.
public struct FNV1a {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    @inline(__always) public mutating func mix(_ v: UInt64) { value = (value ^ v) &* 0x100_0000_01b3 }
    @inline(__always) public mutating func mix(_ f: Float) { mix(UInt64(f.bitPattern)) }

    /// Hex, as the files and logs write it.
    public var hex: String { String(value, radix: 16) }
}
