import Foundation
import XCTest

@testable import LoRADist

/// The GEMM seam: both backends against a double-precision loop, bf16 operands against fp32 ones,
/// bf16 rounding bit by bit, the per-thread primitive cache, and GEMMs from several threads.
final class GemmTests: XCTestCase {
    /// One GEMM problem with its stored operands (row-major, padded rows) and the double-precision truth.
    struct Problem {
        var transA: Bool, transB: Bool
        var m: Int, n: Int, k: Int
        var alpha: Float, beta: Float
        var lda: Int, ldb: Int, ldc: Int
        var a: [Float], b: [Float], c0: [Float]

        /// Stored shape of A (before op): rows × width, each row lda long.
        var aRows: Int { transA ? k : m }
        var bRows: Int { transB ? n : k }

        init(
            _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, alpha: Float, beta: Float,
            pad: (Int, Int, Int), rng: inout RNG, values: (inout RNG) -> Float = { $0.uniform() * 2 - 1 }
        ) {
            self.transA = transA
            self.transB = transB
            self.m = m
            self.n = n
            self.k = k
            self.alpha = alpha
            self.beta = beta
            lda = (transA ? m : k) + pad.0
            ldb = (transB ? k : n) + pad.1
            ldc = n + pad.2
            a = []
            b = []
            c0 = []
            a = (0..<max(aRows * lda, 1)).map { _ in values(&rng) }
            b = (0..<max(bRows * ldb, 1)).map { _ in values(&rng) }
            c0 = (0..<(m * ldc)).map { _ in values(&rng) }
            // beta == 0 must not read C: NaNs there would show it. Padding holds a sentinel.
            for i in 0..<m {
                for j in 0..<ldc where j >= n || beta == 0 { c0[i * ldc + j] = j >= n ? 12345 : .nan }
            }
        }

        func opA(_ i: Int, _ p: Int) -> Float { transA ? a[p * lda + i] : a[i * lda + p] }
        func opB(_ p: Int, _ j: Int) -> Float { transB ? b[j * ldb + p] : b[p * ldb + j] }

        /// The exact-ish result (double accumulation) and, per element, the worst-case error bound
        /// of any fp32 evaluation order: (k + 2)·2⁻²³·(|alpha|·Σ|a·b| + |beta·c|).
        func reference() -> (value: [Double], bound: [Double]) {
            var v = [Double](repeating: 0, count: m * n)
            var e = [Double](repeating: 0, count: m * n)
            for i in 0..<m {
                for j in 0..<n {
                    var s = 0.0
                    var mag = 0.0
                    for p in 0..<k {
                        let x = Double(opA(i, p)) * Double(opB(p, j))
                        s += x
                        mag += abs(x)
                    }
                    let c = beta == 0 ? 0 : Double(beta) * Double(c0[i * ldc + j])
                    v[i * n + j] = Double(alpha) * s + c
                    e[i * n + j] = Double(k + 2) * Double(Float.ulpOfOne) * (abs(Double(alpha)) * mag + abs(c)) + 1e-30
                }
            }
            return (v, e)
        }

        /// C after the GEMM on `backend`, with A and B passed as `type` (bf16: rounded from a and b).
        func run(_ backend: GemmBackend, _ type: DType = .f32) -> [Float] {
            var c = c0
            let ah = a.map(BF16.round)
            let bh = b.map(BF16.round)
            a.withUnsafeBufferPointer { a in
                b.withUnsafeBufferPointer { b in
                    ah.withUnsafeBufferPointer { ah in
                        bh.withUnsafeBufferPointer { bh in
                            c.withUnsafeMutableBufferPointer { c in
                                let (opA, opB): (GemmOperand, GemmOperand) =
                                    type == .f32
                                    ? (.f32(a.baseAddress!), .f32(b.baseAddress!))
                                    : (.bf16(ah.baseAddress!), .bf16(bh.baseAddress!))
                                Gemm.run(
                                    on: backend, transA, transB, m, n, k, alpha, opA, lda, opB, ldb, beta,
                                    c.baseAddress!, ldc)
                            }
                        }
                    }
                }
            }
            return c
        }

