import Foundation

/// A minimal PNG writer: 8-bit RGB, no filtering, the image data in stored (uncompressed) deflate
/// blocks inside a zlib stream. Plots of a few hundred pixels need nothing more.
public enum PNG {
    /// The file bytes of an RGB image: `rgb` holds width × height × 3 bytes, row by row.
    public static func encode(width: Int, height: Int, rgb: [UInt8]) -> [UInt8] {
        precondition(
            rgb.count == width * height * 3, "an RGB image of \(width)×\(height) needs \(width * height * 3) bytes")
        var raw: [UInt8] = []
        raw.reserveCapacity(height * (1 + 3 * width))
        for y in 0..<height {
            raw.append(0)  // filter type: none
            raw += rgb[(y * width * 3)..<((y + 1) * width * 3)]
        }
        var z: [UInt8] = [0x78, 0x01]
        var i = 0
        repeat {
            let n = min(65535, raw.count - i)
            let last: UInt8 = i + n == raw.count ? 1 : 0
            z += [last, UInt8(n & 0xFF), UInt8(n >> 8), UInt8(~n & 0xFF), UInt8((~n >> 8) & 0xFF)]
            z += raw[i..<(i + n)]
            i += n
        } while i < raw.count
        z += be32(adler32(raw))
        var out: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        out += chunk("IHDR", be32(UInt32(width)) + be32(UInt32(height)) + [8, 2, 0, 0, 0])
        out += chunk("IDAT", z)
        out += chunk("IEND", [])
        return out
    }

    static func be32(_ v: UInt32) -> [UInt8] {
        [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)]
    }

    static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let body = Array(type.utf8) + data
        return be32(UInt32(data.count)) + body + be32(crc32(body))
    }

    static let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func crc32(_ b: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for x in b { c = crcTable[Int((c ^ UInt32(x)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }

    static func adler32(_ b: [UInt8]) -> UInt32 {
        var a: UInt32 = 1
        var s: UInt32 = 0
        for x in b {
            a = (a + UInt32(x)) % 65521
            s = (s + a) % 65521
        }
        return (s << 16) | a
    }
}

/// An RGB canvas to draw plots on, with a 3×5 pixel font for labels.
public struct Canvas {
    public let width: Int, height: Int
    public var rgb: [UInt8]

    public init(width: Int, height: Int) {
        self.width = width
        self.height = height
        rgb = [UInt8](repeating: 255, count: width * height * 3)
    }

    public mutating func fill(x: Int, y: Int, w: Int, h: Int, _ c: (UInt8, UInt8, UInt8)) {
        for yy in max(0, y)..<min(height, y + h) {
            for xx in max(0, x)..<min(width, x + w) {
                let o = (yy * width + xx) * 3
                rgb[o] = c.0
                rgb[o + 1] = c.1
                rgb[o + 2] = c.2
            }
        }
    }

    /// Text in the 3×5 font, each font pixel `scale` pixels wide; unknown characters are blank.
    public mutating func text(_ s: String, x: Int, y: Int, scale: Int = 2, _ c: (UInt8, UInt8, UInt8) = (0, 0, 0)) {
        var cx = x
        for ch in s.lowercased() {
            if let g = Canvas.glyphs[ch] {
                for (row, bits) in g.enumerated() {
                    for (col, b) in bits.enumerated() where b == "#" {
                        fill(x: cx + col * scale, y: y + row * scale, w: scale, h: scale, c)
                    }
                }
            }
            cx += 4 * scale
        }
    }

    public static func textWidth(_ s: String, scale: Int = 2) -> Int { s.count * 4 * scale - scale }

    public func png() -> [UInt8] { PNG.encode(width: width, height: height, rgb: rgb) }

    static let glyphs: [Character: [String]] = {
        let rows: [(Character, [String])] = [
            ("0", ["###", "# #", "# #", "# #", "###"]), ("1", [" # ", "## ", " # ", " # ", "###"]),
            ("2", ["###", "  #", "###", "#  ", "###"]),
            ("3", ["###", "  #", "###", "  #", "###"]), ("4", ["# #", "# #", "###", "  #", "  #"]),
            ("5", ["###", "#  ", "###", "  #", "###"]),
            ("6", ["###", "#  ", "###", "# #", "###"]), ("7", ["###", "  #", " # ", " # ", " # "]),
            ("8", ["###", "# #", "###", "# #", "###"]),
            ("9", ["###", "# #", "###", "  #", "###"]), ("a", [" # ", "# #", "###", "# #", "# #"]),
            ("b", ["## ", "# #", "## ", "# #", "## "]),
            ("c", [" ##", "#  ", "#  ", "#  ", " ##"]), ("d", ["## ", "# #", "# #", "# #", "## "]),
            ("e", ["###", "#  ", "## ", "#  ", "###"]),
            ("f", ["###", "#  ", "## ", "#  ", "#  "]), ("g", [" ##", "#  ", "# #", "# #", " ##"]),
            ("h", ["# #", "# #", "###", "# #", "# #"]),
            ("i", ["###", " # ", " # ", " # ", "###"]), ("j", ["  #", "  #", "  #", "# #", " # "]),
            ("k", ["# #", "## ", "#  ", "## ", "# #"]),
            ("l", ["#  ", "#  ", "#  ", "#  ", "###"]), ("m", ["# #", "###", "###", "# #", "# #"]),
            ("n", ["## ", "# #", "# #", "# #", "# #"]),
            ("o", [" # ", "# #", "# #", "# #", " # "]), ("p", ["## ", "# #", "## ", "#  ", "#  "]),
            ("q", [" # ", "# #", "# #", "## ", " ##"]),
            ("r", ["## ", "# #", "## ", "# #", "# #"]), ("s", [" ##", "#  ", " # ", "  #", "## "]),
            ("t", ["###", " # ", " # ", " # ", " # "]),
            ("u", ["# #", "# #", "# #", "# #", "###"]), ("v", ["# #", "# #", "# #", "# #", " # "]),
            ("w", ["# #", "# #", "###", "###", "# #"]),
            ("x", ["# #", "# #", " # ", "# #", "# #"]), ("y", ["# #", "# #", " # ", " # ", " # "]),
            ("z", ["###", "  #", " # ", "#  ", "###"]),
            (".", ["   ", "   ", "   ", "   ", " # "]), ("_", ["   ", "   ", "   ", "   ", "###"]),
            ("=", ["   ", "###", "   ", "###", "   "]),
            ("-", ["   ", "   ", "###", "   ", "   "]), ("(", ["  #", " # ", " # ", " # ", "  #"]),
            (")", ["#  ", " # ", " # ", " # ", "#  "]),
            (",", ["   ", "   ", "   ", " # ", "#  "]), (":", ["   ", " # ", "   ", " # ", "   "]),
            ("/", ["  #", "  #", " # ", "#  ", "#  "]),
            ("|", [" # ", " # ", " # ", " # ", " # "])
        ]
        return Dictionary(uniqueKeysWithValues: rows)
    }()
}
