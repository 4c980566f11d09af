import Foundation

/// One fine-tuning example: the model sees `context` and learns to continue with `completion`.
/// `references`, when present, are every acceptable output (E2E's several human references per
/// meaning representation), which the generation metrics score against; `completion` is then the
/// one the loss is computed on.
public struct Example: Codable, Equatable, Sendable {
    public var context: String
    public var completion: String
    public var references: [String]?
    public init(context: String, completion: String, references: [String]? = nil) {
        self.context = context
        self.completion = completion
        self.references = references
    }

    /// What a generation is scored against: `references`, or the completion alone.
    public var allReferences: [String] { references ?? [completion] }
}

/// The built-in downstream task, in the spirit of E2E NLG: a restaurant's attributes, written as a
/// compact meaning representation (`name=Blue Spice|food=Thai|area=riverside`), are to be turned
/// into one canonical sentence. The built-in base model is pretrained on free text about the same
/// restaurants (`pretrainText`), which never shows the `key=value` format, so it cannot do the task
/// before adaptation; exact match of the generated sentence is the metric.
public enum BuiltinTask {
    static let names = [
        "Blue Spice", "The Eagle", "Green Man", "Aromi", "Bibimbap House", "Clowns", "Cotto", "Fitzbillies",
        "Giraffe", "Loch Fyne", "Midsummer House", "Strada", "Taste of Cambridge", "The Cricketers",
        "The Golden Curry", "The Mill", "The Olive Grove", "The Phoenix", "The Plough", "The Punter",
        "The Rice Boat", "The Vaults", "The Waterman", "Wildwood", "Zizzi", "Alimentum", "Browns",
        "Cocum", "The Dumpling Tree", "The Wrestlers", "Travellers Rest", "The Twenty Two", "Red Lion",
        "Copper Kettle", "Silver Birch", "Old Oak", "The Lantern", "River Rose", "Sunflower", "Harbour View"
    ]
    static let types = ["restaurant", "pub", "coffee shop"]
    static let foods = ["Thai", "Italian", "French", "Indian", "Chinese", "Japanese", "English", "Mexican"]
    static let areas = ["riverside", "city centre"]
    static let prices = ["cheap", "moderate", "high"]
    static let ratings = ["low", "average", "high"]

    struct Record {
        var name: String
        var type: String?, food: String?, area: String?, price: String?, rating: String?, family: Bool?
    }

    static func record(_ rng: inout RNG) -> Record {
        var r = Record(name: names[rng.below(names.count)])
        var keys = ["type", "food", "area", "price", "rating", "family"]
        rng.shuffle(&keys)
        for k in keys.prefix(1 + rng.below(3)) {
            switch k {
            case "type": r.type = types[rng.below(types.count)]
            case "food": r.food = foods[rng.below(foods.count)]
            case "area": r.area = areas[rng.below(areas.count)]
            case "price": r.price = prices[rng.below(prices.count)]
            case "rating": r.rating = ratings[rng.below(ratings.count)]
            default: r.family = rng.below(2) == 0
            }
        }
        return r
    }

    /// The meaning representation, its attributes in a random order (the sentence order is fixed).
    static func context(_ r: Record, _ rng: inout RNG) -> String {
        var parts = ["name=\(r.name)"]
        var rest: [String] = []
        if let v = r.type { rest.append("type=\(v)") }
        if let v = r.food { rest.append("food=\(v)") }
        if let v = r.area { rest.append("area=\(v)") }
        if let v = r.price { rest.append("price=\(v)") }
        if let v = r.rating { rest.append("rating=\(v)") }
        if let v = r.family { rest.append("family=\(v ? "yes" : "no")") }
        rng.shuffle(&rest)
        parts += rest
        return parts.joined(separator: "|") + "\n"
    }