        /// `self` with A and B replaced by their bf16 roundings, widened back (exact fp32 values).
        var widened: Problem {
            var p = self
            p.a = a.map { BF16.widen(BF16.round($0)) }
            p.b = b.map { BF16.widen(BF16.round($0)) }
            return p
        }

        var name: String {
            """
            \(transA ? "Aᵀ" : "A")·\(transB ? "Bᵀ" : "B") m \(m) n \(n) k \(k) alpha \(alpha) beta \(beta) ld \
            \(lda)/\(ldb)/\(ldc)
            """
        }

        /// Asserts `c` is within the bound of the reference and the padding of C is untouched.
        func check(_ c: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
            let (v, e) = reference()
            for i in 0..<m {
                for j in 0..<ldc {
                    let got = c[i * ldc + j]
                    if j >= n {
                        if got != 12345 {
                            XCTFail("\(what) \(name): wrote C padding at (\(i), \(j))", file: file, line: line)
                            return
                        }
                        continue
                    }
                    let err = abs(Double(got) - v[i * n + j])
                    if !(err <= e[i * n + j]) {
                        XCTFail(
                            "\(what) \(name): C(\(i), \(j)) = \(got), expected \(v[i * n + j]) ± \(e[i * n + j])",
                            file: file, line: line)
                        return
                    }
                }
            }
        }
    }

    /// The shapes every backend is checked on: all four transpositions, m = 1, n = 1, k = 1, k = 0,
    /// leading dimensions wider than the rows, alpha ≠ 1, beta 0 and 1 (and 0.5), plus random sizes.
    /// The two largest reach oneDNN's packing GEMM (`OneDNNGemm.prefersPackingGemm`), the rest brgemm.
    func problems(seed: UInt64) -> [Problem] {
        var rng = RNG(seed: seed)
        var shapes: [(Int, Int, Int)] = [
            (1, 37, 19), (13, 1, 40), (33, 29, 1), (5, 7, 0), (1, 1, 1), (1, 300, 257),
            (64, 96, 130), (127, 65, 257), (200, 3, 17), (150, 130, 200)
        ]
        for _ in 0..<4 { shapes.append((1 + rng.below(90), 1 + rng.below(90), 1 + rng.below(300))) }
        var out: [Problem] = []
        var i = 0
        for (m, n, k) in shapes {
            for (tA, tB) in [(false, false), (true, false), (false, true), (true, true)] {
                for beta: Float in [0, 1] {
                    let alpha: Float = [1, -0.75, 2.5][i % 3]
                    let pad = i % 4 == 0 ? (0, 0, 0) : (1 + rng.below(5), 1 + rng.below(5), 1 + rng.below(5))
                    out.append(
                        Problem(tA, tB, m, n, k, alpha: alpha, beta: i % 7 == 3 ? 0.5 : beta, pad: pad, rng: &rng))
                    i += 1
                }
            }
        }
        // Degenerate shapes with no padding at all: a row or column of one, stored transposed, has
        // equal strides in both dimensions.
        for (m, n, k) in [(1, 37, 19), (13, 1, 40), (33, 29, 1), (1, 1, 1)] {
            for (tA, tB) in [(false, false), (true, false), (false, true), (true, true)] {
                out.append(Problem(tA, tB, m, n, k, alpha: 1.5, beta: 1, pad: (0, 0, 0), rng: &rng))
            }
        }
        return out
    }

    func testBothBackendsMatchADoublePrecisionLoopOnEveryLayout() {
        for p in problems(seed: 1) {
            let d = p.run(.onednn)
            let o = p.run(.openblas)
            p.check(d, "oneDNN")
            p.check(o, "OpenBLAS")
            // Each is within the bound of the truth, so they are within twice it of each other.
            let (_, e) = p.reference()
            for i in 0..<p.m {
                for j in 0..<p.n where !(abs(Double(d[i * p.ldc + j]) - Double(o[i * p.ldc + j])) <= 2 * e[i * p.n + j])
                {
                    XCTFail(
                        """
                        oneDNN and OpenBLAS differ at (\(i), \(j)) for \(p.name): \(d[i * p.ldc + j]) vs \
                        \(o[i * p.ldc + j])
                        """
                    )
                    return
                }
            }
        }
    }

