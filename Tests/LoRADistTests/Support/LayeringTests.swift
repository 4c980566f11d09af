import Foundation
import XCTest

/// docs/ARCHITECTURE.md's layering statement, checked on the sources: each folder of
/// Sources/LoRADist uses only the folders above it in the table of its "Layers" section. That
/// table is the one list of the order; this test reads it from there.
///
/// A folder's names are the types, functions and globals its files declare at the top level
/// (private ones aside); a use is any identifier of code (comments and the text of string
/// literals aside, interpolations included) that is not a member (right after a dot).
final class LayeringTests: XCTestCase {
    typealias Folders = [String: [(file: String, text: String)]]

    func testEveryFolderUsesOnlyTheFoldersAboveItInTheDocumentedOrder() throws {
        let order = try Self.documentedOrder()
        let folders = try Self.folders()
        XCTAssertEqual(order.sorted(), folders.keys.sorted(), "the Layers table lists each folder once: \(order)")
        let twice = Self.declaringFolders(folders).filter { $0.value.count > 1 }
        XCTAssertEqual(twice.count, 0, "names declared in two folders: \(twice)")
        let found = Self.violations(folders, order: order)
        XCTAssertEqual(found, [], "\n" + found.joined(separator: "\n"))
    }

    /// The check can fail: reversed, the order breaks it; and with Tensor and Comm swapped, Comm's
    /// uses of Tensor's names are each reported.
    func testTheCheckFailsOnAWrongOrder() throws {
        let order = try Self.documentedOrder()
        let folders = try Self.folders()
        let homes = Set(Self.declaringFolders(folders).values.flatMap { $0 })
        XCTAssertEqual(homes, Set(order), "every folder declares names")
        XCTAssertFalse(Self.violations(folders, order: order.reversed()).isEmpty)
        var swapped = order
        let t = try XCTUnwrap(order.firstIndex(of: "Tensor"))
        let c = try XCTUnwrap(order.firstIndex(of: "Comm"))
        swapped.swapAt(t, c)
        let found = Self.violations(folders, order: swapped)
        XCTAssertTrue(
            found.contains { $0.hasPrefix("Comm/") && $0.contains("declared in Tensor/") },
            found.joined(separator: "\n"))
        XCTAssertFalse(found.contains { !$0.hasPrefix("Comm/") }, found.joined(separator: "\n"))
    }

    /// The lexer: comments and string text are not code, interpolations are, members are not uses.
    func testCodeIdentifiersSkipCommentsStringsAndMembers() {
        let src = ##"""
            // Ledger in a comment
            /* Site /* nested */ Trainer */ let a = "GPTModel \(fixed(x, 1)) \"Mat\"" + x.TPLayout
            let b = #"raw "Batcher" \(Gemm) \#(now())"# + """
              Checkpoint \(max(y))
              """ ; K.run()
            """##
        XCTAssertEqual(Set(Self.codeIdentifiers(src)), ["let", "a", "fixed", "x", "b", "now", "max", "y", "K"])
        let decl = "public struct A {}\n@inline(__always) func b() {}\nprivate enum C {}\n  let d = 1\nfinal class E {}"
        XCTAssertEqual(Set(Self.declaringFolders(["F": [("f.swift", decl)]]).keys), ["A", "b", "E"])
    }

    // MARK: the check

    /// "Folder/File.swift: uses `Name` (declared in Other/), listed below Folder".
    static func violations(_ folders: Folders, order: [String]) -> [String] {
        let declared = declaringFolders(folders).compactMapValues { $0.count == 1 ? $0.first : nil }
        var out: [String] = []
        for (rank, folder) in order.enumerated() {
            for (file, text) in folders[folder] ?? [] {
                for name in Set(codeIdentifiers(text)).sorted() {
                    guard let home = declared[name], let r = order.firstIndex(of: home), r > rank else { continue }
                    out.append("\(folder)/\(file): uses `\(name)` (declared in \(home)/), listed below \(folder)")
                }
            }
        }
        return out
    }

    /// The folders that declare each top-level name (non-private types, functions and globals).
    static func declaringFolders(_ folders: Folders) -> [String: Set<String>] {
        let modifiers = "(?:(?:public|internal|open|final|indirect|nonisolated)\\s+)*"
        let kinds = "(?:struct|class|enum|protocol|typealias|actor|func|let|var)"
        let attributes = "(?:@\\w+(?:\\([^)]*\\))?\\s+)*"
        let decl = try! NSRegularExpression(pattern: "^" + attributes + modifiers + kinds + "\\s+(\\w+)")
        var out: [String: Set<String>] = [:]
        for (folder, files) in folders {
            for (_, text) in files {
                for line in stripped(text).split(separator: "\n") where !(line.first?.isWhitespace ?? true) {
                    let s = String(line)
                    guard let m = decl.firstMatch(in: s, range: NSRange(s.startIndex..., in: s)),
                        let r = Range(m.range(at: 1), in: s)
                    else { continue }
                    out[String(s[r]), default: []].insert(folder)
                }
            }
        }
        return out
    }

    // MARK: the sources

