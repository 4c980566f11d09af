import Foundation

/// sacreBLEU's default tokenizer, `13a` (mteval-v13a's): HTML entities and hyphenated line ends
/// undone, punctuation and symbols split off, periods and commas split off unless between digits,
/// a dash split after a digit, whitespace runs collapsed. Applied, like sacreBLEU, to the segment
/// with trailing whitespace removed (and lowercased first when asked).
public enum Tokenizer13a {
    static func isPythonSpace(_ u: Unicode.Scalar) -> Bool {
        u.properties.isWhitespace || (0x1C...0x1F).contains(u.value)
    }

    static func isDigit(_ u: Unicode.Scalar) -> Bool { (0x30...0x39).contains(u.value) }

    /// `[\{-\~\[-\` -\&\(-\+\:-\@\/]`: { | } ~ [ \ ] ^ _ ` space ! " # $ % & ( ) * + : ; < = > ? @ /
    static func isSymbol(_ u: Unicode.Scalar) -> Bool {
        switch u.value {
        case 0x7B...0x7E, 0x5B...0x60, 0x20...0x26, 0x28...0x2B, 0x3A...0x40, 0x2F: return true
        default: return false
        }
    }

    public static func tokenize(_ segment: String, lowercase: Bool = false) -> String {
        var s = lowercase ? segment.lowercased() : segment
        // Python's rstrip(): trailing whitespace.
        var scalars = Array(s.unicodeScalars)
        while let l = scalars.last, isPythonSpace(l) { scalars.removeLast() }
        s = String(String.UnicodeScalarView(scalars))
        s = s.replacingOccurrences(of: "<skipped>", with: "")
        s = s.replacingOccurrences(of: "-\n", with: "")
        s = s.replacingOccurrences(of: "\n", with: " ")
        if s.contains("&") {
            s = s.replacingOccurrences(of: "&quot;", with: "\"")
            s = s.replacingOccurrences(of: "&amp;", with: "&")
            s = s.replacingOccurrences(of: "&lt;", with: "<")
            s = s.replacingOccurrences(of: "&gt;", with: ">")
        }
        var a = [" "] + Array(s.unicodeScalars) + [" "]
        let sp: Unicode.Scalar = " "
        // Each rule is a left-to-right, non-overlapping substitution, as re.sub makes it.
        var b: [Unicode.Scalar] = []
        for c in a { if isSymbol(c) { b += [sp, c, sp] } else { b.append(c) } }
        a = b
        b = []
        var i = 0
        while i < a.count {  // ([^0-9])([\.,]) → \1 \2 (space after)
            if i + 1 < a.count, !isDigit(a[i]), a[i + 1] == "." || a[i + 1] == "," {
                b += [a[i], sp, a[i + 1], sp]
                i += 2
            } else {
                b.append(a[i])
                i += 1
            }
        }
        a = b
        b = []
        i = 0
        while i < a.count {  // ([\.,])([^0-9]) → " \1 \2"
            if i + 1 < a.count, a[i] == "." || a[i] == ",", !isDigit(a[i + 1]) {
                b += [sp, a[i], sp, a[i + 1]]
                i += 2
            } else {
                b.append(a[i])
                i += 1
            }
        }
        a = b
        b = []
        i = 0
        while i < a.count {  // ([0-9])(-) → "\1 \2 "
            if i + 1 < a.count, isDigit(a[i]), a[i + 1] == "-" {
                b += [a[i], sp, a[i + 1], sp]
                i += 2
            } else {
                b.append(a[i])
                i += 1
            }
        }
        // ' '.join(line.split())
        var tokens: [String] = []
        var cur = String.UnicodeScalarView()
        for c in b {
            if isPythonSpace(c) {
                if !cur.isEmpty {
                    tokens.append(String(cur))
                    cur = String.UnicodeScalarView()
                }
            } else {
                cur.append(c)
            }
        }
        if !cur.isEmpty { tokens.append(String(cur)) }
        return tokens.joined(separator: " ")
    }
}

