/// A plain fixed-width text table: columns right-aligned except those named in `left`.
public struct TextTable {
    public var header: [String]
    public var rows: [[String]] = []
    public var left: Set<Int>

    public init(_ header: [String], left: Set<Int> = [0]) {
        self.header = header
        self.left = left
    }

    public mutating func add(_ row: [String]) { rows.append(row) }

    public func render() -> String {
        let widths = header.indices.map { c in ([header] + rows).map { c < $0.count ? $0[c].count : 0 }.max() ?? 0 }
        func line(_ r: [String]) -> String {
            r.indices.map { c in
                let s = r[c]
                let pad = String(repeating: " ", count: max(0, widths[c] - s.count))
                return left.contains(c) ? s + pad : pad + s
            }.joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n") + "\n"
    }
}

/// `%.Nf` without Foundation's varargs; nan and ±inf as printf writes them (a sweep whose runs
/// generate nothing has no exact match or BLEU).
public func fixed(_ v: Double, _ digits: Int) -> String {
    guard v.isFinite else { return v.isNaN ? "nan" : v < 0 ? "-inf" : "inf" }
    var p = 1.0
    for _ in 0..<digits { p *= 10 }
    let r = (abs(v) * p).rounded() / p
    var s = String(Int(r))
    if digits > 0 {
        let frac = Int(((r - Double(Int(r))) * p).rounded())
        let fs = String(frac)
        s += "." + String(repeating: "0", count: max(0, digits - fs.count)) + fs
    }
    return (v < 0 && r != 0 ? "-" : "") + s
}
