import Foundation

/// An error as the API answers it: an HTTP status and OpenAI's body,
/// {"error": {"message", "type", "param", "code"}}.
public struct APIError: Error, Equatable, CustomStringConvertible {
    public var status: Int
    public var message: String
    public var type: String
    public var param: String?
    public var code: String?

    public init(_ status: Int, _ message: String, type: String? = nil, param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.type = type ?? (status >= 500 ? "server_error" : "invalid_request_error")
        self.param = param
        self.code = code
    }

    public var description: String { "\(status) \(message)" }

    /// The body, as OpenAI's.
    public var body: Data {
        struct Body: Encodable {
            struct Inner: Encodable {
                let message: String, type: String, param: String?, code: String?
                func encode(to e: Encoder) throws {
                    var c = e.container(keyedBy: CodingKeys.self)
                    try c.encode(message, forKey: .message)
                    try c.encode(type, forKey: .type)
                    try c.encode(param, forKey: .param)  // null when none, as OpenAI sends it
                    try c.encode(code, forKey: .code)
                }
                enum CodingKeys: String, CodingKey { case message, type, param, code }
            }
            let error: Inner
        }
        let b = Body(error: .init(message: message, type: type, param: param, code: code))
        return (try? JSONEncoder.api.encode(b)) ?? Data("{\"error\":{\"message\":\"internal\"}}".utf8)
    }

    static func badParameter(_ param: String, _ message: String) -> APIError {
        APIError(400, message, param: param, code: "invalid_parameter")
    }
}

extension JSONEncoder {
    /// Keys in a fixed order, so bodies are reproducible.
    static var api: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }
}

/// A string, or an array of strings (OpenAI's `prompt` and `stop`).
enum StringOrArray: Decodable {
    case one(String)
    case many([String])

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) {
            self = .one(s)
        } else {
            self = .many(try c.decode([String].self))
        }
    }

    var values: [String] {
        switch self {
        case .one(let s): return [s]
        case .many(let a): return a
        }
    }
}

/// POST /v1/completions as it arrives (OpenAI's fields this server reads; others are ignored, as
/// OpenAI-compatible servers do). `return_token_ids` (vLLM's extension) adds each choice's ids.
struct CompletionBody: Decodable {
    var model: String?
    var prompt: StringOrArray?
    var max_tokens: Int?
    var temperature: Double?
    var top_p: Double?
    var seed: Int64?
    var stop: StringOrArray?
    var stream: Bool?
    var return_token_ids: Bool?
}

/// A completion request, checked: what the engine runs.
public struct CompletionRequest: Sendable, Equatable {
    /// An adapter's name, or nil for the base.
    public var adapter: String?
    /// The name the client asked for (an adapter's or the base's), echoed in the response.
    public var model: String
    public var prompt: String
    public var maxTokens: Int
    /// 0: greedy (the argmax, as `generate` decodes).
    public var temperature: Double
    public var topP: Double
    public var seed: UInt64
    public var stop: [String]
    public var stream: Bool
    public var returnTokenIds: Bool

    public init(
        adapter: String?, model: String, prompt: String, maxTokens: Int = 16, temperature: Double = 0,
        topP: Double = 1, seed: UInt64 = 0, stop: [String] = [], stream: Bool = false, returnTokenIds: Bool = false
    ) {
        self.adapter = adapter
        self.model = model
        self.prompt = prompt
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.seed = seed
        self.stop = stop
        self.stream = stream
        self.returnTokenIds = returnTokenIds
    }