/// The E2E NLG Challenge's automatic metrics on a corpus of generations, each with one or more
/// references: corpus BLEU-4 as sacreBLEU computes it (13a tokens, n-gram counts clipped by the
/// most any one reference holds, the closest reference length, exponential smoothing), NIST-5 as
/// NLTK's corpus_nist computes it, and ROUGE-L (β = 1.2) and CIDEr-D (σ = 6) as pycocoevalcap
/// computes them, on the same 13a tokens. METEOR is not computed: see the README.
public struct E2EScores: Codable, Equatable, Sendable {
    /// BLEU on sacreBLEU's 0–100 scale (its `score`), as `train` and `evaluate` print it.
    public var bleu: Double
    public var nist: Double
    /// ROUGE-L F (β = 1.2) in [0, 1].
    public var rougeL: Double
    public var cider: Double
    public var segments: Int
    public var references: Int
    public var lowercase: Bool
}

public enum E2EMetrics {
    public static func score(hypotheses: [String], references: [[String]], lowercase: Bool = true) -> E2EScores {
        precondition(
            hypotheses.count == references.count,
            "\(hypotheses.count) hypotheses for \(references.count) reference groups")
        let h = hypotheses.map { Tokenizer13a.tokenize($0, lowercase: lowercase) }
        let r = references.map { $0.map { Tokenizer13a.tokenize($0, lowercase: lowercase) } }
        let ht = h.map(words)
        let rt = r.map { $0.map(words) }
        return E2EScores(
            bleu: 100 * bleu(ht, rt), nist: nist(ht, rt), rougeL: rougeL(h, r), cider: cider(ht, rt),
            segments: h.count, references: references.reduce(0) { $0 + $1.count }, lowercase: lowercase)
    }

    static func words(_ s: String) -> [String] { s.split(separator: " ").map(String.init) }

    /// n-grams with their counts in order of first appearance (the order Python's Counter keeps,
    /// so sums over them add in the same order).
    static func orderedNgrams(_ t: [String], _ n: Int) -> [(gram: String, count: Int)] {
        var index: [String: Int] = [:]
        var out: [(gram: String, count: Int)] = []
        if t.count >= n {
            for i in 0...(t.count - n) {
                let g = t[i..<(i + n)].joined(separator: " ")
                if let k = index[g] {
                    out[k].count += 1
                } else {
                    index[g] = out.count
                    out.append((g, 1))
                }
            }
        }
        return out
    }

    static func ngrams(_ t: [String], _ n: Int) -> [String: Int] {
        var c: [String: Int] = [:]
        if t.count >= n { for i in 0...(t.count - n) { c[t[i..<(i + n)].joined(separator: " "), default: 0] += 1 } }
        return c
    }

    /// Corpus BLEU-4 (sacreBLEU's defaults: smooth "exp", no effective order), in [0, 1].
    public static func bleu(_ hyps: [[String]], _ refs: [[[String]]]) -> Double {
        var correct = [Int](repeating: 0, count: 4)
        var total = [Int](repeating: 0, count: 4)
        var sysLen = 0
        var refLen = 0
        for (h, rs) in zip(hyps, refs) {
            sysLen += h.count
            // Closest reference length, the shorter on a tie.
            var best = -1
            var bestDiff = -1
            for r in rs {
                let d = abs(h.count - r.count)
                if bestDiff == -1 || d < bestDiff || (d == bestDiff && r.count < best) {
                    bestDiff = d
                    best = r.count
                }
            }
            refLen += best
            for n in 1...4 {
                var maxRef: [String: Int] = [:]
                for r in rs { for (g, c) in ngrams(r, n) { maxRef[g] = max(maxRef[g] ?? 0, c) } }
                for (g, c) in ngrams(h, n) {
                    total[n - 1] += c
                    correct[n - 1] += min(c, maxRef[g] ?? 0)
                }
            }
        }
        var bp = 1.0
        if sysLen < refLen { bp = sysLen > 0 ? exp(1 - Double(refLen) / Double(sysLen)) : 0 }
        guard correct.contains(where: { $0 > 0 }) else { return 0 }
        var logSum = 0.0
        var smooth = 1.0
        for n in 0..<4 {
            // sacreBLEU stops at an order with no n-grams, leaving log(0) for the rest: BLEU 0.
            guard total[n] > 0 else { return 0 }
            let p: Double
            if correct[n] == 0 {
                smooth *= 2
                p = 1 / (smooth * Double(total[n]))
            } else {
                p = Double(correct[n]) / Double(total[n])
            }
            logSum += log(p)
        }
        return bp * exp(logSum / 4)
    }

