import XCTest

@testable import LoRADist

/// The E2E NLG Challenge files as published: RFC 4180 CSV with CRLF, quoted commas and quotes,
/// grouped by MR so each MR carries all its references, and converted to the project's JSONL
/// (the `data --from-e2e` command end to end is in CLI/DataCommandTests.swift).
final class E2EDataTests: XCTestCase {
    func tmp() -> String { makeTempDir("e2e") }

    func testCSVQuotingAndCRLF() throws {
        let text =
            "mr,ref\r\n\"name[A], food[Thai]\",\"Say \"\"hi\"\", A.\"\r\nplain,\"two\r\nlines\"\r\n\r\nlast,no newline"
        let r = try E2EData.parseCSV(text, path: "x.csv")
        XCTAssertEqual(
            r.map(\.fields),
            [["mr", "ref"], ["name[A], food[Thai]", "Say \"hi\", A."], ["plain", "two\nlines"], ["last", "no newline"]])
        XCTAssertEqual(r.map(\.line), [1, 2, 3, 6])
        XCTAssertThrowsError(try E2EData.parseCSV("mr,ref\n\"open,x\n", path: "x.csv")) {
            XCTAssertEqual("\($0)", "x.csv line 2: a quoted field is never closed")
        }
        XCTAssertThrowsError(try E2EData.parseCSV("mr,ref\n\"a\"b,c\n", path: "x.csv")) {
            XCTAssertTrue("\($0)".hasPrefix("x.csv line 2: text after a closing quote"), "\($0)")
        }
    }

    func testFixtureGroupsEveryReferenceOfAnMR() throws {
        let d = tmp()
        try E2EFixture.write(d)
        let test = E2EData.group(try E2EData.readCSV(d + "/testset_w_refs.csv"))
        XCTAssertEqual(
            test,
            [
                .init(
                    mr: "name[Zizzi], eatType[coffee shop], customer rating[5 out of 5]",
                    refs: [
                        "Zizzi is a coffee shop, rated 5 out of 5.",
                        "Rated 5 out of 5, Zizzi is a coffee shop.\nIt is popular.",
                        "The coffee shop Zizzi has a rating of 5 out of 5."
                    ]),
                .init(mr: "name[Blue Spice], area[riverside]", refs: ["Blue Spice is by the riverside."])
            ])
        let train = try E2EData.readCSV(d + "/trainset.csv")
        XCTAssertEqual(train.count, 5)
        XCTAssertEqual(train[3].ref, "A pub called \"The Vaults\" costs more than £30.")
        XCTAssertEqual(E2EData.group(train).map(\.refs.count), [3, 1, 1])
    }

    func testJSONLReferencesAreReadAndChecked() throws {
        let d = tmp()
        let p = d + "/v.jsonl"
        try Data(
            """
            {\"context\":\"a\\n\",\"completion\":\"x\",\"references\":[\"x\",\"y\"]}\r\n{\"context\":\"b\\n\",\
            \"completion\":\"z\"}\n
            """
            .utf8
        ).write(to: URL(fileURLWithPath: p))
        let ex = try JSONLines.read(p)
        XCTAssertEqual(ex.map(\.allReferences), [["x", "y"], ["z"]])
        // Round trip: examples without references encode exactly as before.
        XCTAssertEqual(try JSONLines.encode([ex[1]]), "{\"completion\":\"z\",\"context\":\"b\\n\"}\n")
        try Data("{\"context\":\"a\",\"completion\":\"x\",\"references\":[]}\n".utf8).write(to: URL(fileURLWithPath: p))
        XCTAssertThrowsError(try JSONLines.read(p)) {
            XCTAssertEqual("\($0)", "\(p) line 1: \"references\" must be a non-empty array of strings")
        }
    }
}