    /// The one canonical sentence for a record.
    static func sentence(_ r: Record) -> String {
        var words: [String] = []
        if let p = r.price {
            words.append(p == "moderate" ? "moderately priced" : (p == "high" ? "high priced" : "cheap"))
        }
        if let f = r.food { words.append(f) }
        words.append(r.type ?? "place")
        let phrase = words.joined(separator: " ")
        var s = "\(r.name) is \(article(phrase)) \(phrase)"
        if let a = r.area { s += a == "riverside" ? " by the riverside" : " in the city centre" }
        if let g = r.rating { s += g == "average" ? " with an average rating" : " with a \(g) rating" }
        s += "."
        if let f = r.family { s += f ? " It is family friendly." : " It is not family friendly." }
        return s
    }

    static func article(_ w: String) -> String { "AEIOUaeiou".contains(w.first ?? "x") ? "an" : "a" }

    /// `count` examples from `seed`; different seeds give (almost always) different examples.
    public static func examples(count: Int, seed: UInt64) -> [Example] {
        var rng = RNG(seed: seed)
        return (0..<count).map { _ in
            let r = record(&rng)
            return Example(context: context(r, &rng), completion: sentence(r))
        }
    }

    /// The sizes and seed of the task `train` and `evaluate` run when no --data is given.
    public static let standard = (train: 4000, valid: 200, test: 200, seed: UInt64(42))

    /// The splits of `standard`.
    public static func standardSplits() -> (train: [Example], valid: [Example], test: [Example]) {
        splits(train: standard.train, valid: standard.valid, test: standard.test, seed: standard.seed)
    }

    /// Train, validation and test splits; no test or validation meaning representation (as a set
    /// of attributes) occurs in train.
    public static func splits(train: Int, valid: Int, test: Int, seed: UInt64) -> (
        train: [Example], valid: [Example], test: [Example]
    ) {
        let trainEx = examples(count: train, seed: seed)
        let seen = Set(trainEx.map(\.completion))
        func fresh(_ n: Int, _ s: UInt64) -> [Example] {
            var out: [Example] = []
            var k: UInt64 = 0
            while out.count < n {
                for e in examples(count: n, seed: s &+ k) where !seen.contains(e.completion) && out.count < n {
                    out.append(e)
                }
                k += 1
            }
            return out
        }
        return (trainEx, fresh(valid, seed &+ 1_000_003), fresh(test, seed &+ 2_000_003))
    }

    /// Free text about the restaurants, in varied phrasings, for pretraining the base model: the
    /// vocabulary and facts of the domain, never the `key=value` representation. Documents of a
    /// few sentences are separated by blank lines.
    public static func pretrainText(bytes: Int, seed: UInt64) -> String {
        var rng = RNG(seed: seed)
        var out = ""
        out.reserveCapacity(bytes + 200)
        func pick<T>(_ a: [T]) -> T { a[rng.below(a.count)] }
        while out.utf8.count < bytes {
            let r = record(&rng)
            let n = r.name
            let t = r.type ?? pick(types)
            let f = r.food ?? pick(foods)
            let a = r.area ?? pick(areas)
            let p = r.price ?? pick(prices)
            let g = r.rating ?? pick(ratings)
            let areaPhrase = a == "riverside" ? "by the riverside" : "in the city centre"
            let s: String
            switch rng.below(15) {
            case 0: s = "\(n) is \(article(f)) \(f) \(t) \(areaPhrase)."
            case 1: s = "If you like \(f) food, try \(n). Prices are \(p)."
            case 2: s = "\(n) serves \(f) food at \(p) prices."
            case 3: s = "Customers gave \(n) \(article(g)) \(g) rating. It is \(article(t)) \(t) \(areaPhrase)."
            case 4: s = "We went to \(n) last week. The \(f) dishes were \(g == "low" ? "disappointing" : "lovely")."
            case 5: s = "Looking for a \(t) \(areaPhrase)? \(n) is \(p == "cheap" ? "cheap" : "not cheap")."
            case 6:
                s =
                    """
                    \(n), \(article(t)) \(t) serving \(f) food, is \
                    \((r.family ?? true) ? "welcoming to families" : "better without children").
                    """
            case 7: s = sentence(r)
            case 8: s = "The \(t) called \(n) has \(article(g)) \(g) customer rating and \(p) prices."
            case 9: s = "There is \(article(f)) \(f) place \(areaPhrase) called \(n)."
            case 10: s = "\(n) is \((r.family ?? false) ? "" : "not ")family friendly and sits \(areaPhrase)."
            case 11: s = "For \(p) \(f) food \(areaPhrase), people recommend \(n)."
            case 12: s = "Tell me about \(n). " + sentence(r)
            case 13: s = "Where is \(n)? \(n) is \(areaPhrase)."
            default: s = "What food does \(n) serve? \(n) serves \(f) food."
            }
            // Documents of a few sentences, separated by a blank line (end-of-text for the loader).
            out += s + (rng.below(3) == 0 ? "\n\n" : " ")
        }
        return out
    }