    /// NIST-5 as NLTK's corpus_nist: information weights from the n-gram counts of all references,
    /// each segment scored against the reference that gives it the best precision per order.
    public static func nist(_ hyps: [[String]], _ refs: [[[String]]], n maxN: Int = 5) -> Double {
        var freq: [String: Int] = [:]
        var refWords = 0
        for rs in refs {
            for r in rs {
                for n in 1...maxN { for (g, c) in ngrams(r, n) { freq[g, default: 0] += c } }
                refWords += r.count
            }
        }
        func info(_ g: String) -> Double {
            let parts = g.split(separator: " ", omittingEmptySubsequences: false)
            let num: Int
            if parts.count > 1, let m = freq[parts.dropLast().joined(separator: " ")] {
                num = m
            } else {
                num = refWords
            }
            return log2(Double(num) / Double(freq[g]!))
        }
        var weights: [String: Double] = [:]
        var precisionSum = 0.0
        var lRef = 0
        var lSys = 0
        for n in 1...maxN {
            var numerator = 0.0
            var denominator = 0
            for (h, rs) in zip(hyps, refs) {
                let hg = orderedNgrams(h, n)
                let hypCount = hg.reduce(0) { $0 + $1.count }
                var best: (p: Double, num: Double, den: Int, len: Int)?
                for r in rs {
                    let rg = ngrams(r, n)
                    var num = 0.0
                    for (g, c) in hg {
                        let o = min(c, rg[g] ?? 0)
                        guard o > 0 else { continue }
                        if weights[g] == nil { weights[g] = info(g) }
                        num += weights[g]! * Double(o)
                    }
                    let cand = (p: hypCount == 0 ? 0 : num / Double(hypCount), num: num, den: hypCount, len: r.count)
                    // Python's max over (precision, numerator, denominator, ref_len) tuples.
                    if let b = best {
                        if (cand.p, cand.num, cand.den, cand.len) > (b.p, b.num, b.den, b.len) { best = cand }
                    } else {
                        best = cand
                    }
                }
                numerator += best!.num
                denominator += best!.den
                lRef += best!.len
                lSys += h.count
            }
            if denominator > 0 { precisionSum += numerator / Double(denominator) }
        }
        let ratio = Double(lSys) / Double(lRef)
        let penalty: Double
        if ratio > 0 && ratio < 1 {
            let beta = log(0.5) / pow(log(1.5), 2)
            penalty = exp(beta * pow(log(ratio), 2))
        } else {
            penalty = max(min(ratio, 1), 0)
        }
        return precisionSum * penalty
    }

    static func lcs(_ a: [Substring], _ b: [Substring]) -> Int {
        var prev = [Int](repeating: 0, count: b.count + 1)
        var cur = prev
        for x in a {
            for (j, y) in b.enumerated() { cur[j + 1] = x == y ? prev[j] + 1 : max(prev[j + 1], cur[j]) }
            swap(&prev, &cur)
        }
        return prev[b.count]
    }

