import XCTest

@testable import LoRADist

/// FNV-1a 64 against the published test vectors (bytes), and the float form as its bit pattern.
final class HashTests: XCTestCase {
    func fnv(_ s: String) -> UInt64 {
        var h = FNV1a()
        for b in s.utf8 { h.mix(UInt64(b)) }
        return h.value
    }

    func testPublishedVectors() {
        XCTAssertEqual(fnv(""), 0xcbf2_9ce4_8422_2325)
        XCTAssertEqual(fnv("a"), 0xaf63_dc4c_8601_ec8c)
        XCTAssertEqual(fnv("foobar"), 0x8594_4171_f739_67e8)
        XCTAssertEqual(FNV1a().hex, "cbf29ce484222325")
    }

    func testAFloatMixesItsBitPattern() {
        var a = FNV1a()
        var b = FNV1a()
        a.mix(Float(1.5))
        b.mix(UInt64(Float(1.5).bitPattern))
        XCTAssertEqual(a.value, b.value)
        var c = FNV1a()
        c.mix(Float(-0.0))
        var z = FNV1a()
        z.mix(Float(0.0))
        XCTAssertNotEqual(c.value, z.value, "bit patterns, not values: -0 and +0 differ")
    }
}

/// hashNormal against the Box–Muller draw the random initialisers (RandomInitSource, the adapters'
/// W_down) computed inline before it was written once: the same bits for every seed, stream, index
/// and standard deviation tried, so random bases and adapters, and every figure and checkpoint
/// made from them, are unchanged; and its moments against N(0, std²).
final class HashNormalTests: XCTestCase {
    /// The draw as RandomInitSource.readBlock and AdapterWeights.initialize wrote it out.
    static func inlineBoxMuller(_ seed: UInt64, _ id: UInt64, _ idx: UInt64, _ std: Float) -> Float {
        var u1 = hashUniform(seed, id << 1, idx)
        let u2 = hashUniform(seed, (id << 1) | 1, idx)
        if u1 < 1e-12 { u1 = 1e-12 }
        return std * (-2 * logf(u1)).squareRoot() * cosf(2 * Float.pi * u2)
    }

    func testHashNormalIsTheInlineBoxMullerBitForBit() {
        var n = 0
        for seed: UInt64 in [0, 1, 42, 0xDEAD_BEEF, .max] {
            for stream: UInt64 in [0, 1, 5, 49, 1 << 20] {
                for index: UInt64 in [0, 1, 2, 777, 123_456, 1 << 40] {
                    for std: Float in [1, 0.02, 0.02 / (2 * Float(12)).squareRoot()] {
                        let got = hashNormal(seed, stream: stream, index: index, std: std)
                        let want = Self.inlineBoxMuller(seed, stream, index, std)
                        XCTAssertEqual(
                            got.bitPattern, want.bitPattern,
                            "seed \(seed) stream \(stream) index \(index) std \(std): \(got) vs \(want)")
                        n += 1
                    }
                }
            }
        }
        XCTAssertEqual(n, 5 * 5 * 6 * 3)
    }

    func testRandomInitSourceDrawsTheInlineValues() throws {
        let cfg = Fixtures.tiny
        let src = try RandomInitSource(config: cfg, seed: 7)
        let slots = BaseLayout(layout: try TPLayout(config: cfg, degree: 1, rank: 0)).slots
        var checked = 0
        for (i, slot) in slots.enumerated() where slot.name.hasSuffix(".weight") && !slot.name.contains("ln_") {
            let rows = slot.shape[0]
            let cols = slot.shape[1]
            var got = [Float](repeating: .nan, count: rows * cols)
            try got.withUnsafeMutableBufferPointer {
                try src.readBlock(slot.name, rows: 0..<rows, cols: 0..<cols, into: $0.baseAddress!)
            }
            let std: Float = slot.residualProjection ? 0.02 / (2 * Float(cfg.nLayer)).squareRoot() : 0.02
            for k in 0..<(rows * cols) {
                let want = Self.inlineBoxMuller(7, UInt64(i), UInt64(k), std)
                if got[k].bitPattern != want.bitPattern {
                    XCTFail("\(slot.name)[\(k)]: \(got[k]) vs \(want)")
                    break
                }
            }
            checked += 1
        }
        XCTAssertEqual(checked, 2 + cfg.nLayer * 4, "wte, wpe and the four matrices of each block")
    }

    func testAdapterDownProjectionDrawsTheInlineValues() throws {
        let cfg = Fixtures.tiny
        for placement in [AdapterPlacement.replicated, .sharded] {
            for rank in 0..<2 {
                let ad = AdapterWeights(
                    config: AdapterConfig(kind: .houlsby, bottleneck: 8, placement: placement),
                    layout: try TPLayout(config: cfg, degree: 2, rank: rank))
                ad.initialize(seed: 3)
                let d = cfg.nEmbd
                let m = 8
                let ml = ad.localWidth
                let col0 = placement == .sharded ? rank * ml : 0
                XCTAssertFalse(ad.slots.isEmpty)
                for s in ad.slots {
                    let id = UInt64(s.layer * 2 + s.position.rawValue)
                    for r in 0..<d {
                        for c in 0..<ml {
                            let got = ad.ptr(s.wd)[r * ml + c]
                            let want = Self.inlineBoxMuller(3, id, UInt64(r * m + col0 + c), 0.02)
                            XCTAssertEqual(
                                got.bitPattern, want.bitPattern,
                                "\(placement) rank \(rank) layer \(s.layer) \(s.position) [\(r), \(c)]")
                        }
                    }
                }
            }
        }
    }

    /// Mean and variance of 200,000 draws against N(0, std²): within 5 standard errors.
    func testHashNormalHasTheRequestedMoments() {
        let n = 200_000
        let std: Float = 0.02
        var sum = 0.0
        var sq = 0.0
        for i in 0..<n {
            let v = Double(hashNormal(11, stream: 3, index: UInt64(i), std: std))
            sum += v
            sq += v * v
        }
        let s2 = Double(std) * Double(std)
        let mean = sum / Double(n)
        let variance = sq / Double(n) - mean * mean
        XCTAssertLessThan(abs(mean), 5 * Double(std) / Double(n).squareRoot(), "mean \(mean)")
        // The variance of a sample variance of normals is 2σ⁴/(n − 1).
        XCTAssertLessThan(
            abs(variance - s2), 5 * s2 * (2 / Double(n - 1)).squareRoot(), "variance \(variance) vs \(s2)")
    }
}