    /// Parses and checks a request body; `models` are the names the server serves (the base's
    /// first), `baseName` the base's.
    static func parse(_ data: Data, baseName: String, adapters: [String]) throws -> CompletionRequest {
        let b: CompletionBody
        do { b = try JSONDecoder().decode(CompletionBody.self, from: data) } catch {
            throw APIError(400, "the body is not a valid completion request: \(Self.describe(error))")
        }
        guard let model = b.model else { throw APIError(400, "you must provide a model parameter", param: "model") }
        let adapter: String?
        if model == baseName {
            adapter = nil
        } else if adapters.contains(model) {
            adapter = model
        } else {
            throw APIError(
                404, "the model `\(model)` does not exist; GET /v1/models lists them", param: "model",
                code: "model_not_found")
        }
        guard let p = b.prompt else { throw APIError(400, "you must provide a prompt", param: "prompt") }
        let prompts = p.values
        guard prompts.count == 1 else {
            throw APIError.badParameter("prompt", "prompt must be a string or an array of one string")
        }
        guard !prompts[0].isEmpty else { throw APIError.badParameter("prompt", "prompt must not be empty") }
        let maxTokens = b.max_tokens ?? 16
        guard maxTokens >= 1 else {
            throw APIError.badParameter("max_tokens", "max_tokens must be at least 1 (got \(maxTokens))")
        }
        let temperature = b.temperature ?? 1
        guard temperature >= 0, temperature <= 2, temperature.isFinite else {
            throw APIError.badParameter("temperature", "temperature must be between 0 and 2 (got \(temperature))")
        }
        let topP = b.top_p ?? 1
        guard topP > 0, topP <= 1 else {
            throw APIError.badParameter("top_p", "top_p must be in (0, 1] (got \(topP))")
        }
        let stop = b.stop?.values ?? []
        guard stop.count <= 4, stop.allSatisfy({ !$0.isEmpty }) else {
            throw APIError.badParameter("stop", "stop takes at most 4 non-empty strings")
        }
        return CompletionRequest(
            adapter: adapter, model: model, prompt: prompts[0], maxTokens: maxTokens, temperature: temperature,
            topP: topP, seed: UInt64(bitPattern: b.seed ?? 0), stop: stop, stream: b.stream ?? false,
            returnTokenIds: b.return_token_ids ?? false)
    }

    /// A decoding error in a sentence (which key, what was wrong).
    static func describe(_ error: Error) -> String {
        guard let e = error as? DecodingError else { return "\(error)" }
        func path(_ c: DecodingError.Context) -> String {
            c.codingPath.isEmpty ? "" : " at \(c.codingPath.map(\.stringValue).joined(separator: "."))"
        }
        switch e {
        case .dataCorrupted(let c): return "malformed JSON\(path(c))"
        case .typeMismatch(_, let c), .valueNotFound(_, let c): return "wrong type\(path(c)): \(c.debugDescription)"
        case .keyNotFound(let k, _): return "missing \(k.stringValue)"
        @unknown default: return "\(e)"
        }
    }
}

/// Why a completion ended, as OpenAI names it.
public enum FinishReason: String, Sendable, Codable {
    /// The end-of-text token or a stop string.
    case stop
    /// max_tokens, or the context is full.
    case length
}

/// The response of POST /v1/completions (and, with `object` "text_completion" and one choice
/// holding a delta of text, each streamed chunk).
struct CompletionResponse: Encodable {
    struct Choice: Encodable {
        var text: String
        var index = 0
        var logprobs: String? = nil
        var finish_reason: FinishReason?
        var token_ids: [Int32]?

        func encode(to e: Encoder) throws {
            var c = e.container(keyedBy: CodingKeys.self)
            try c.encode(text, forKey: .text)
            try c.encode(index, forKey: .index)
            try c.encode(logprobs, forKey: .logprobs)
            try c.encode(finish_reason, forKey: .finish_reason)
            try c.encodeIfPresent(token_ids, forKey: .token_ids)
        }
        enum CodingKeys: String, CodingKey { case text, index, logprobs, finish_reason, token_ids }
    }
    struct Usage: Encodable {
        var prompt_tokens: Int, completion_tokens: Int, total_tokens: Int
    }
    var id: String
    var object = "text_completion"
    var created: Int
    var model: String
    var choices: [Choice]
    var usage: Usage?
}

/// GET /v1/models.
struct ModelList: Encodable {
    struct Model: Encodable {
        var id: String
        var object = "model"
        var created: Int
        var owned_by = "lora-dist"
        /// The base an adapter runs on (nil for the base itself).
        var parent: String?
    }
    var object = "list"
    var data: [Model]
}

/// POST /v1/adapters.
struct AdapterBody: Decodable {
    var name: String
    var path: String
}
