import Foundation

/// A sweep's rows aggregated over seeds: one group per (mode, targets, rank), in the rows' order.
public struct SweepGroup: Sendable {
    public var mode: String, targets: String, rank: Int, trainableParams: Int
    public var rows: [SweepRow]

    /// Mean and spread (sample standard deviation over seeds; 0 for one seed) of a column.
    public func stat(_ f: (SweepRow) -> Double) -> (mean: Double, spread: Double) {
        let v = rows.map(f)
        let n = Double(v.count)
        let mean = v.reduce(0, +) / n
        guard v.count > 1 else { return (mean, 0) }
        let ss = v.reduce(0) { $0 + ($1 - mean) * ($1 - mean) }
        return (mean, (ss / (n - 1)).squareRoot())
    }

    public static func of(_ rows: [SweepRow]) -> [SweepGroup] {
        var groups: [SweepGroup] = []
        for r in rows {
            if let i = groups.firstIndex(where: { $0.mode == r.mode && $0.targets == r.targets && $0.rank == r.rank }) {
                groups[i].rows.append(r)
            } else {
                groups.append(
                    SweepGroup(
                        mode: r.mode, targets: r.targets, rank: r.rank, trainableParams: r.trainableParams, rows: [r]))
            }
        }
        return groups
    }
}

public enum SweepReport {
    /// "m ± s" with `digits` decimals, of a column scaled by `scale`.
    public static func cell(_ g: SweepGroup, _ f: (SweepRow) -> Double, scale: Double = 1, digits: Int) -> String {
        let s = g.stat(f)
        return fixed(scale * s.mean, digits) + " ± " + fixed(scale * s.spread, digits)
    }

