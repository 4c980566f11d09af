import Foundation
import Hummingbird
import LoRADist
import Logging
import NIOCore

/// The HTTP side of `lora-dist serve` (Hummingbird 2 over SwiftNIO), OpenAI-compatible where
/// OpenAI has the endpoint: POST /v1/completions (streamed as server-sent events with
/// "stream": true), GET /v1/models, POST /v1/adapters {"name", "path"}, DELETE /v1/adapters/NAME,
/// GET /health and GET /metrics (Prometheus text). Every error is OpenAI's JSON body with its
/// status; the model is reached only through a `ServeEngine`.
public enum ServeServer {
    /// The largest request body read (413 beyond).
    public static let maxBody = 1 << 20

    /// Serves `engine` on `host`:`port` (0: any free port) until SIGTERM or SIGINT, then lets
    /// in-flight requests finish and returns. `onRunning` gets the bound port.
    public static func run(
        engine: any ServeEngine, host: String, port: Int, onRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) async throws {
        var logger = Logger(label: "lora-dist-serve")
        logger.logLevel = .warning
        let app = Application(
            router: router(engine, ServerCounters()),
            configuration: .init(address: .hostname(host, port: port), serverName: "lora-dist"),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? port) }, logger: logger)
        try await app.runService()
    }

    static func router(_ engine: any ServeEngine, _ counters: ServerCounters) -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: ErrorMiddleware(counters: counters))
        router.get("health") { _, _ in json(["status": "ok"]) }
        router.get("v1/models") { _, _ in
            let now = Int(Date().timeIntervalSince1970)
            let base = engine.baseName
            let models =
                [ModelList.Model(id: base, created: now)]
                + engine.adapterNames().map { ModelList.Model(id: $0, created: now, parent: base) }
            return json(ModelList(data: models))
        }
        router.post("v1/adapters") { request, _ in
            let data = try await body(request)
            let a: AdapterBody
            do { a = try JSONDecoder().decode(AdapterBody.self, from: data) } catch {
                throw APIError(400, "expected {\"name\": ..., \"path\": ...}: \(CompletionRequest.describe(error))")
            }
            do { try await engine.loadAdapter(name: a.name, path: a.path) } catch {
                throw apiError(error)
            }
            return json(["loaded": a.name], status: .created)
        }
        router.delete("v1/adapters/:name") { _, context in
            let name = try context.parameters.require("name")
            do { try await engine.unloadAdapter(name: name) } catch { throw apiError(error) }
            return json(["deleted": name])
        }
        router.get("metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                body: .init(byteBuffer: ByteBuffer(string: prometheus(engine.metrics(), counters.snapshot()))))
        }
        router.post("v1/completions") { request, _ in
            let data = try await body(request)
            let r = try CompletionRequest.parse(data, baseName: engine.baseName, adapters: engine.adapterNames())
            let stream = try engine.submit(r)
            counters.completion(r.adapter)
            let id = "cmpl-\(UUID().uuidString.lowercased())"
            let created = Int(Date().timeIntervalSince1970)
            return r.stream
                ? streamed(stream, r, id: id, created: created)
                : try await whole(stream, r, id: id, created: created)
        }
        return router
    }

    /// The body, at most `maxBody` bytes (413 beyond).
    static func body(_ request: Request) async throws -> Data {
        do {
            var b = try await request.body.collect(upTo: maxBody)
            return Data(b.readBytes(length: b.readableBytes) ?? [])
        } catch {
            throw APIError(413, "the request body exceeds \(maxBody) bytes", code: "request_too_large")
        }
    }

    /// An engine's refusal as the API answers it.
    static func apiError(_ error: Error) -> APIError {
        switch error {
        case let e as APIError: return e
        case let e as AdapterSetError:
            switch e {
            case .unknown: return APIError(404, e.description, param: "name", code: "model_not_found")
            case .duplicate: return APIError(409, e.description, param: "name", code: "adapter_exists")
            case .full: return APIError(422, e.description, code: "too_many_adapters")
            case .memory: return APIError(422, e.description, code: "adapter_memory_exceeded")
            case .badName: return APIError(400, e.description, param: "name")
            case .mismatch, .nonFinite, .inferenceOnly: return APIError(422, e.description, param: "path")
            }
        case let e as LoRADist.IOError:
            if case .cannotRead = e { return APIError(404, e.description, param: "path", code: "adapter_not_found") }
            return APIError(422, e.description, param: "path", code: "invalid_adapter")
        default: return APIError(422, "\(error)", param: "path", code: "invalid_adapter")
        }
    }

    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
        let data = (try? JSONEncoder.api.encode(value)) ?? Data()
        return Response(
            status: status, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// The whole completion in one body.
    static func whole(
        _ stream: AsyncThrowingStream<GenerationEvent, Error>, _ r: CompletionRequest, id: String, created: Int
    ) async throws -> Response {
        var text = ""
        var ids: [Int32] = []
        for try await e in stream {
            switch e {
            case .token(let t, let s):
                ids.append(t)
                text += s
            case .text(let s): text += s
            case .finished(let reason, let p, let c):
                let choice = CompletionResponse.Choice(
                    text: text, finish_reason: reason, token_ids: r.returnTokenIds ? ids : nil)
                return json(
                    CompletionResponse(
                        id: id, created: created, model: r.model, choices: [choice],
                        usage: .init(prompt_tokens: p, completion_tokens: c, total_tokens: p + c)))
            }
        }
        throw APIError(500, "the completion ended without finishing")
    }

    /// Server-sent events as OpenAI streams completions: a `data: {chunk}` per token, the last
    /// with its finish reason, then `data: [DONE]`. A client that goes away ends the engine's
    /// stream, which cancels the request.
    static func streamed(
        _ stream: AsyncThrowingStream<GenerationEvent, Error>, _ r: CompletionRequest, id: String, created: Int
    ) -> Response {
        let headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]
        return Response(
            status: .ok, headers: headers,
            body: .init { writer in
                func send(_ chunk: CompletionResponse) async throws {
                    let data = (try? JSONEncoder.api.encode(chunk)) ?? Data()
                    try await writer.write(
                        ByteBuffer(string: "data: " + String(decoding: data, as: UTF8.self) + "\n\n"))
                }
                func chunk(_ text: String, _ ids: [Int32]?, _ reason: FinishReason?) -> CompletionResponse {
                    CompletionResponse(
                        id: id, created: created, model: r.model,
                        choices: [.init(text: text, finish_reason: reason, token_ids: r.returnTokenIds ? ids : nil)])
                }
                do {
                    for try await e in stream {
                        switch e {
                        case .token(let t, let s): try await send(chunk(s, [t], nil))
                        case .text(let s): try await send(chunk(s, [], nil))
                        case .finished(let reason, _, _): try await send(chunk("", [], reason))
                        }
                    }
                } catch let e as APIError {
                    try await writer.write(
                        ByteBuffer(string: "data: " + String(decoding: e.body, as: UTF8.self) + "\n\n"))
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            })
    }

    /// GET /metrics: Prometheus text exposition.
    static func prometheus(_ m: EngineMetrics, _ s: ServerCounters.Snapshot) -> String {
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: Int)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for x in samples { out += "\(name)\(x.labels.isEmpty ? "" : "{\(x.labels)}") \(x.value)\n" }
        }
        func q(_ s: String) -> String {
            s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        }
        metric(
            "lora_dist_requests_total", "counter", "HTTP requests answered, by path and status.",
            s.responses.sorted { ($0.key.path, $0.key.status) < ($1.key.path, $1.key.status) }.map {
                ("path=\"\(q($0.key.path))\",status=\"\($0.key.status)\"", $0.value)
            })
        metric(
            "lora_dist_completions_total", "counter", "Completions accepted, by model (adapter or base).",
            s.completions.sorted { $0.key < $1.key }.map { ("model=\"\(q($0.key))\"", $0.value) })
        metric(
            "lora_dist_completions_finished_total", "counter", "Completions finished, by adapter (\"\" for the base).",
            m.completionsByAdapter.sorted { $0.key < $1.key }.map { ("adapter=\"\(q($0.key))\"", $0.value) })
        metric("lora_dist_prompt_tokens_total", "counter", "Prompt tokens run.", [("", m.promptTokens)])
        metric("lora_dist_generated_tokens_total", "counter", "Tokens generated.", [("", m.generatedTokens)])
        metric(
            "lora_dist_forward_passes_total", "counter", "Forward passes, by the rows (tokens) each ran.",
            m.passesByRows.sorted { $0.key < $1.key }.map { ("rows=\"\($0.key)\"", $0.value) })
        metric(
            "lora_dist_batch_sequences_total", "counter", "Steps, by the sequences (batch size) each ran.",
            m.batchSizes.sorted { $0.key < $1.key }.map { ("sequences=\"\($0.key)\"", $0.value) })
        metric("lora_dist_steps_total", "counter", "Engine steps (plans), idle ones included.", [("", m.steps)])
        metric("lora_dist_queue_length", "gauge", "Requests waiting or running.", [("", m.queueLength)])
        metric(
            "lora_dist_collectives_total", "counter", "Collective calls in the ledger, by site and op.",
            m.collectives.map { ("site=\"\(q($0.site))\",op=\"\(q($0.op))\"", $0.count) })
        metric(
            "lora_dist_collective_bytes_total", "counter", "Bytes the ledger's collectives moved, by site and op.",
            m.collectives.map { ("site=\"\(q($0.site))\",op=\"\(q($0.op))\"", $0.bytes) })
        return out
    }
}

