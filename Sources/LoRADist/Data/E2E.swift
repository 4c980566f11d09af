import Foundation

/// The E2E NLG Challenge data as published: `trainset.csv`, `devset.csv` and `testset_w_refs.csv`,
/// RFC 4180 CSV (quoted fields may hold commas, doubled quotes and line breaks; CRLF record ends)
/// with a header naming the columns `mr` (the meaning representation, e.g.
/// `name[The Vaults], eatType[pub], near[Café Adriatic]`) and `ref` (one human reference). An MR
/// appears once per reference; grouping gathers all of its references in first-seen order.
public enum E2EData {
    public static let files = (train: "trainset.csv", valid: "devset.csv", test: "testset_w_refs.csv")

    /// One meaning representation with every reference written for it.
    public struct Group: Equatable, Sendable {
        public var mr: String
        public var refs: [String]
    }

    /// The records of an RFC 4180 CSV text: fields split at commas outside quotes, records at line
    /// ends outside quotes; a quoted field's `""` is one quote. Throws naming the line of an
    /// unterminated quote or of text after a closing quote.
    public static func parseCSV(_ text: String, path: String) throws -> [(line: Int, fields: [String])] {
        var records: [(Int, [String])] = []
        var fields: [String] = []
        var field = ""
        var inQuotes = false
        var afterQuote = false
        var fieldStarted = false
        var line = 1
        var recordLine = 1
        var quoteLine = 1
        func endField() {
            fields.append(field)
            field = ""
            afterQuote = false
            fieldStarted = false
        }
        func endRecord() {
            endField()
            // A blank line is no record.
            if !(fields.count == 1 && fields[0].isEmpty) { records.append((recordLine, fields)) }
            fields = []
        }
        var it = text.makeIterator()
        var pending: Character? = nil
        while let c = pending ?? it.next() {
            pending = nil
            if inQuotes {
                if c == "\"" {
                    if let n = it.next() {
                        if n == "\"" {
                            field.append("\"")
                        } else {
                            inQuotes = false
                            afterQuote = true
                            pending = n
                        }
                    } else {
                        inQuotes = false
                        afterQuote = true
                    }
                } else {
                    if c == "\n" || c == "\r\n" { line += 1 }
                    field.append(c == "\r\n" ? "\n" : c)
                }
                continue
            }
            switch c {
            case ",": endField()
            case "\n", "\r\n", "\r":
                endRecord()
                line += 1
                recordLine = line
            case "\"" where !fieldStarted:
                inQuotes = true
                fieldStarted = true
                quoteLine = line
            default:
                if afterQuote {
                    throw DataError.badLine(
                        path, line, "text after a closing quote (a quote inside a quoted field is written \"\")")
                }
                field.append(c)
                fieldStarted = true
            }
        }
        if inQuotes { throw DataError.badLine(path, quoteLine, "a quoted field is never closed") }
        if fieldStarted || afterQuote || !fields.isEmpty { endRecord() }
        return records
    }

    /// The (mr, ref) rows of an E2E CSV file (UTF-8 with or without a BOM, LF or CRLF).
    public static func readCSV(_ path: String) throws -> [(mr: String, ref: String)] {
        guard FileManager.default.fileExists(atPath: path) else { throw DataError.missing(path) }
        let text = try TextFile.read(
            path,
            emptyHint:
                "an E2E CSV file has a header line mr,ref and one (meaning representation, reference) pair a line")
        let records = try parseCSV(text, path: path)
        guard let header = records.first else { throw DataError.empty(path, "no header line") }
        let names = header.fields.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        guard let mi = names.firstIndex(of: "mr"), let ri = names.firstIndex(of: "ref") else {
            throw DataError.badLine(
                path, header.line,
                "the header must name the columns mr and ref (found \(header.fields.joined(separator: ",")))")
        }
        var rows: [(String, String)] = []
        for r in records.dropFirst() {
            guard r.fields.count == names.count else {
                throw DataError.badLine(
                    path, r.line,
                    "\(r.fields.count) fields where the header has \(names.count) (a field with a comma must be quoted)"
                )
            }
            let mr = r.fields[mi].trimmingCharacters(in: .whitespaces)
            let ref = r.fields[ri].trimmingCharacters(in: .whitespaces)
            guard !mr.isEmpty else { throw DataError.badLine(path, r.line, "empty mr") }
            rows.append((mr, ref))
        }
        guard !rows.isEmpty else { throw DataError.empty(path, "the file has a header but no rows") }
        return rows
    }

    /// Rows grouped by MR in order of first appearance, each with all its (non-empty) references.
    public static func group(_ rows: [(mr: String, ref: String)]) -> [Group] {
        var index: [String: Int] = [:]
        var out: [Group] = []
        for (mr, ref) in rows {
            if let i = index[mr] {
                if !ref.isEmpty { out[i].refs.append(ref) }
            } else {
                index[mr] = out.count
                out.append(Group(mr: mr, refs: ref.isEmpty ? [] : [ref]))
            }
        }
        return out
    }

    /// The prompt for an MR: the MR as published and a newline, as the built-in task's contexts end.
    public static func context(_ mr: String) -> String { mr + "\n" }

    /// Training examples: one per (MR, reference) pair, as the paper trains.
    public static func trainExamples(_ rows: [(mr: String, ref: String)]) -> [Example] {
        rows.filter { !$0.ref.isEmpty }.map { Example(context: context($0.mr), completion: $0.ref) }
    }

    /// Evaluation examples: one per MR, its first reference as the completion (for the loss) and
    /// all of them as `references` (for the metrics).
    public static func evalExamples(_ groups: [Group]) -> [Example] {
        groups.filter { !$0.refs.isEmpty }.map {
            Example(context: context($0.mr), completion: $0.refs[0], references: $0.refs)
        }
    }

    public struct Counts: Sendable, Equatable {
        public var trainPairs: Int, trainMRs: Int, validMRs: Int, validRefs: Int, testMRs: Int, testRefs: Int
    }

    /// Reads the three CSV files of `dir` and writes train.jsonl (pairs), valid.jsonl and
    /// test.jsonl (one line per MR with all its references) into `out`.
    @discardableResult
    public static func convert(dir: String, out: String) throws -> Counts {
        let train = try readCSV(dir + "/" + files.train)
        let valid = group(try readCSV(dir + "/" + files.valid))
        let test = group(try readCSV(dir + "/" + files.test))
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let trainEx = trainExamples(train)
        try writeFileAtomically(Data(try JSONLines.encode(trainEx).utf8), to: out + "/train.jsonl")
        try writeFileAtomically(Data(try JSONLines.encode(evalExamples(valid)).utf8), to: out + "/valid.jsonl")
        try writeFileAtomically(Data(try JSONLines.encode(evalExamples(test)).utf8), to: out + "/test.jsonl")
        return Counts(
            trainPairs: trainEx.count, trainMRs: group(train).count, validMRs: valid.count,
            validRefs: valid.reduce(0) { $0 + $1.refs.count }, testMRs: test.count,
            testRefs: test.reduce(0) { $0 + $1.refs.count })
    }
}
