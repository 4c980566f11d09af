/// A row-major matrix in memory: `rows` × `cols` of fp32 or bf16, row stride `ld` (≥ cols),
/// possibly read as its transpose. The shape is written once, here, so a GEMM call states its
/// operands, not 13 integers.
public struct Mat {
    public let raw: UnsafeMutableRawPointer
    public let type: DType
    public let rows: Int, cols: Int, ld: Int
    /// Read as the transpose of the stored matrix (op(M) = Mᵀ).
    public let transposed: Bool

    init(raw: UnsafeMutableRawPointer, type: DType, _ rows: Int, _ cols: Int, ld: Int?, transposed: Bool) {
        self.raw = raw
        self.type = type
        self.rows = rows
        self.cols = cols
        self.ld = ld ?? cols
        self.transposed = transposed
        precondition(self.ld >= cols, "row stride \(self.ld) below the width \(cols)")
    }

    public init(_ base: UnsafeMutablePointer<Float>, _ rows: Int, _ cols: Int, ld: Int? = nil) {
        self.init(raw: UnsafeMutableRawPointer(base), type: .f32, rows, cols, ld: ld, transposed: false)
    }

    public init(_ base: UnsafePointer<Float>, _ rows: Int, _ cols: Int, ld: Int? = nil) {
        self.init(UnsafeMutablePointer(mutating: base), rows, cols, ld: ld)
    }

    public init(bf16 base: UnsafeMutablePointer<UInt16>, _ rows: Int, _ cols: Int, ld: Int? = nil) {
        self.init(raw: UnsafeMutableRawPointer(base), type: .bf16, rows, cols, ld: ld, transposed: false)
    }

    /// The fp32 elements (an fp32 matrix only).
    @inline(__always) public var base: UnsafeMutablePointer<Float> {
        precondition(type == .f32, "an fp32 matrix was expected")
        return raw.assumingMemoryBound(to: Float.self)
    }

    /// The bf16 elements (a bf16 matrix only).
    @inline(__always) public var halfBase: UnsafeMutablePointer<UInt16> {
        precondition(type == .bf16, "a bf16 matrix was expected")
        return raw.assumingMemoryBound(to: UInt16.self)
    }

    /// The same memory read as its transpose.
    public var T: Mat { Mat(raw: raw, type: type, rows, cols, ld: ld, transposed: !transposed) }
    /// Rows and columns of op(M).
    @inline(__always) public var opRows: Int { transposed ? cols : rows }
    @inline(__always) public var opCols: Int { transposed ? rows : cols }

    /// Columns `offset ..< offset+width` of the stored matrix (same rows, same stride).
    public func columns(_ offset: Int, _ width: Int) -> Mat {
        precondition(!transposed && offset >= 0 && offset + width <= cols)
        let size = type == .f32 ? 4 : 2
        return Mat(raw: raw + offset * size, type: type, rows, width, ld: ld, transposed: false)
    }

    /// Columns `offset ..< offset+width` of op(M): stored columns, or stored rows when read transposed.
    public func opColumns(_ offset: Int, _ width: Int) -> Mat {
        guard transposed else { return columns(offset, width) }
        precondition(offset >= 0 && offset + width <= rows)
        let size = type == .f32 ? 4 : 2
        return Mat(raw: raw + offset * ld * size, type: type, width, cols, ld: ld, transposed: true)
    }

    @inline(__always) var operand: GemmOperand {
        type == .f32 ? .f32(raw.assumingMemoryBound(to: Float.self)) : .bf16(raw.assumingMemoryBound(to: UInt16.self))
    }
}

/// c = alpha · op(a) · op(b) + beta · c, checking that the shapes agree; a and b are both fp32 or
/// both bf16, c is fp32 (bf16 products accumulate in fp32). Every GEMM of the model goes through
/// here, then through the backend seam `Gemm.run`.
/// A wrong shape stops the process with the shapes in its message, in every build (an -O
/// `precondition` traps without its message).
@inline(__always)
public func matmul(_ c: Mat, _ a: Mat, _ b: Mat, alpha: Float = 1, beta: Float = 0) {
    if !(!c.transposed && c.type == .f32 && a.type == b.type && a.opRows == c.rows && b.opCols == c.cols
        && a.opCols == b.opRows)
    {
        fatalError(
            """
            matmul shapes: [\(c.rows)×\(c.cols)] = [\(a.opRows)×\(a.opCols)]·[\(b.opRows)×\(b.opCols)] (\(a.type), \
            \(b.type))
            """
        )
    }
    Gemm.run(
        a.transposed, b.transposed, c.rows, c.cols, a.opCols, alpha, a.operand, a.ld, b.operand, b.ld, beta, c.base,
        c.ld)
}

/// `dst` [rows, cols] (dense) = src rounded to bf16, for the input of a bf16 GEMM.
@inline(__always)
func roundedToBF16(_ src: Mat, into dst: UnsafeMutablePointer<UInt16>) -> Mat {
    BF16.round(src.base, ld: src.ld, dst, ldd: src.cols, rows: src.rows, cols: src.cols)
    return Mat(bf16: dst, src.rows, src.cols)
}