    func testLargeFP32ProductsWithoutBTransposedUseThePackingGemm() {
        XCTAssertTrue(
            Gemm.oneDNNImplementation(false, false, 150, 130, 200, type: .f32, lda: 203, ldb: 131, ldc: 134, beta: 1)
                .hasPrefix("gemm:"))
        XCTAssertTrue(
            Gemm.oneDNNImplementation(true, false, 512, 3072, 768, type: .f32, lda: 512, ldb: 3072, ldc: 3072)
                .hasPrefix("gemm:"))
        // The rest take oneDNN's own first choice (brgemm on AVX-512 machines), never its reference loop.
        for (tA, tB, m, n, k, type) in [
            (false, true, 512, 768, 3072, DType.f32), (false, false, 64, 64, 64, .f32),
            (false, false, 512, 2304, 768, .bf16), (true, false, 1, 37, 19, .f32)
        ] {
            let name = Gemm.oneDNNImplementation(tA, tB, m, n, k, type: type, lda: tA ? m : k, ldb: tB ? k : n, ldc: n)
            if type == .bf16 && !CPUInfo.current.nativeBF16 {
                // No bf16 instructions oneDNN may use (AVX2 cores, ONEDNN_MAX_CPU_ISA=AVX2): no kernel at all.
                XCTAssertEqual(name, "n/a", "oneDNN \(CPUInfo.current.onednnISA) has no native bf16 matmul")
            } else {
                XCTAssertFalse(name.hasPrefix("ref") || name == "n/a", "\(type) \(m)×\(n)×\(k) runs \(name)")
            }
        }
    }

    func testKOrAlphaZeroScalesCByBetaAndMOrNZeroTouchNothing() {
        for backend in GemmBackend.allCases {
            var c: [Float] = [1, 2, 3, 4, 5, 6]
            let a: [Float] = [9]
            let b: [Float] = [9]
            Gemm.run(on: backend, false, false, 2, 3, 0, 1, .f32(a), 1, .f32(b), 3, 0.5, &c, 3)
            XCTAssertEqual(c, [0.5, 1, 1.5, 2, 2.5, 3], "\(backend) k = 0, beta 0.5")
            c = [.nan, 2, 3, 4, 5, .nan]
            Gemm.run(on: backend, false, false, 2, 3, 0, 1, .f32(a), 1, .f32(b), 3, 0, &c, 3)
            XCTAssertEqual(c, [0, 0, 0, 0, 0, 0], "\(backend) k = 0, beta 0 clears C (NaNs included)")
            c = [1, 2, 3, 4, 5, 6]
            let nans = [Float](repeating: .nan, count: 12)
            Gemm.run(on: backend, false, false, 2, 3, 4, 0, .f32(nans), 4, .f32(nans), 3, 2, &c, 3)
            XCTAssertEqual(c, [2, 4, 6, 8, 10, 12], "\(backend) alpha = 0 reads neither A nor B")
            c = [1, 2, 3, 4, 5, 6]
            Gemm.run(on: backend, false, false, 0, 3, 4, 1, .f32(a), 1, .f32(b), 3, 0, &c, 3)
            Gemm.run(on: backend, false, false, 2, 0, 4, 1, .f32(a), 1, .f32(b), 3, 0, &c, 3)
            XCTAssertEqual(c, [1, 2, 3, 4, 5, 6], "\(backend) m = 0 or n = 0 leaves C alone")
        }
    }

    func testBF16GemmEqualsTheF32GemmOfTheWidenedInputs() {
        for p in problems(seed: 2) {
            let w = p.widened
            for backend in GemmBackend.allCases {
                let half = p.run(backend, .bf16)
                let full = w.run(backend, .f32)
                // bf16 × bf16 is exact in fp32: only the order of the fp32 sums may differ.
                w.check(half, "\(backend) bf16")
                w.check(full, "\(backend) fp32 of widened")
            }
        }
    }

