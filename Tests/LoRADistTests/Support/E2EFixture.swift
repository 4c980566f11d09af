import Foundation

/// A small E2E-format data set made for the tests: the three files of the E2E NLG Challenge with
/// its header, CRLF record ends, RFC 4180 quoting (commas inside MRs and references, a doubled
/// quote, a line break inside a quoted reference), non-ASCII text, MRs with several references
/// and an MR whose references are not adjacent.
enum E2EFixture {
    static let train = [
        ("name[The Vaults], eatType[pub], priceRange[more than £30]", "The Vaults is a pub with prices over £30."),
        ("name[The Vaults], eatType[pub], priceRange[more than £30]", "The Vaults, a pub, is expensive."),
        ("name[Aromi], food[Italian], area[city centre]", "Aromi serves Italian food in the city centre."),
        (
            "name[The Vaults], eatType[pub], priceRange[more than £30]",
            "A pub called \"The Vaults\" costs more than £30."
        ),
        ("name[Café Adriatic], near[Aromi]", "Café Adriatic is near Aromi.")
    ]
    static let dev = [
        ("name[Cotto], food[English], near[The Bakers]", "Cotto serves English food near The Bakers."),
        ("name[Cotto], food[English], near[The Bakers]", "Near The Bakers, Cotto offers English food."),
        ("name[Strada], eatType[restaurant]", "Strada is a restaurant.")
    ]
    static let test = [
        ("name[Zizzi], eatType[coffee shop], customer rating[5 out of 5]", "Zizzi is a coffee shop, rated 5 out of 5."),
        (
            "name[Zizzi], eatType[coffee shop], customer rating[5 out of 5]",
            "Rated 5 out of 5, Zizzi is a coffee shop.\nIt is popular."
        ),
        ("name[Blue Spice], area[riverside]", "Blue Spice is by the riverside."),
        (
            "name[Zizzi], eatType[coffee shop], customer rating[5 out of 5]",
            "The coffee shop Zizzi has a rating of 5 out of 5."
        )
    ]

    static func quote(_ s: String) -> String {
        s.contains(",") || s.contains("\"") || s.contains("\n")
            ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
    }

    static func csv(_ rows: [(String, String)], header: String = "mr,ref") -> String {
        ([header] + rows.map { quote($0.0) + "," + quote($0.1) }).joined(separator: "\r\n") + "\r\n"
    }

    /// Writes trainset.csv, devset.csv and testset_w_refs.csv into `dir`.
    static func write(_ dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data(csv(train).utf8).write(to: URL(fileURLWithPath: dir + "/trainset.csv"))
        try Data(csv(dev).utf8).write(to: URL(fileURLWithPath: dir + "/devset.csv"))
        try Data(("\u{FEFF}" + csv(test, header: "MR,ref")).utf8).write(
            to: URL(fileURLWithPath: dir + "/testset_w_refs.csv"))
    }
}
