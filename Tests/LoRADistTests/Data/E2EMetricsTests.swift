import XCTest

@testable import LoRADist

/// The E2E metrics against their reference implementations (reference/e2e_metrics_reference.py:
/// sacreBLEU, NLTK's NIST, pycocoevalcap's ROUGE-L and CIDEr) on a corpus of varied outputs with
/// one to five references each, cased and lowercased; the 13a tokenizer string by string.
final class E2EMetricsTests: XCTestCase {
    static let sentences = [
        "The Vaults is a pub near Café Adriatic with prices of more than £30.",
        "Aromi is a family-friendly coffee shop in the city centre, rated 5 out of 5.",
        "Near The Bakers, Cotto serves English food at £20-25 per person.",
        "Zizzi (a pub) has a customer rating of 3 out of 5 and is not kid friendly.",
        "\"Blue Spice\" is an expensive Italian restaurant by the riverside.",
        "Try Strada: cheap, 1,000 seats & a rating of 4.5 / 5.",
        "The Eagle is a low-priced, child friendly fast food place near Burger King.",
        "Fitzbillies' coffee shop isn't family friendly; it costs less than £20.",
        "Located in the riverside area, The Golden Curry offers Indian food.",
        "Green Man is a moderately priced pub -- near All Bar One -- with an average rating.",
        "Loch Fyne serves seafood at high prices in the city centre.",
        "Clowns is a coffee shop near Clare Hall; prices are £20-25 and it rates 1 out of 5."
    ]

    /// Reference groups of one to five sentences; hypotheses that copy, cut, shuffle, swap words,
    /// change case, repeat, wander off, or are empty.
    static func corpus(seed: UInt64) -> (hyps: [String], refs: [[String]]) {
        var rng = RNG(seed: seed)
        var hyps: [String] = []
        var refs: [[String]] = []
        for k in 0..<48 {
            var group: [String] = []
            let n = 1 + rng.below(5)
            for _ in 0..<n { group.append(sentences[rng.below(sentences.count)]) }
            var w = group[0].split(separator: " ").map(String.init)
            switch k % 9 {
            case 0: break
            case 1: w.remove(at: rng.below(w.count))
            case 2: w = Array(w.prefix(max(1, w.count / 2)))
            case 3:
                let i = rng.below(w.count - 1)
                w.swapAt(i, i + 1)
            case 4: w[rng.below(w.count)] = ["restaurant", "pub", "5", "cheap", "Café", "£30."][rng.below(6)]
            case 5: w = w.map { $0.lowercased() }
            case 6: w += w.prefix(4)
            case 7: w = sentences[rng.below(sentences.count)].split(separator: " ").map(String.init).reversed()
            default: w = k == 8 ? [] : w + ["  "]
            }
            hyps.append(w.joined(separator: " "))
            refs.append(group)
        }
        return (hyps, refs)
    }

    func reference(_ hyps: [String], _ refs: [[String]], lowercase: Bool, strings: [String] = []) throws -> [String:
        Any]
    {
        let p = FileManager.default.temporaryDirectory.appendingPathComponent("e2e-metrics-\(UUID().uuidString).json")
            .path
        let input: [String: Any] = ["hypotheses": hyps, "references": refs, "lowercase": lowercase, "strings": strings]
        try JSONSerialization.data(withJSONObject: input).write(to: URL(fileURLWithPath: p))
        let out = try PythonReference.check("e2e_metrics_reference.py", [p], timeout: 120)
        return try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any]
    }

    static let tricky = [
        "a-\nb c", "x &quot;y&quot; &amp; z &lt;w&gt;", "3.14, 1,000 and 5-6 items.", "U.S.A. e.g. a.b.c end.",
        "<skipped> hi",
        "tab\there  ", "non\u{00A0}breaking space", "emoji 😀! ok", "a..b ,., x,y 9,a a,9", "9- -9 x--y 1-2-3",
        "(a)[b]{c}<d>",
        "'quote' `tick` ^caret_ ~tilde|pipe", "\u{2003}em space\u{1F}unit", "Café's £20-25 menu, ¿qué?", "", "   "
    ]

    func testTokenizer13aMatchesSacreBLEU() throws {
        let c = Self.corpus(seed: 1)
        let strings = Self.tricky + c.hyps + c.refs.flatMap { $0 }
        let ref = try reference(["a b c d e f"], [["a b c d e f"]], lowercase: false, strings: strings)
        let want = ref["tokens"] as! [String]
        XCTAssertEqual(want.count, strings.count)
        for (s, w) in zip(strings, want) { XCTAssertEqual(Tokenizer13a.tokenize(s), w, "13a of \(s.debugDescription)") }
        XCTAssertEqual(Tokenizer13a.tokenize("3.14, 1,000 and 5-6 items."), "3.14 , 1,000 and 5 - 6 items .")
    }

    func testMetricsMatchTheirReferenceImplementations() throws {
        for (seed, lowercase) in [(UInt64(1), false), (2, true)] {
            let c = Self.corpus(seed: seed)
            let ours = E2EMetrics.score(hypotheses: c.hyps, references: c.refs, lowercase: lowercase)
            let ref = try reference(c.hyps, c.refs, lowercase: lowercase)
            let what = lowercase ? "lowercased" : "cased"
            XCTAssertEqual(ours.bleu, ref["bleu"] as! Double, accuracy: 1e-7, "BLEU (0-100) " + what)
            XCTAssertEqual(ours.rougeL, ref["rougeL"] as! Double, accuracy: 1e-9, "ROUGE-L " + what)
            XCTAssertEqual(ours.nist, ref["nist"] as! Double, accuracy: 1e-9 * (ref["nist"] as! Double), "NIST " + what)
            XCTAssertEqual(
                ours.cider, ref["cider"] as! Double, accuracy: 1e-9 * (ref["cider"] as! Double), "CIDEr " + what)
            XCTAssertEqual(ours.segments, 48)
            // A corpus this mixed scores well inside each metric's range.
            XCTAssertTrue(
                ours.bleu > 20 && ours.bleu < 95 && ours.rougeL > 0.3 && ours.rougeL < 0.95 && ours.nist > 1
                    && ours.cider > 0.5,
                "\(ours)")
        }
    }

    func testPerfectOutputsAndTheFilesTheOfficialScriptsRead() throws {
        let refs = [["A b c d e.", "A b."], ["X y z w v u."]]
        let s = E2EMetrics.score(hypotheses: ["A b c d e.", "X y z w v u."], references: refs)
        XCTAssertEqual(s.bleu, 100, accuracy: 1e-10)
        XCTAssertEqual(s.rougeL, 1, accuracy: 1e-12)
        XCTAssertEqual(s.references, 3)
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("e2e-files-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        try E2EMetrics.writeFiles(
            hypotheses: ["one\ntwo", "three"], references: [["r1", "r2\r\nr2b"], ["r3"]],
            predictions: d + "/predictions.txt", referencesPath: d + "/references.txt")
        XCTAssertEqual(try String(contentsOfFile: d + "/predictions.txt", encoding: .utf8), "one two\nthree\n")
        XCTAssertEqual(try String(contentsOfFile: d + "/references.txt", encoding: .utf8), "r1\nr2 r2b\n\nr3\n")
    }
}