    func testBF16GemmOfSmallIntegersIsExactOnBothBackends() {
        // Integers up to 8 in magnitude: every product and partial sum is exact in fp32 and in bf16,
        // so every backend and type must give the same bits as the double loop.
        var rng = RNG(seed: 3)
        for (tA, tB) in [(false, false), (true, false), (false, true), (true, true)] {
            let p = Problem(tA, tB, 70, 90, 300, alpha: 1, beta: 1, pad: (3, 2, 1), rng: &rng) {
                Float($0.below(17) - 8)
            }
            let (v, _) = p.reference()
            for backend in GemmBackend.allCases {
                for type in [DType.f32, .bf16] {
                    let c = p.run(backend, type)
                    for i in 0..<p.m {
                        for j in 0..<p.n where Double(c[i * p.ldc + j]) != v[i * p.n + j] {
                            XCTFail(
                                """
                                \(backend) \(type) \(p.name): C(\(i), \(j)) = \(c[i * p.ldc + j]), exact \
                                \(v[i * p.n + j])
                                """
                            )
                            return
                        }
                    }
                }
            }
        }
    }

    func testBothBF16KernelsAreExactOnSmallIntegersPastTheWideningBlock() {
        // k and n past the 512-element widening block (several k blocks accumulate into C, several
        // column blocks of op(B)), every transposition, padded strides: exact integers, so the
        // native and the widened kernel must both give the double loop's bits.
        var rng = RNG(seed: 4)
        for (tA, tB) in [(false, false), (true, false), (false, true), (true, true)] {
            let p = Problem(tA, tB, 5, 1100, 1300, alpha: 1, beta: 1, pad: (3, 2, 1), rng: &rng) {
                Float($0.below(17) - 8)
            }
            let (v, _) = p.reference()
            for kernel in Gemm.BF16Kernel.allCases {
                Gemm.clearFailure()
                let c = Gemm.with(bf16Kernel: kernel) { p.run(.onednn, .bf16) }
                if kernel == .native && !CPUInfo.current.nativeBF16 {
                    // Where oneDNN has no native bf16 kernel, the GEMM is a recorded failure with
                    // its message and a NaN C (CPUTests follows it into a training step).
                    XCTAssertTrue(
                        Gemm.failure?.message.contains("unimplemented") ?? false, "\(String(describing: Gemm.failure))")
                    for i in 0..<p.m { for j in 0..<p.n { XCTAssertTrue(c[i * p.ldc + j].isNaN) } }
                    Gemm.clearFailure()
                    continue
                }
                XCTAssertNil(Gemm.failure)
                var bad = 0
                for i in 0..<p.m { for j in 0..<p.n where Double(c[i * p.ldc + j]) != v[i * p.n + j] { bad += 1 } }
                XCTAssertEqual(bad, 0, "\(kernel) \(p.name): \(bad) entries differ from the exact product")
            }
        }
    }

