import Foundation

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

/// Stateless hash of a few integers to a uniform Float in [0,1): used where a random value must
/// depend only on its logical coordinates (e.g. a dropout mask that is the same whatever the
/// tensor-parallel layout).
@inline(__always)
public func hashUniform(_ a: UInt64, _ b: UInt64, _ c: UInt64) -> Float {
    var x =
        a &* 0x9E37_79B9_7F4A_7C15 ^ (b &+ 0x632B_E59B_D9B4_E019) &* 0xBF58_476D_1CE4_E5B9 ^ c &* 0x94D0_49BB_1331_11EB
    x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
    x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
    x ^= x >> 31
    return Float(x >> 40) * (1.0 / 16_777_216.0)
}

/// A normal value of standard deviation `std` that depends only on (seed, stream, index): Box–Muller
/// on the uniforms hashed from streams 2·stream and 2·stream + 1 at `index`. Random initial weights
/// are drawn this way, element by element, so any shard of a tensor is generated alone and is the
/// same whatever the tensor-parallel layout.
@inline(__always)
public func hashNormal(_ seed: UInt64, stream: UInt64, index: UInt64, std: Float) -> Float {
    var u1 = hashUniform(seed, stream << 1, index)
    let u2 = hashUniform(seed, (stream << 1) | 1, index)
    if u1 < 1e-12 { u1 = 1e-12 }
    return std * (-2 * logf(u1)).squareRoot() * cosf(2 * Float.pi * u2)
}