    /// The folders of docs/ARCHITECTURE.md's Layers table, top row first: one folder per row.
    static func documentedOrder() throws -> [String] {
        let doc = try String(contentsOf: Launcher.root.appendingPathComponent("docs/ARCHITECTURE.md"), encoding: .utf8)
        let start = try XCTUnwrap(doc.range(of: "\n## Layers\n"), "docs/ARCHITECTURE.md has no Layers section")
        let section = doc[start.upperBound...].components(separatedBy: "\n## ")[0]
        let rows = section.split(separator: "\n").filter { $0.hasPrefix("| `") }
        return rows.map { String($0.dropFirst(3).prefix { $0 != "`" }) }
    }

    /// Each folder of Sources/LoRADist with its Swift files (path inside the folder, text).
    static func folders() throws -> Folders {
        let fm = FileManager.default
        let sources = Launcher.root.appendingPathComponent("Sources/LoRADist")
        var out: Folders = [:]
        for folder in try fm.contentsOfDirectory(atPath: sources.path) {
            var isDir: ObjCBool = false
            let dir = sources.appendingPathComponent(folder)
            guard fm.fileExists(atPath: dir.path, isDirectory: &isDir), isDir.boolValue else { continue }
            let all = fm.enumerator(atPath: dir.path)?.compactMap { $0 as? String } ?? []
            let files = all.filter { $0.hasSuffix(".swift") }
            out[folder] = try files.sorted().map {
                ($0, try String(contentsOf: dir.appendingPathComponent($0), encoding: .utf8))
            }
        }
        return out
    }

    // MARK: a small Swift lexer

    /// `text` with comments and the text of string literals blanked (their interpolations kept,
    /// and their line breaks, so that lines stay lines).
    static func stripped(_ text: String) -> String {
        let s = Array(text.unicodeScalars)
        var out = String.UnicodeScalarView()
        /// What encloses the position: code (in an interpolation, with its open parentheses), or a
        /// string literal (multi-line or not, with its raw-string `#` count).
        enum Context {
            case code(parens: Int?)
            case string(multiline: Bool, hashes: Int)
        }
        var stack: [Context] = [.code(parens: nil)]
        var i = 0
        func at(_ literal: String, _ j: Int) -> Bool {
            var k = j
            for c in literal.unicodeScalars {
                guard k < s.count, s[k] == c else { return false }
                k += 1
            }
            return true
        }
        while i < s.count {
            switch stack[stack.count - 1] {
            case .code(let parens):
                if at("//", i) {
                    while i < s.count && s[i] != "\n" { i += 1 }
                } else if at("/*", i) {
                    var depth = 0
                    repeat {
                        if at("/*", i) {
                            depth += 1
                            i += 2
                        } else if at("*/", i) {
                            depth -= 1
                            i += 2
                        } else {
                            if s[i] == "\n" { out.append("\n") }
                            i += 1
                        }
                    } while depth > 0 && i < s.count
                    out.append(" ")
                } else if s[i] == "#" || s[i] == "\"" {
                    var j = i
                    var hashes = 0
                    while j < s.count && s[j] == "#" {
                        hashes += 1
                        j += 1
                    }
                    guard j < s.count && s[j] == "\"" else {
                        out.append(s[i])
                        i += 1
                        continue
                    }
                    let multiline = at("\"\"\"", j)
                    stack.append(.string(multiline: multiline, hashes: hashes))
                    i = j + (multiline ? 3 : 1)
                    out.append(" ")
                } else if let p = parens, s[i] == "(" || s[i] == ")" {
                    let depth = p + (s[i] == "(" ? 1 : -1)
                    if depth == 0 { stack.removeLast() } else { stack[stack.count - 1] = .code(parens: depth) }
                    out.append(depth == 0 ? " " : s[i])
                    i += 1
                } else {
                    out.append(s[i])
                    i += 1
                }
            case .string(let multiline, let hashes):
                let close = (multiline ? "\"\"\"" : "\"") + String(repeating: "#", count: hashes)
                let escape = "\\" + String(repeating: "#", count: hashes)
                if at(close, i) {
                    stack.removeLast()
                    i += close.unicodeScalars.count
                    out.append(" ")
                } else if at(escape + "(", i) {
                    stack.append(.code(parens: 1))
                    i += escape.unicodeScalars.count + 1
                    out.append(" ")
                } else if at(escape, i) {
                    i += escape.unicodeScalars.count + 1
                } else {
                    if s[i] == "\n" { out.append("\n") }
                    i += 1
                }
            }
        }
        return String(out)
    }

    /// The identifiers of `text`'s code that are not members (not right after a dot).
    static func codeIdentifiers(_ text: String) -> [String] {
        let s = Array(stripped(text).unicodeScalars)
        func head(_ c: Unicode.Scalar) -> Bool { c == "_" || ("a"..."z").contains(c) || ("A"..."Z").contains(c) }
        func tail(_ c: Unicode.Scalar) -> Bool { head(c) || ("0"..."9").contains(c) }
        var out: [String] = []
        var i = 0
        while i < s.count {
            guard head(s[i]), i == 0 || !tail(s[i - 1]) && s[i - 1] != "$" else {
                i += 1
                continue
            }
            var j = i
            while j < s.count && tail(s[j]) { j += 1 }
            if i == 0 || s[i - 1] != "." { out.append(String(String.UnicodeScalarView(s[i..<j]))) }
            i = j
        }
        return out
    }
}
