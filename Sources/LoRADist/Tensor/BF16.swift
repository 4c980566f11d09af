/// bf16 conversions, vectorised (SIMD16/UInt32 lanes), round to nearest even; NaN stays NaN.
/// bf16 is the top half of an fp32: same exponent range, 8 significant bits. Widening is exact;
/// rounding adds 0x7FFF plus the lowest kept bit (ties go to even) and overflows past the
/// largest finite value into Inf, as IEEE rounding does. A NaN keeps its sign and top payload
/// bits and is made quiet, so it cannot round into Inf. Scalar and vector forms give equal bits.
public enum BF16 {
    @inline(__always)
    public static func round(_ x: Float) -> UInt16 {
        let b = x.bitPattern
        if b & 0x7FFF_FFFF > 0x7F80_0000 { return UInt16(truncatingIfNeeded: b >> 16) | 0x0040 }
        return UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
    }

    @inline(__always)
    public static func widen(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

    @inline(__always)
    static func round(_ b: SIMD16<UInt32>) -> SIMD16<UInt16> {
        let r = (b &+ 0x7FFF &+ ((b &>> 16) & 1)) &>> 16
        // NaN ⇔ |b| > 0x7F800000 ⇔ |b| + 0x007FFFFF carries into bit 31. The mask is built with
        // arithmetic: an unsigned lane comparison is not vectorised (SSE has none) and ran per lane.
        let nan = 0 &- (((b & 0x7FFF_FFFF) &+ 0x007F_FFFF) &>> 31)
        let q = (b &>> 16) | 0x0040
        return SIMD16<UInt16>(truncatingIfNeeded: (r & ~nan) | (q & nan))
    }

    public static func round(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>, _ count: Int) {
        var i = 0
        while i + 16 <= count {
            let v = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD16<UInt32>.self)
            UnsafeMutableRawPointer(dst + i).storeBytes(of: round(v), as: SIMD16<UInt16>.self)
            i += 16
        }
        while i < count {
            dst[i] = round(src[i])
            i += 1
        }
    }

    public static func widen(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        var i = 0
        while i + 16 <= count {
            let h = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD16<UInt16>.self)
            UnsafeMutableRawPointer(dst + i).storeBytes(
                of: SIMD16<UInt32>(truncatingIfNeeded: h) &<< 16, as: SIMD16<UInt32>.self)
            i += 16
        }
        while i < count {
            dst[i] = widen(src[i])
            i += 1
        }
    }

    /// rows×cols block with row strides (for strided activations), dst dense or strided.
    public static func round(
        _ src: UnsafePointer<Float>, ld: Int, _ dst: UnsafeMutablePointer<UInt16>, ldd: Int, rows: Int, cols: Int
    ) {
        if ld == cols && ldd == cols { return round(src, dst, rows * cols) }
        for r in 0..<rows { round(src + r * ld, dst + r * ldd, cols) }
    }

    /// rows×cols block with row strides, widened.
    static func widen(
        _ src: UnsafePointer<UInt16>, ld: Int, _ dst: UnsafeMutablePointer<Float>, ldd: Int, rows: Int, cols: Int
    ) {
        if ld == cols && ldd == cols { return widen(src, dst, rows * cols) }
        for r in 0..<rows { widen(src + r * ld, dst + r * ldd, cols) }
    }
}