/// The server's own counts: responses by path and status, completions by model.
final class ServerCounters: @unchecked Sendable {
    struct Key: Hashable { var path: String, status: Int }
    struct Snapshot {
        var responses: [Key: Int] = [:]
        var completions: [String: Int] = [:]
    }
    private let lock = NSLock()
    private var s = Snapshot()

    func response(_ path: String, _ status: Int) {
        lock.withLock { s.responses[Key(path: path, status: status), default: 0] += 1 }
    }
    func completion(_ adapter: String?) { lock.withLock { s.completions[adapter ?? "base", default: 0] += 1 } }
    func snapshot() -> Snapshot { lock.withLock { s } }
}

/// Turns every error into OpenAI's JSON body (an unknown path 404, a wrong method 405 included)
/// and counts every response.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let counters: ServerCounters

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        let path = request.uri.path
        let response: Response
        do {
            response = try await next(request, context)
        } catch let e as APIError {
            response = Self.error(e)
        } catch let e as HTTPError {
            let message =
                e.status == .notFound ? "no route \(request.method) \(path)" : (e.body ?? e.status.reasonPhrase)
            response = Self.error(APIError(e.status.code, message))
        } catch {
            response = Self.error(APIError(500, "\(error)"))
        }
        // Only known routes are counted by path, so a scan cannot grow the table without bound.
        let known = ["/health", "/metrics", "/v1/models", "/v1/completions", "/v1/adapters"]
        counters.response(
            known.contains(path) ? path : (path.hasPrefix("/v1/adapters/") ? "/v1/adapters/:name" : "other"),
            response.status.code)
        return response
    }

    static func error(_ e: APIError) -> Response {
        Response(
            status: .init(code: e.status), headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: e.body)))
    }
}
