import XCTest

@testable import LoRADist

/// `lora-dist data --from-e2e` as a user runs it (E2EDataTests holds the CSV reading and grouping).
extension E2EDataTests {
    func testDataFromE2EWritesMultiReferenceJSONL() throws {
        let d = tmp()
        let out = tmp() + "/e2e"
        try E2EFixture.write(d)
        let r = try Launcher.lora(["data", "--from-e2e", d, "--out", out], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(
            r.output.contains(
                "train.jsonl (5 pairs of 3 MRs), valid.jsonl (2 MRs, 3 references), test.jsonl (2 MRs, 4 references)"),
            r.output)
        let train = try JSONLines.read(out + "/train.jsonl")
        let valid = try JSONLines.read(out + "/valid.jsonl")
        let test = try JSONLines.read(out + "/test.jsonl")
        XCTAssertEqual(train.count, 5)
        XCTAssertEqual(
            train[0],
            Example(
                context: "name[The Vaults], eatType[pub], priceRange[more than £30]\n",
                completion: "The Vaults is a pub with prices over £30."))
        XCTAssertNil(train[0].references)
        XCTAssertEqual(
            valid[0].references,
            ["Cotto serves English food near The Bakers.", "Near The Bakers, Cotto offers English food."])
        XCTAssertEqual(valid[0].completion, "Cotto serves English food near The Bakers.")
        XCTAssertEqual(test.map(\.allReferences.count), [3, 1])
        XCTAssertEqual(test[0].context, "name[Zizzi], eatType[coffee shop], customer rating[5 out of 5]\n")
        // A file without the ref column (the challenge's testset.csv) is refused by name.
        try Data("MR\r\nname[X]\r\n".utf8).write(to: URL(fileURLWithPath: d + "/testset_w_refs.csv"))
        let bad = try Launcher.lora(["data", "--from-e2e", d, "--out", out], timeout: 60)
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(
            bad.output.contains("testset_w_refs.csv line 1: the header must name the columns mr and ref"), bad.output)
    }
}
