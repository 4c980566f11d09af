import COpenBLAS
import Foundation

/// A dense row-major matrix of doubles: the analysis works in float64 so its figures do not carry
/// float32 rounding into the singular vectors.
public struct DMatrix: Equatable, Sendable {
    public var rows: Int
    public var cols: Int
    public var data: [Double]  // row-major [rows, cols]

    public init(rows: Int, cols: Int, data: [Double]) {
        precondition(
            data.count == rows * cols, "DMatrix \(rows)×\(cols) needs \(rows * cols) values, got \(data.count)")
        self.rows = rows
        self.cols = cols
        self.data = data
    }

    public init(rows: Int, cols: Int) {
        self.init(rows: rows, cols: cols, data: [Double](repeating: 0, count: rows * cols))
    }

    public subscript(i: Int, j: Int) -> Double {
        get { data[i * cols + j] }
        set { data[i * cols + j] = newValue }
    }

    public var transposed: DMatrix {
        var t = DMatrix(rows: cols, cols: rows)
        for i in 0..<rows { for j in 0..<cols { t.data[j * rows + i] = data[i * cols + j] } }
        return t
    }

    public var frobenius: Double { data.reduce(0) { $0 + $1 * $1 }.squareRoot() }

    public static func * (a: DMatrix, b: DMatrix) -> DMatrix {
        precondition(a.cols == b.rows, "shapes \(a.rows)×\(a.cols) and \(b.rows)×\(b.cols) do not multiply")
        var c = DMatrix(rows: a.rows, cols: b.cols)
        a.data.withUnsafeBufferPointer { pa in
            b.data.withUnsafeBufferPointer { pb in
                c.data.withUnsafeMutableBufferPointer { pc in
                    cblas_dgemm(
                        CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(a.rows), Int32(b.cols), Int32(a.cols), 1,
                        pa.baseAddress, Int32(a.cols), pb.baseAddress, Int32(b.cols), 0, pc.baseAddress, Int32(b.cols))
                }
            }
        }
        return c
    }

    public static func * (s: Double, a: DMatrix) -> DMatrix {
        DMatrix(rows: a.rows, cols: a.cols, data: a.data.map { s * $0 })
    }
}

/// Errors of the analysis; messages say what failed and on which matrix.
public enum AnalysisError: Error, CustomStringConvertible {
    case lapack(String, Int32)
    case input(String)

    public var description: String {
        switch self {
        case .lapack(let what, let info): return "the SVD of \(what) did not converge (LAPACK info \(info))"
        case .input(let why): return why
        }
    }
}

/// Thin singular value decomposition M = U·diag(s)·Vt through LAPACK's divide-and-conquer
/// (dgesdd): U [m, k], s [k] descending, Vt [k, n] with k = min(m, n).
public struct SVD: Sendable {
    public var u: DMatrix
    public var s: [Double]
    public var vt: DMatrix

    public init(_ m: DMatrix, name: String = "a matrix") throws {
        let k = min(m.rows, m.cols)
        var a = m.data
        var s = [Double](repeating: 0, count: k)
        var u = [Double](repeating: 0, count: m.rows * k)
        var vt = [Double](repeating: 0, count: k * m.cols)
        let info = LAPACKE_dgesdd(
            LAPACK_ROW_MAJOR, Int8(UInt8(ascii: "S")), Int32(m.rows), Int32(m.cols), &a, Int32(m.cols),
            &s, &u, Int32(k), &vt, Int32(m.cols))
        guard info == 0 else { throw AnalysisError.lapack(name, info) }
        self.u = DMatrix(rows: m.rows, cols: k, data: u)
        self.s = s
        self.vt = DMatrix(rows: k, cols: m.cols, data: vt)
    }

    /// Singular values only (dgesdd with jobz = N).
    public static func values(_ m: DMatrix, name: String = "a matrix") throws -> [Double] {
        var a = m.data
        var s = [Double](repeating: 0, count: min(m.rows, m.cols))
        var none = [Double](repeating: 0, count: 1)
        var none2 = [Double](repeating: 0, count: 1)
        let info = LAPACKE_dgesdd(
            LAPACK_ROW_MAJOR, Int8(UInt8(ascii: "N")), Int32(m.rows), Int32(m.cols), &a, Int32(m.cols),
            // U, Vt unused; LAPACKE still checks their strides
            &s, &none, Int32(max(1, m.rows)), &none2, Int32(max(1, m.cols)))
        guard info == 0 else { throw AnalysisError.lapack(name, info) }
        return s
    }
}
