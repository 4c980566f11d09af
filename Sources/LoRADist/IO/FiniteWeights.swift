import Foundation

/// Refuses `values` (tensor `tensor` of `file`) if any is NaN or ±Inf, naming the tensor and the
/// first bad element: a damaged or diverged file is found when it is loaded, not as a NaN loss later.
public func requireFinite(
    _ values: UnsafeBufferPointer<Float>, tensor: String, file: String, shape: [Int]? = nil, what: String
) throws {
    for (i, v) in values.enumerated() where !v.isFinite {
        let at: String
        if let shape, shape.count == 2, shape[1] > 0 { at = "[\(i / shape[1]), \(i % shape[1])]" } else { at = "\(i)" }
        throw IOError.corrupt(
            file, "tensor \(tensor) holds \(v.isNaN ? "NaN" : (v > 0 ? "+Inf" : "-Inf")) at element \(at): \(what)")
    }
}

public func requireFinite(_ values: [Float], tensor: String, file: String, shape: [Int]? = nil, what: String) throws {
    try values.withUnsafeBufferPointer { try requireFinite($0, tensor: tensor, file: file, shape: shape, what: what) }
}

/// A weight source read from files, which says where each tensor comes from (for messages).
public protocol FileWeightSource: WeightSource {
    /// The path of the file `name` is read from, and the tensor's name in it.
    func location(of name: String) throws -> (path: String, tensor: String)
}

/// A weight source that checks every block it reads for NaN and Inf (each rank checks the shard
/// it loads), naming the file's tensor and the element.
public struct FiniteWeightSource: WeightSource {
    public let inner: any FileWeightSource

    public init(_ inner: any FileWeightSource) { self.inner = inner }

    public func shape(of name: String) throws -> [Int] { try inner.shape(of: name) }

    public func readBlock(_ name: String, rows: Range<Int>, cols: Range<Int>, into dst: UnsafeMutablePointer<Float>)
        throws
    {
        try inner.readBlock(name, rows: rows, cols: cols, into: dst)
        let n = rows.count * cols.count
        for k in 0..<n where !dst[k].isFinite {
            let s = try inner.shape(of: name)
            let (path, tensor) = try inner.location(of: name)
            let at =
                s.count == 2
                ? "[\(rows.lowerBound + k / cols.count), \(cols.lowerBound + k % cols.count)]"
                : "\(cols.lowerBound + k)"
            throw IOError.corrupt(
                path,
                """
                tensor \(tensor) holds \(dst[k].isNaN ? "NaN" : (dst[k] > 0 ? "+Inf" : "-Inf")) at element \(at): the \
                base weights are damaged (download or convert the checkpoint again)
                """
            )
        }
    }
}