    /// The markdown table of sweep.md: per setting, mean ± standard deviation over its seeds.
    public static func markdown(_ rows: [SweepRow]) -> String {
        var lines = [
            "| mode | targets | r | trainable | seeds | held-out loss | exact match % | BLEU | final train loss |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"
        ]
        for g in SweepGroup.of(rows) {
            lines.append(
                "| \(g.mode) | \(g.targets) | \(g.rank) | \(g.trainableParams) | \(g.rows.count) | "
                    + cell(g, \.heldOutLoss, digits: 4) + " | " + cell(g, \.exactMatch, scale: 100, digits: 1) + " | "
                    + cell(g, \.bleu, digits: 1) + " | " + cell(g, \.finalTrainLoss, digits: 4) + " |")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static let palette: [(UInt8, UInt8, UInt8)] = [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (127, 127, 127)
    ]

    /// Held-out loss (mean, with a ±1 standard deviation bar) per setting. Rank sweeps: one line
    /// per target set over the ranks (equally spaced, as the paper's Table 6 lists them); target
    /// sweeps: one bar per setting.
    public static func plot(_ rows: [SweepRow], title: String) -> Canvas {
        let groups = SweepGroup.of(rows)
        let ranks = Array(Set(groups.map(\.rank))).sorted()
        let sets = groups.map(\.targets).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        let lineChart = groups.allSatisfy { $0.mode == SweepMode.rank.rawValue } && ranks.count > 1
        let slots = lineChart ? ranks.count : groups.count
        let left = 70
        let top = 34
        let plotH = 260
        let slotW = lineChart ? 90 : 70
        let legendW = lineChart ? 150 : 0
        let width = max(left + slots * slotW + 20 + legendW, left + Canvas.textWidth(title) + 16)
        var c = Canvas(width: width, height: top + plotH + 60)
        c.text(title, x: 8, y: 8)
        let stats = groups.map { $0.stat(\.heldOutLoss) }
        let hi = stats.map { $0.mean + $0.spread }.filter(\.isFinite).max() ?? 1
        let lo = lineChart ? (stats.map { $0.mean - $0.spread }.filter(\.isFinite).min() ?? 0) : 0
        let span = max(hi - lo, 1e-9)
        let y0 = lo - 0.05 * span
        let y1 = hi + 0.05 * span
        func py(_ v: Double) -> Int { top + Int(Double(plotH) * (1 - (v - y0) / (y1 - y0))) }
        // Axes, and the y range's two ends.
        c.fill(x: left, y: top, w: 1, h: plotH, (0, 0, 0))
        c.fill(x: left, y: top + plotH, w: slots * slotW, h: 1, (0, 0, 0))
        for v in [y0, y1] { c.text(fixed(v, 3), x: 4, y: py(v) - 5) }
        c.text("held-out loss", x: left + 4, y: top - 12)
        func slotX(_ k: Int) -> Int { left + k * slotW + slotW / 2 }
        func errorBar(_ x: Int, _ s: (mean: Double, spread: Double), _ col: (UInt8, UInt8, UInt8)) {
            let a = py(s.mean + s.spread)
            let b = py(s.mean - s.spread)
            c.fill(x: x, y: a, w: 1, h: max(1, b - a + 1), col)
            c.fill(x: x - 4, y: a, w: 9, h: 1, col)
            c.fill(x: x - 4, y: b, w: 9, h: 1, col)
        }
        if lineChart {
            for (k, r) in ranks.enumerated() {
                c.text("\(r)", x: slotX(k) - Canvas.textWidth("\(r)") / 2, y: top + plotH + 6)
            }
            c.text("rank r", x: left + slots * slotW / 2 - 24, y: top + plotH + 24)
            for (si, set) in sets.enumerated() {
                let col = palette[si % palette.count]
                let pts = ranks.enumerated().compactMap { k, r -> (Int, (mean: Double, spread: Double))? in
                    guard let gi = groups.firstIndex(where: { $0.targets == set && $0.rank == r }),
                        stats[gi].mean.isFinite
                    else { return nil }
                    return (slotX(k), stats[gi])
                }
                for (p, q) in zip(pts, pts.dropFirst()) { line(&c, p.0, py(p.1.mean), q.0, py(q.1.mean), col) }
                for p in pts {
                    errorBar(p.0, p.1, col)
                    c.fill(x: p.0 - 3, y: py(p.1.mean) - 3, w: 7, h: 7, col)
                }
                let ly = top + 10 + si * 18
                let lx = left + slots * slotW + 20
                c.fill(x: lx, y: ly, w: 14, h: 10, col)
                c.text(set, x: lx + 20, y: ly)
            }
        } else {
            for (k, g) in groups.enumerated() {
                let col = palette[sets.firstIndex(of: g.targets)! % palette.count]
                let s = stats[k]
                guard s.mean.isFinite else { continue }
                let x = left + k * slotW + 10
                let yb = py(s.mean)
                c.fill(x: x, y: yb, w: slotW - 20, h: top + plotH - yb, col)
                errorBar(slotX(k), s, (0, 0, 0))
                c.text(g.targets, x: slotX(k) - Canvas.textWidth(g.targets) / 2, y: top + plotH + 6)
                c.text("r\(g.rank)", x: slotX(k) - Canvas.textWidth("r\(g.rank)") / 2, y: top + plotH + 22)
            }
        }
        return c
    }

    /// A 3-pixel-wide straight line (Bresenham).
    static func line(_ c: inout Canvas, _ x0: Int, _ y0: Int, _ x1: Int, _ y1: Int, _ col: (UInt8, UInt8, UInt8)) {
        var x = x0
        var y = y0
        let dx = abs(x1 - x0)
        let dy = -abs(y1 - y0)
        let sx = x0 < x1 ? 1 : -1
        let sy = y0 < y1 ? 1 : -1
        var err = dx + dy
        while true {
            c.fill(x: x - 1, y: y - 1, w: 3, h: 3, col)
            if x == x1 && y == y1 { break }
            let e2 = 2 * err
            if e2 >= dy {
                err += dy
                x += sx
            }
            if e2 <= dx {
                err += dx
                y += sy
            }
        }
    }

    /// Writes OUT/sweep.md and OUT/sweep.png from the rows; returns their paths.
    public static func write(_ rows: [SweepRow], title: String, to out: String) throws -> [String] {
        let md = out + "/sweep.md"
        let png = out + "/sweep.png"
        try writeFileAtomically(
            Data(("# " + title + "\n\nMean ± standard deviation over seeds.\n\n" + markdown(rows)).utf8), to: md)
        try writeFileAtomically(Data(plot(rows, title: title).png()), to: png)
        return [md, png]
    }
}