    /// Writes train.jsonl, valid.jsonl, test.jsonl and pretrain.txt into `dir`.
    public static func writeFiles(
        dir: String, train: Int = 4000, valid: Int = 200, test: Int = 200,
        pretrainBytes: Int = 4_000_000, seed: UInt64 = 42
    ) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let s = splits(train: train, valid: valid, test: test, seed: seed)
        for (name, ex) in [("train", s.train), ("valid", s.valid), ("test", s.test)] {
            try writeFileAtomically(Data(try JSONLines.encode(ex).utf8), to: dir + "/\(name).jsonl")
        }
        try writeFileAtomically(
            Data(pretrainText(bytes: pretrainBytes, seed: seed &+ 7).utf8), to: dir + "/pretrain.txt")
    }
}

/// JSONL of {"context": ..., "completion": ...} records.
public enum JSONLines {
    public static func encode(_ ex: [Example]) throws -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try ex.map { String(decoding: try e.encode($0), as: UTF8.self) }.joined(separator: "\n") + "\n"
    }

    /// Parses a JSONL file (UTF-8 with or without a BOM, LF or CRLF line ends; blank lines
    /// skipped); errors name the file and line. An optional "references" array of strings holds
    /// every reference of a multi-reference example.
    public static func read(_ path: String) throws -> [Example] {
        guard FileManager.default.fileExists(atPath: path) else { throw DataError.missing(path) }
        let hint = "a JSONL data file holds one example a line: {\"context\": \"...\", \"completion\": \"...\"}"
        var out: [Example] = []
        for (n, raw) in try TextFile.lines(path, emptyHint: hint) {
            let l = raw.trimmingCharacters(in: .whitespaces)
            if l.isEmpty { continue }
            guard let obj = try? JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any] else {
                throw DataError.badLine(path, n, "not a JSON object")
            }
            guard let c = obj["context"] as? String, let m = obj["completion"] as? String else {
                throw DataError.badLine(path, n, "needs string fields \"context\" and \"completion\"")
            }
            var refs: [String]?
            if let r = obj["references"] {
                guard let a = r as? [String], !a.isEmpty else {
                    throw DataError.badLine(path, n, "\"references\" must be a non-empty array of strings")
                }
                refs = a
            }
            out.append(Example(context: c, completion: m, references: refs))
        }
        return out
    }
}

/// Errors of the data pipeline; messages name the file (and line).
public enum DataError: Error, CustomStringConvertible {
    case missing(String)
    case unreadable(String)
    case badLine(String, Int, String)
    case empty(String, String)

    public var description: String {
        switch self {
        case .missing(let p): return "data file \(p) does not exist"
        case .unreadable(let p): return "data file \(p) cannot be read as UTF-8 text"
        case .badLine(let p, let n, let why): return "\(p) line \(n): \(why)"
        case .empty(let p, let why): return "\(p) has no usable examples: \(why)"
        }
    }
}
