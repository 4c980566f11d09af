import Foundation

/// Checks of every collective against values each rank can compute alone; throws on a mismatch.
/// Run by the tests on the in-process backend and, through `comm-check`, under real mpirun.
public enum CollectiveChecks {
    public static func run(_ comm: Communicator) throws {
        let n = comm.size
        let r = comm.rank
        func expect(_ ok: Bool, _ what: @autoclosure () -> String) throws {
            if !ok { throw CommError.invalid("rank \(r) of \(n): \(what())") }
        }
        // Sum and max, three element types.
        var f = (0..<5).map { Float(r * 10 + $0) }
        try comm.allReduce(&f, op: .sum)
        try expect(f == (0..<5).map { i in Float((0..<n).reduce(0) { $0 + $1 * 10 + i }) }, "float sum \(f)")
        var d = [Double(r) + 0.5, -Double(r)]
        try comm.allReduce(&d, op: .max)
        try expect(d == [Double(n - 1) + 0.5, 0], "double max \(d)")
        var i64: [Int64] = [Int64(r) << 40, 1]
        try comm.allReduce(&i64, op: .sum)
        try expect(i64 == [Int64((0..<n).reduce(0, +)) << 40, Int64(n)], "int64 sum \(i64)")
        // Broadcast from every root.
        for root in 0..<n {
            var b = [Float(r), Float(r * r)]
            try comm.broadcast(&b, root: root)
            try expect(b == [Float(root), Float(root * root)], "broadcast from \(root): \(b)")
        }
        // AllGather in rank order.
        let g = try comm.allGather([Float(r), Float(100 + r)])
        try expect(g == (0..<n).flatMap { [Float($0), Float(100 + $0)] }, "allGather \(g)")
        try comm.barrier()
        // Split into the rows and columns of a grid with 2 columns (when the size allows).
        if n % 2 == 0 {
            let row = try comm.split(color: r / 2, key: r % 2, name: "row")
            let col = try comm.split(color: r % 2, key: r / 2, name: "col")
            try expect(row.size == 2 && row.rank == r % 2, "row group \(row.rank)/\(row.size)")
            try expect(col.size == n / 2 && col.rank == r / 2, "column group \(col.rank)/\(col.size)")
            var rs = [Float(r)]
            try row.allReduce(&rs, op: .sum)
            try expect(rs == [Float((r / 2) * 4 + 1)], "row sum \(rs)")
            var cs = [Float(r)]
            try col.allReduce(&cs, op: .sum)
            try expect(cs == [Float((0..<(n / 2)).reduce(0) { $0 + $1 * 2 + r % 2 })], "column sum \(cs)")
        }
        // A large reduction (crosses the chunking and transport protocol sizes).
        var big = [Float](repeating: Float(r + 1), count: 1 << 18)
        try comm.allReduce(&big, op: .sum)
        let want = Float(n * (n + 1) / 2)
        try expect(big.allSatisfy { $0 == want }, "large sum")
    }
}
