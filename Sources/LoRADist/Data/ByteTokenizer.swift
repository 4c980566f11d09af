/// The built-in model's tokenizer: one token per UTF-8 byte (ids 0–255) and end-of-text = 256.
public struct ByteTokenizer: Tokenizer {
    public static let eot: Int32 = 256
    public static let vocabSize = 257
    public init() {}

    public var eot: Int32 { Self.eot }
    public var vocabSize: Int { Self.vocabSize }
    public var description: String { "bytes (257 ids, end-of-text 256)" }

    public func encode(_ s: String) -> [Int32] { s.utf8.map { Int32($0) } }

    /// Bytes up to the first end-of-text (or any other non-byte id), decoded as UTF-8.
    public func decode(_ ids: [Int32]) -> String {
        let bytes = ids.prefix { $0 >= 0 && $0 < 256 }.map { UInt8($0) }
        return String(decoding: bytes, as: UTF8.self)
    }
}
