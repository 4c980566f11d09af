import XCTest

@testable import LoRADist

/// The safetensors reader: a round trip, conversions, and one specific error per malformation
/// (never a crash), plus a bounded fuzz of random byte mutations.
final class SafeTensorsTests: XCTestCase {
    var dir: URL!
    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("st-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    func path(_ n: String) -> String { dir.appendingPathComponent(n).path }

    /// A file from a raw header (JSON text) and data bytes.
    func raw(_ name: String, header: String, data: [UInt8], lengthOverride: UInt64? = nil) -> String {
        var d = Data()
        let h = Data(header.utf8)
        withUnsafeBytes(of: (lengthOverride ?? UInt64(h.count)).littleEndian) { d.append(contentsOf: $0) }
        d.append(h)
        d.append(contentsOf: data)
        let p = path(name)
        FileManager.default.createFile(atPath: p, contents: d)
        return p
    }

    func testRoundTripWithMetadata() throws {
        let p = path("a.safetensors")
        try SafeTensorsFile.write(
            path: p, tensors: [("w", [2, 3], [1, 2, 3, 4, 5, 6]), ("b", [3], [-1, 0.5, 7])], metadata: ["k": "v"])
        let f = try SafeTensorsFile(path: p)
        XCTAssertEqual(f.names, ["b", "w"])
        XCTAssertEqual(try f.floats("w"), [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(try f.info("w").shape, [2, 3])
        XCTAssertEqual(f.metadata["k"], "v")
        var block = [Float](repeating: 0, count: 2)
        try f.readBlock("w", rows: 0..<2, cols: 1..<2, into: &block)
        XCTAssertEqual(block, [2, 5])
    }

    func testHalfAndBFloatAreConverted() throws {
        // F16 1.0 = 0x3C00, −2.0 = 0xC000; BF16 1.0 = 0x3F80, 0.5 = 0x3F00.
        let p = raw(
            "h.safetensors",
            header:
                #"""
                {"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[2],"data_offsets":\#
                [4,8]}}
                """#,
            data: [0x00, 0x3C, 0x00, 0xC0, 0x80, 0x3F, 0x00, 0x3F])
        let f = try SafeTensorsFile(path: p)
        XCTAssertEqual(try f.floats("a"), [1, -2])
        XCTAssertEqual(try f.floats("b"), [1, 0.5])
    }

    func expectError(_ p: String, _ contains: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try SafeTensorsFile(path: p), file: file, line: line) { e in
            XCTAssertTrue("\(e)".contains(contains), "\(e)", file: file, line: line)
        }
    }

    func testMalformationsEachGetTheirOwnError() {
        let ok = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        expectError(path("missing.safetensors"), "cannot read")
        let short = path("short")
        FileManager.default.createFile(atPath: short, contents: Data([1, 2, 3]))
        expectError(short, "shorter than its 8-byte header length")
        expectError(
            raw("past", header: ok, data: [UInt8](repeating: 0, count: 8), lengthOverride: 5000), "runs past the end")
        expectError(raw("cap", header: ok, data: [], lengthOverride: 1 << 40), "exceeds the 100 MB cap")
        expectError(raw("json", header: "{not json", data: []), "not a JSON object")
        expectError(
            raw(
                "dtype", header: #"{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}"#,
                data: [UInt8](repeating: 0, count: 8)), "unknown dtype Q7")
        expectError(
            raw(
                "shape", header: #"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                data: [UInt8](repeating: 0, count: 8)), "≠ byte range")
        expectError(
            raw(
                "overlap",
                header:
                    #"""
                    {"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],\#
                    "data_offsets":[4,8]}}
                    """#,
                data: [UInt8](repeating: 0, count: 8)), "overlaps")
        expectError(
            raw(
                "range", header: #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                data: [UInt8](repeating: 0, count: 8)), "runs past the 8 data bytes")
        expectError(
            raw(
                "gap", header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                data: [UInt8](repeating: 0, count: 8)), "gap before byte 4")
        expectError(
            raw(
                "order", header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#,
                data: [UInt8](repeating: 0, count: 8)), "not an ordered pair")
    }

    /// Random mutations through the safetensors fuzz target (whose consistency checks trap on a
    /// parse that is not self-consistent): a changed data byte is always accepted and reads back
    /// changed; a cut file and a changed header length are always refused.
    func testRandomMutationsAreReadConsistentlyOrRefused() throws {
        let p = path("fuzz-base.safetensors")
        try SafeTensorsFile.write(
            path: p, tensors: [("w", [3, 4], (0..<12).map(Float.init)), ("b", [4], [1, 2, 3, 4])], metadata: ["x": "y"])
        let good = try Data(contentsOf: URL(fileURLWithPath: p))
        let dataStart = good.count - 16 * 4
        var rng = RNG(seed: 2024)
        var dataOK = 0
        var cutRefused = 0
        var lengthRefused = 0
        var other = (accepted: 0, refused: 0)
        for _ in 0..<600 {
            // A data byte: accepted, and the tensor reads back what was written.
            var d = good
            let at = dataStart + rng.below(64)
            d[at] ^= UInt8(1 + rng.below(255))
            XCTAssertTrue(FuzzTargets.run("safetensors", d), "a changed data byte must be accepted")
            let q = path("m.safetensors")
            FileManager.default.createFile(atPath: q, contents: d)
            let f = try SafeTensorsFile(path: q)
            let all = try f.floats("b") + f.floats("w")  // sorted by name: b's bytes come first
            let want: [Float] = [1, 2, 3, 4] + (0..<12).map(Float.init)
            XCTAssertEqual(
                zip(all, want).filter { $0.bitPattern != $1.bitPattern }.count, 1, "exactly the changed value differs")
            dataOK += 1
            // A cut anywhere: refused.
            if !FuzzTargets.run("safetensors", good.prefix(rng.below(good.count))) { cutRefused += 1 }
            // Another header length: refused.
            var h = good
            h[rng.below(4)] ^= UInt8(1 + rng.below(255))
            if !FuzzTargets.run("safetensors", h) { lengthRefused += 1 }
            // Anything else: either, never a crash or an inconsistent parse (the target traps on one).
            var x = good
            for _ in 0..<(1 + rng.below(4)) {
                switch rng.below(3) {
                case 0: x[rng.below(x.count)] = UInt8(rng.below(256))
                case 1: x.insert(UInt8(rng.below(256)), at: rng.below(x.count + 1))
                default: if x.count > 1 { x.remove(at: rng.below(x.count)) }
                }
            }
            if FuzzTargets.run("safetensors", x) { other.accepted += 1 } else { other.refused += 1 }
        }
        XCTAssertEqual(dataOK, 600)
        XCTAssertEqual(cutRefused, 600)
        XCTAssertEqual(lengthRefused, 600)
        XCTAssertGreaterThan(other.refused, 0)
    }
}