    func testBF16RoundIsRoundToNearestEvenBitByBit() {
        let cases: [(UInt32, UInt16, String)] = [
            (0x3F80_0000, 0x3F80, "1.0"),
            (0x3F80_7FFF, 0x3F80, "just below the halfway point rounds down"),
            (0x3F80_8000, 0x3F80, "tie, kept bit even: stays"),
            (0x3F80_8001, 0x3F81, "just above the halfway point rounds up"),
            (0x3F81_8000, 0x3F82, "tie, kept bit odd: up to even"),
            (0x3F81_7FFF, 0x3F81, "below the tie"),
            (0xBF80_0000, 0xBF80, "-1.0"),
            (0xBF80_8000, 0xBF80, "negative tie to even"),
            (0xBF81_8000, 0xBF82, "negative tie, odd: away from zero to even"),
            (0xBF80_C000, 0xBF81, "negative above the tie"),
            (0x0000_0000, 0x0000, "+0"),
            (0x8000_0000, 0x8000, "-0"),
            (0x0000_8000, 0x0000, "subnormal tie to even zero"),
            (0x0001_8000, 0x0002, "subnormal tie, odd: up"),
            (0x007F_FFFF, 0x0080, "largest subnormal rounds up to the smallest normal"),
            (0x7F80_0000, 0x7F80, "+Inf"),
            (0xFF80_0000, 0xFF80, "-Inf"),
            (0x7F7F_FFFF, 0x7F80, "largest finite float overflows to +Inf"),
            (0xFF7F_FFFF, 0xFF80, "most negative finite float overflows to -Inf"),
            (0x7F7F_8000, 0x7F80, "tie between the largest bf16 (odd) and Inf goes to Inf"),
            (0x7F7F_7FFF, 0x7F7F, "largest bf16 itself, below the tie"),
            (0x7FC0_0000, 0x7FC0, "quiet NaN"),
            (0xFFC0_0000, 0xFFC0, "negative quiet NaN"),
            (0x7F80_0001, 0x7FC0, "signalling NaN with only low payload bits stays NaN (quieted), not Inf"),
            (0xFF80_FFFF, 0xFFC0, "negative NaN whose rounding would carry into Inf"),
            (0x7FBF_FFFF, 0x7FFF, "NaN keeps its top payload bits")
        ]
        let src = cases.map { Float(bitPattern: $0.0) }
        var vec = [UInt16](repeating: 0, count: src.count)
        BF16.round(src, &vec, src.count)
        for (i, (bits, want, what)) in cases.enumerated() {
            XCTAssertEqual(BF16.round(Float(bitPattern: bits)), want, "scalar \(String(bits, radix: 16)): \(what)")
            XCTAssertEqual(vec[i], want, "vector \(String(bits, radix: 16)): \(what)")
        }
        XCTAssertTrue(BF16.widen(BF16.round(.nan)).isNaN)
        XCTAssertEqual(BF16.widen(0x3F80), 1)
        XCTAssertEqual(BF16.widen(0xC040), -3)
    }

    func testVectorAndScalarFormsAgreeOnAMillionRandomFloats() {
        let n = 1_000_003  // not a multiple of 16: the scalar tail runs too
        var rng = RNG(seed: 4)
        // Half random bit patterns (NaNs, infinities, subnormals included), half ordinary values.
        let x = (0..<n).map { i in
            i % 2 == 0 ? Float(bitPattern: UInt32(truncatingIfNeeded: rng.next())) : rng.normal() * 100
        }
        var v = [UInt16](repeating: 0, count: n)
        BF16.round(x, &v, n)
        var w = [Float](repeating: 0, count: n)
        BF16.widen(v, &w, n)
        for i in 0..<n {
            let s = BF16.round(x[i])
            if v[i] != s {
                XCTFail(
                    """
                    round(\(x[i]) = 0x\(String(x[i].bitPattern, radix: 16))): vector 0x\(String(v[i], radix: 16)), \
                    scalar 0x\(String(s, radix: 16))
                    """
                )
                return
            }
            if w[i].bitPattern != BF16.widen(s).bitPattern {
                XCTFail("widen(0x\(String(s, radix: 16))) differs between forms")
                return
            }
            if x[i].isNaN != w[i].isNaN {
                XCTFail("NaN-ness of \(x[i]) not kept")
                return
            }
        }
    }

