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
        var a = FNV1a(), b = FNV1a()
        a.mix(Float(1.5)); b.mix(UInt64(Float(1.5).bitPattern))
        XCTAssertEqual(a.value, b.value)
        var c = FNV1a(); c.mix(Float(-0.0))
        var z = FNV1a(); z.mix(Float(0.0))
        XCTAssertNotEqual(c.value, z.value, "bit patterns, not values: -0 and +0 differ")
    }
}