    /// ROUGE-L as pycocoevalcap: per segment, the best LCS precision and the best LCS recall over
    /// its references, F with β = 1.2; the corpus score is the mean.
    public static func rougeL(_ hyps: [String], _ refs: [[String]], beta: Double = 1.2) -> Double {
        guard !hyps.isEmpty else { return 0 }
        var sum = 0.0
        for (h, rs) in zip(hyps, refs) {
            // str.split(" "): an empty string is one empty token.
            let c = h.split(separator: " ", omittingEmptySubsequences: false)
            var pMax = 0.0
            var rMax = 0.0
            for r in rs {
                let t = r.split(separator: " ", omittingEmptySubsequences: false)
                let l = Double(lcs(t, c))
                pMax = max(pMax, l / Double(c.count))
                rMax = max(rMax, l / Double(t.count))
            }
            if pMax != 0 && rMax != 0 { sum += (1 + beta * beta) * pMax * rMax / (rMax + beta * beta * pMax) }
        }
        return sum / Double(hyps.count)
    }

    /// CIDEr-D as pycocoevalcap: tf-idf vectors of 1- to 4-grams with document frequencies over the
    /// corpus's reference groups, cosine similarity with the hypothesis counts clipped at the
    /// reference's, a Gaussian penalty (σ = 6) on the difference in length (pycocoevalcap counts
    /// bigrams as the length), averaged over orders and references, × 10; the corpus score is the mean.
    public static func cider(_ hyps: [[String]], _ refs: [[[String]]], sigma: Double = 6) -> Double {
        guard !hyps.isEmpty else { return 0 }
        func counts(_ t: [String]) -> [[String: Int]] { (1...4).map { ngrams(t, $0) } }
        let refCounts = refs.map { $0.map(counts) }
        var df: [String: Double] = [:]
        for group in refCounts {
            var seen = Set<String>()
            for r in group { for m in r { for g in m.keys { seen.insert(g) } } }
            for g in seen { df[g, default: 0] += 1 }
        }
        let refLen = log(Double(refs.count))
        func vec(_ c: [[String: Int]]) -> (v: [[String: Double]], norm: [Double], length: Int) {
            var v = [[String: Double]](repeating: [:], count: 4)
            var norm = [Double](repeating: 0, count: 4)
            for n in 0..<4 {
                // Sums in a fixed order (a dictionary's differs from process to process, and so
                // would the last bits of the score).
                for (g, tf) in c[n].sorted(by: { $0.key < $1.key }) {
                    let x = Double(tf) * (refLen - log(max(1, df[g] ?? 0)))
                    v[n][g] = x
                    norm[n] += x * x
                }
            }
            return (v, norm.map { $0.squareRoot() }, c[1].values.reduce(0, +))
        }
        var total = 0.0
        for (h, group) in zip(hyps, refCounts) {
            let hv = vec(counts(h))
            var score = [Double](repeating: 0, count: 4)
            for rc in group {
                let rv = vec(rc)
                let delta = Double(hv.length - rv.length)
                for n in 0..<4 {
                    var val = 0.0
                    for (g, x) in hv.v[n].sorted(by: { $0.key < $1.key }) {
                        let y = rv.v[n][g] ?? 0
                        val += min(x, y) * y
                    }
                    if hv.norm[n] != 0 && rv.norm[n] != 0 { val /= hv.norm[n] * rv.norm[n] }
                    score[n] += val * exp(-(delta * delta) / (2 * sigma * sigma))
                }
            }
            total += score.reduce(0, +) / 4 / Double(group.count) * 10
        }
        return total / Double(hyps.count)
    }

    /// A generation or reference as one line of predictions.txt or references.txt (line breaks as spaces).
    public static func fileLine(_ s: String) -> String {
        s.replacingOccurrences(of: "\r\n", with: " ").replacingOccurrences(of: "\n", with: " ").replacingOccurrences(
            of: "\r", with: " ")
    }

    /// The files the official E2E scripts read: predictions one per line; references grouped per
    /// segment, one per line, a blank line between groups. Line breaks inside a text become spaces.
    public static func writeFiles(
        hypotheses: [String], references: [[String]], predictions: String, referencesPath: String
    ) throws {
        let line = fileLine
        try writeFileAtomically(Data(hypotheses.map { line($0) + "\n" }.joined().utf8), to: predictions)
        try writeFileAtomically(
            Data(references.map { $0.map { line($0) + "\n" }.joined() }.joined(separator: "\n").utf8),
            to: referencesPath)
    }
}