    func testRoundingPicksTheNearestBF16AndTiesGoToEven() {
        // An independent check of the rule (not of particular bits): for finite x, the chosen bf16
        // is at least as near as both neighbours, and on an exact tie its last bit is 0.
        var rng = RNG(seed: 5)
        for _ in 0..<200_000 {
            var x = Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()) & 0x7F7F_FFFF)
            if rng.below(2) == 0 { x = -x }
            if rng.below(4) == 0 { x = Float(bitPattern: (x.bitPattern & 0xFFFF_0000) | 0x8000) }  // exact ties
            // From the halfway point past the largest bf16 on, IEEE rounding overflows to Inf (the
            // bit-pattern test checks that edge); a distance to Inf says nothing there.
            if x.magnitude.bitPattern >= 0x7F7F_8000 { continue }
            let h = BF16.round(x)
            let d = abs(Double(x) - Double(BF16.widen(h)))
            for nb in [h &- 1, h &+ 1] where (nb ^ h) & 0x8000 == 0 && BF16.widen(nb).isFinite {
                let dn = abs(Double(x) - Double(BF16.widen(nb)))
                XCTAssertLessThanOrEqual(
                    d, dn,
                    """
                    0x\(String(x.bitPattern, radix: 16)) → 0x\(String(h, radix: 16)), neighbour \
                    0x\(String(nb, radix: 16)) is nearer
                    """
                )
                if d == dn {
                    XCTAssertEqual(h & 1, 0, "tie 0x\(String(x.bitPattern, radix: 16)) → odd 0x\(String(h, radix: 16))")
                }
            }
        }
    }

    func testEveryBF16SurvivesWidenThenRound() {
        for h in 0...UInt16.max {
            let isSignallingNaN = h & 0x7F80 == 0x7F80 && h & 0x7F != 0 && h & 0x40 == 0
            XCTAssertEqual(BF16.round(BF16.widen(h)), isSignallingNaN ? h | 0x40 : h, "0x\(String(h, radix: 16))")
        }
    }

    func testStridedRoundFillsOnlyTheBlock() {
        var rng = RNG(seed: 6)
        let rows = 7
        let cols = 37
        let ld = 45
        let ldd = 40
        let src = (0..<(rows * ld)).map { _ in rng.normal() }
        var dst = [UInt16](repeating: 0xABCD, count: rows * ldd)
        BF16.round(src, ld: ld, &dst, ldd: ldd, rows: rows, cols: cols)
        for r in 0..<rows {
            for c in 0..<ldd {
                XCTAssertEqual(dst[r * ldd + c], c < cols ? BF16.round(src[r * ld + c]) : 0xABCD, "(\(r), \(c))")
            }
        }
        var dense = [UInt16](repeating: 0, count: rows * cols)
        BF16.round(src, ld: ld, &dense, ldd: cols, rows: rows, cols: cols)
        XCTAssertEqual(dense, (0..<(rows * cols)).map { BF16.round(src[$0 / cols * ld + $0 % cols]) })
    }

    func testPrimitiveCacheCreatesEachShapeOncePerThread() throws {
        let a = [Float](repeating: 1, count: 64 * 64)
        let b = [Float](repeating: 2, count: 64 * 64)
        var c = [Float](repeating: 0, count: 64 * 64)
        var c2 = c
        func gemm(_ m: Int, alpha: Float = 1, ldc: Int = 64, into out: inout [Float]) {
            Gemm.run(on: .onednn, false, false, m, 32, 16, alpha, .f32(a), 64, .f32(b), 64, 0, &out, ldc)
        }
        let start = Gemm.primitivesCreated
        gemm(8, into: &c)
        XCTAssertEqual(Gemm.primitivesCreated, start + 1)
        gemm(8, into: &c2)  // same shape, other buffers
        gemm(8, into: &c)
        XCTAssertEqual(Gemm.primitivesCreated, start + 1, "a repeated shape creates nothing")
        XCTAssertEqual(c[0], 32)
        gemm(8, alpha: 0.5, into: &c)
        gemm(8, ldc: 40, into: &c)
        XCTAssertEqual(Gemm.primitivesCreated, start + 3, "alpha and ldc are part of the shape")
        XCTAssertEqual(c[0], 32)

        // A "step" of a dozen shapes: the second step creates none.
        for m in 1...12 { gemm(m, into: &c) }
        let afterFirst = Gemm.primitivesCreated
        for m in 1...12 { gemm(m, into: &c) }
        XCTAssertEqual(Gemm.primitivesCreated, afterFirst)

        // Another thread has its own cache, and the bound holds there: after more shapes than
        // it keeps, the most recent ones are still cached.
        let cap = GemmThreadState.cacheCapacity
        let counts = try InProcessCommunicator.run(ranks: 1) { _ -> [Int] in
            var out = [Float](repeating: 0, count: 64 * 128)
            gemm(8, into: &out)
            let one = Gemm.primitivesCreated
            let wide = [Float](repeating: 1, count: 4 * 128)
            func shape(_ i: Int) {
                Gemm.run(
                    on: .onednn, false, false, 1 + i % 64, 1 + i / 64, 4, 1, .f32(a), 64, .f32(wide), 128, 0, &out, 128)
            }
            for i in 0..<(cap + 10) { shape(i) }
            let cached = Gemm.primitivesCached
            let created = Gemm.primitivesCreated
            shape(cap + 9)
            return [one, cached, created, Gemm.primitivesCreated]
        }[0]
        XCTAssertEqual(counts[0], 1, "a new thread starts with an empty cache")
        XCTAssertLessThanOrEqual(counts[1], cap)
        XCTAssertEqual(counts[2], cap + 11)
        XCTAssertEqual(counts[3], counts[2], "the most recent shape survived eviction")
        XCTAssertEqual(Gemm.primitivesCreated, afterFirst, "the other thread's work created nothing here")
    }

    func testASecondTrainingStepCreatesNoPrimitives() throws {
        let cfg = Fixtures.tiny
        let batch = 2
        let seq = 7
        let n = batch * seq
        var rng = RNG(seed: 8)
        let tokens = Fixtures.randomTokens(n, below: cfg.vocabSize, rng: &rng)
        let targets = Fixtures.randomTokens(n, below: cfg.vocabSize, rng: &rng)
        let weights = Fixtures.meanWeights(n)
        let counts = try Gemm.with(backend: .onednn) {
            try InProcessCommunicator.run(ranks: 2) { comm -> [Int] in
                let lc = LoRAConfig(rank: 3, alpha: 6, targets: LoRATarget.available(in: .gpt2))
                let m = try Fixtures.randomModel(cfg, comm, trainable: .lora(lc), baseSeed: 5)
                let acts = try m.activations(batch: batch, seq: seq)
                m.lora?.initialize(seed: 9)
                var after: [Int] = []
                for _ in 0..<3 {
                    var pass = try tokens.withUnsafeBufferPointer {
                        try m.forward(
                            tokens: $0.baseAddress!, batch: batch, len: seq, into: acts,
                            context: PassContext(training: true))
                    }
                    _ = try m.lossForward(&pass, targets: targets, weights: weights, backward: true)
                    try tokens.withUnsafeBufferPointer { try m.backward(pass, tokens: $0.baseAddress!) }
                    after.append(Gemm.primitivesCreated)
                }
                return after
            }
        }
        for (r, c) in counts.enumerated() {
            XCTAssertGreaterThan(c[0], 0, "rank \(r) ran its GEMMs on oneDNN")
            XCTAssertEqual(c[1], c[0], "rank \(r): step 2 created primitives")
            XCTAssertEqual(c[2], c[0], "rank \(r): step 3 created primitives")
        }
    }

    func testGemmsFromSeveralThreadsAtOnceGiveTheSameBitsAsOneThread() throws {
        var rng = RNG(seed: 7)
        let ps = [
            Problem(false, false, 96, 160, 200, alpha: 1, beta: 1, pad: (2, 0, 3), rng: &rng),
            Problem(true, false, 130, 70, 64, alpha: 0.5, beta: 0, pad: (0, 1, 0), rng: &rng),
            Problem(false, true, 33, 257, 96, alpha: 1, beta: 1, pad: (0, 0, 0), rng: &rng),
            Problem(true, true, 1, 50, 300, alpha: -2, beta: 1, pad: (1, 1, 1), rng: &rng)
        ]
        func all() -> [[UInt32]] {
            var out: [[UInt32]] = []
            for _ in 0..<3 {
                for p in ps {
                    for backend in GemmBackend.allCases {
                        for type in [DType.f32, .bf16] { out.append(p.run(backend, type).map(\.bitPattern)) }
                    }
                }
            }
            return out
        }
        let single = try InProcessCommunicator.run(ranks: 1) { _ in (Gemm.threads(on: .onednn), all()) }[0]
        let many = try InProcessCommunicator.run(ranks: 4) { _ in (Gemm.threads(on: .onednn), all()) }
        if getenv("OMP_NUM_THREADS") == nil { XCTAssertEqual(single.0, 1, "an in-process rank runs one GEMM thread") }
        for (r, result) in many.enumerated() {
            XCTAssertEqual(result.0, single.0)
            XCTAssertTrue(result.1 == single.1, "rank \(r) of 4 differs from a lone thread")
        }
    }

    func testSetThreadsSetsTheCallingThreadsTeam() throws {
        let seen = try InProcessCommunicator.run(ranks: 1) { _ -> [Int] in
            Gemm.setThreads(2)
            let two = Gemm.threads(on: .onednn)
            Gemm.setThreads(1)
            return [two, Gemm.threads(on: .onednn), Gemm.threads(on: .openblas)]
        }[0]
        XCTAssertEqual(seen, [2, 1, 1])
    }

    func testAnUnknownBackendInTheEnvironmentIsAClearError() throws {
        let bad = try Launcher.run(
            [Launcher.binary, "doctor", "--local-ranks", "1", "--bandwidth-mib", "1", "--sgemm-size", "64"],
            timeout: 60, env: ["LORA_DIST_GEMM": "mkl"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(
            bad.output.contains("LORA_DIST_GEMM=mkl is not a GEMM backend (use onednn, openblas or auto)"), bad.output)
        let blas = try Launcher.run(
            [
                Launcher.binary, "doctor", "--local-ranks", "1", "--bandwidth-mib", "1", "--sgemm-size", "64",
                "--gemm-seconds", "0.05"
            ], timeout: 60, env: ["LORA_DIST_GEMM": "openblas"])
        XCTAssertEqual(blas.status, 0, blas.output)
        XCTAssertTrue(blas.output.contains("GEMM backend openblas"), blas.output)
    }

    func testAutoRunsEachShapeOnTheBackendItMeasuredAndGivesThatBackendsBits() throws {
        var rng = RNG(seed: 21)
        let p = Problem(false, true, 40, 70, 90, alpha: 1, beta: 0, pad: (1, 2, 3), rng: &rng)
        let (choices, out, chosen) = try InProcessCommunicator.run(ranks: 1) {
            _ -> ([String: GemmBackend], [Float], GemmBackend) in
            Gemm.autoSelect = true
            defer { Gemm.autoSelect = false }
            var c = p.c0
            p.a.withUnsafeBufferPointer { a in
                p.b.withUnsafeBufferPointer { b in
                    Gemm.run(
                        false, true, p.m, p.n, p.k, 1, .f32(a.baseAddress!), p.lda, .f32(b.baseAddress!), p.ldb, 0, &c,
                        p.ldc)
                }
            }
            let once = Gemm.autoChoices
            p.a.withUnsafeBufferPointer { a in
                p.b.withUnsafeBufferPointer { b in
                    Gemm.run(
                        false, true, p.m, p.n, p.k, 1, .f32(a.baseAddress!), p.lda, .f32(b.baseAddress!), p.ldb, 0, &c,
                        p.ldc)
                }
            }
            XCTAssertEqual(Gemm.autoChoices, once, "a shape is measured once")
            return (once, c, once.values.first ?? .onednn)
        }[0]
        XCTAssertEqual(choices.count, 1, "\(choices)")
        XCTAssertEqual(choices.keys.first, "f32 40×70×90 A·Bᵀ")
        // The product is the chosen backend's own, bit for bit.
        let direct = p.run(chosen, .f32)
        XCTAssertEqual(out.map(\.bitPattern), direct.map(\.bitPattern))
        XCTAssertTrue(Gemm.autoChoices.isEmpty, "choices are per thread")
    }
}
