import Foundation

/// Heatmaps of φ(i, j) like the paper's Figures 3 and 4: one panel per layer, i down the rows
/// (the first adapter's top-i directions), j across (the second's), coloured 0 → 1 on viridis.
public enum Heatmap {
    /// Viridis at five stops, interpolated linearly; v is clamped to [0, 1].
    public static func color(_ v: Double) -> (UInt8, UInt8, UInt8) {
        let stops: [(Double, Double, Double)] = [
            (68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)
        ]
        let x = min(1, max(0, v.isFinite ? v : 0)) * Double(stops.count - 1)
        let i = min(stops.count - 2, Int(x))
        let f = x - Double(i)
        let a = stops[i]
        let b = stops[i + 1]
        func mix(_ p: Double, _ q: Double) -> UInt8 { UInt8((p + (q - p) * f).rounded()) }
        return (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    }

    /// One PNG of panels (label, φ) stacked top to bottom under `title`, with a colour bar.
    public static func render(title: String, panels: [(label: String, phi: [[Double]])]) -> Canvas {
        let r1 = panels.map(\.phi.count).max() ?? 1
        let r2 = panels.map { $0.phi.first?.count ?? 1 }.max() ?? 1
        let cw = min(24, max(3, 480 / r2))
        let ch = min(24, max(3, max(cw, 64 / r1)))
        let left = 40
        let top = 28
        let labelH = 16
        let tickH = 16
        let gap = 10
        let barW = 16
        let gridW = r2 * cw
        let gridH = r1 * ch
        let panelH = labelH + gridH + tickH
        let width = max(left + gridW + 24 + barW + 40, left + Canvas.textWidth(title) + 8)
        let height = top + panels.count * (panelH + gap) + 4
        var c = Canvas(width: width, height: height)
        c.text(title, x: 8, y: 8)
        for (k, p) in panels.enumerated() {
            let y0 = top + k * (panelH + gap)
            c.text(p.label, x: left, y: y0 + 2)
            let gy = y0 + labelH
            for (i, row) in p.phi.enumerated() {
                for (j, v) in row.enumerated() { c.fill(x: left + j * cw, y: gy + i * ch, w: cw, h: ch, color(v)) }
            }
            // Ticks: i = 1 and r1 on the left, j = 1 and r2 below.
            let n1 = p.phi.count
            let n2 = p.phi.first?.count ?? 0
            c.text("1", x: left - 10, y: gy + (ch - 10) / 2)
            if n1 > 1 {
                c.text("\(n1)", x: left - 4 - Canvas.textWidth("\(n1)"), y: gy + (n1 - 1) * ch + (ch - 10) / 2)
            }
            c.text("i", x: 4, y: gy + (n1 * ch) / 2 - 5)
            c.text("1", x: left + (cw - 6) / 2, y: gy + n1 * ch + 3)
            if n2 > 1 {
                c.text("\(n2)", x: left + (n2 - 1) * cw + cw / 2 - Canvas.textWidth("\(n2)") / 2, y: gy + n1 * ch + 3)
            }
            c.text("j", x: left + n2 * cw / 2, y: gy + n1 * ch + 3)
        }
        // Colour bar: 1 at the top, 0 at the bottom.
        let bx = left + gridW + 24
        let by = top + labelH
        let bh = max(40, height - by - 24)
        for y in 0..<bh { c.fill(x: bx, y: by + y, w: barW, h: 1, color(1 - Double(y) / Double(max(1, bh - 1)))) }
        c.text("1", x: bx + barW + 4, y: by)
        c.text("0", x: bx + barW + 4, y: by + bh - 10)
        return c
    }

    /// Writes one PNG per (target, matrix) of a report's similarities into `dir`; returns the paths.
    public static func write(_ report: AnalysisReport, to dir: String) throws -> [String] {
        guard report.adapters.count == 2 else { return [] }
        var paths: [String] = []
        let r1 = report.adapters[0].rank
        let r2 = report.adapters[1].rank
        for t in LoRATarget.allCases.map(\.rawValue) {
            for m in ["A", "B"] {
                let es = report.similarity.filter { $0.target == t && $0.matrix == m }.sorted { $0.layer < $1.layer }
                guard !es.isEmpty else { continue }
                let title = "phi(i,j) of \(m), \(t): r=\(r1) (i) vs r=\(r2) (j)"
                let canvas = render(title: title, panels: es.map { ("layer \($0.layer)", $0.phi) })
                let p = dir + "/phi-\(m)-\(t).png"
                try writeFileAtomically(Data(canvas.png()), to: p)
                paths.append(p)
            }
        }
        return paths
    }
}
