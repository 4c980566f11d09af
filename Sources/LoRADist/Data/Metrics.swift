import Foundation

/// Task metrics on generated text: exact match and corpus BLEU-4 (Papineni et al.: clipped n-gram
/// precisions for n = 1…4, geometric mean, brevity penalty; whitespace tokens).
public enum TextMetrics {
    public static func exactMatch(_ hyp: [String], _ ref: [String]) -> Double {
        guard !hyp.isEmpty else { return 0 }
        return Double(zip(hyp, ref).filter { $0 == $1 }.count) / Double(hyp.count)
    }

    /// BLEU's additive statistics: matches[1…4], totals[1…4], hypothesis length, reference length.
    public static func bleuStats(_ hyp: [String], _ ref: [String]) -> [Int] {
        var match = [Int](repeating: 0, count: 4), total = [Int](repeating: 0, count: 4)
        var hypLen = 0, refLen = 0
        for (h, r) in zip(hyp, ref) {
            let ht = h.split(separator: " ").map(String.init), rt = r.split(separator: " ").map(String.init)
            hypLen += ht.count
            refLen += rt.count
            for n in 1...4 {
                guard ht.count >= n else { continue }
                var refCounts: [String: Int] = [:]
                if rt.count >= n { for i in 0...(rt.count - n) { refCounts[rt[i..<(i + n)].joined(separator: " "), default: 0] += 1 } }
                var hypCounts: [String: Int] = [:]
                for i in 0...(ht.count - n) { hypCounts[ht[i..<(i + n)].joined(separator: " "), default: 0] += 1 }
                for (g, c) in hypCounts { match[n - 1] += min(c, refCounts[g] ?? 0) }
                total[n - 1] += ht.count - n + 1
            }
        }
        return match + total + [hypLen, refLen]
    }

    /// Corpus BLEU-4 from `bleuStats` (possibly summed over shards of the corpus).
    public static func bleu(stats s: [Int]) -> Double {
        let match = Array(s[0..<4]), total = Array(s[4..<8]), hypLen = s[8], refLen = s[9]
        guard hypLen > 0, match.allSatisfy({ $0 > 0 }) else { return 0 }
        let logP = (0..<4).map { log(Double(match[$0]) / Double(total[$0])) }.reduce(0, +) / 4
        let bp = hypLen >= refLen ? 1 : exp(1 - Double(refLen) / Double(hypLen))
        return bp * exp(logP)
    }

    public static func bleu(_ hyp: [String], _ ref: [String]) -> Double { bleu(stats: bleuStats(hyp, ref)) }
}
