import Foundation
import LoRADist

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// What `lora-dist bench serve` replays against a running server.
public struct ServeBenchOptions: Sendable {
    /// The server's root, http://127.0.0.1:PORT (loopback only: `checkLoopback`).
    public var url: URL
    /// Clients sending at once, each one request at a time.
    public var clients = 4
    /// Requests in all, over every client.
    public var requests = 32
    /// The model of request i is `models[i % models.count]` (a mix repeats a name).
    public var models: [String]
    /// The prompt of request i is `prompts[i % prompts.count]`.
    public var prompts: [String]
    public var maxTokens = 16
    /// Ask for server-sent events (time to first token is then the first token's arrival).
    public var stream = true
    /// Seconds for the whole run; requests not answered by then are counted failed or not sent.
    public var timeout: Double = 600

    public init(url: URL, models: [String], prompts: [String]) {
        self.url = url
        self.models = models
        self.prompts = prompts
    }

    /// `--adapters a,b,c` (round-robin) or a mix `a:3,b:1` (each name its weight times in turn):
    /// the models of successive requests, one round.
    public static func mix(_ text: String) throws -> [String] {
        var out: [String] = []
        var rounds: [(String, Int)] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.split(separator: ":", omittingEmptySubsequences: false)
            guard !parts.isEmpty, !parts[0].isEmpty, parts.count <= 2 else {
                throw ServeBenchError.bad("--adapters \(text): expected NAME[:WEIGHT],... (got `\(item)`)")
            }
            let weight = parts.count == 2 ? Int(parts[1]) : 1
            guard let w = weight, w >= 1 else {
                throw ServeBenchError.bad("--adapters \(text): a weight is a positive integer (got `\(item)`)")
            }
            rounds.append((String(parts[0]), w))
        }
        // Interleaved: a:2,b:1 is a, b, a (not a, a, b), so a short run still mixes.
        for k in 0..<(rounds.map(\.1).max() ?? 0) { out += rounds.filter { $0.1 > k }.map(\.0) }
        return out
    }

    /// Refuses any host but 127.0.0.1, ::1 or localhost, and any scheme but http.
    public static func checkLoopback(_ text: String) throws -> URL {
        guard let u = URL(string: text), u.scheme == "http", let host = u.host else {
            throw ServeBenchError.bad("--url \(text): expected http://127.0.0.1:PORT")
        }
        let h = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        guard ["127.0.0.1", "::1", "localhost"].contains(h.lowercased()) else {
            throw ServeBenchError.bad(
                "--url \(text): bench serve only loads a server on this machine (127.0.0.1, ::1 or localhost), not \(h)"
            )
        }
        return u
    }
}

public enum ServeBenchError: Error, CustomStringConvertible {
    case bad(String)
    case server(String)
    public var description: String {
        switch self {
        case .bad(let s): return s
        case .server(let s): return s
        }
    }
}

/// One site's collectives over the run, from /metrics before and after.
public struct ServeBenchCollective: Codable, Sendable {
    public var site: String
    public var op: String
    public var calls: Int
    public var bytes: Int
    /// Calls per token generated over the run (nil when none was).
    public var perToken: Double?
}

/// The run's figures. Latencies in milliseconds: time to first token (TTFT: from sending the
/// request to its first token's arrival; without streaming, to the whole response's) and time per
/// output token (TPOT: a request's (last token − first token) / (tokens − 1), or its whole time /
/// tokens without streaming), each p50 and p99 over the requests that succeeded.
public struct ServeBenchResult: Codable, Sendable {
    public var url: String
    public var clients: Int
    public var requests: Int
    public var stream: Bool
    public var maxTokens: Int
    public var models: [String]
    public var ok: Int
    public var failed: Int
    /// Requests not sent before the run's timeout.
    public var notSent: Int
    /// Tokens the responses carried.
    public var outputTokens: Int
    /// Tokens the server's /metrics says it generated over the run.
    public var serverGeneratedTokens: Int
    public var seconds: Double
    public var outputTokensPerSecond: Double
    /// nil when no request gave a value (TPOT: none gave two tokens).
    public var ttftP50Ms: Double?
    public var ttftP99Ms: Double?
    public var tpotP50Ms: Double?
    public var tpotP99Ms: Double?
    public var collectives: [ServeBenchCollective]
    /// The first few failures' messages.
    public var failures: [String]
}

/// The load generator of `lora-dist bench serve`: `clients` clients on URLSession (a data-task
/// delegate sees each server-sent event as it arrives), `requests` requests in all, each
/// `return_token_ids` so tokens are counted exactly; /metrics read before and after.
public enum ServeBench {
    /// What one request measured.
    struct Sample {
        var ok = false
        var tokens = 0
        var ttft = 0.0
        var tpot = Double.nan
        var error: String?
    }

    public static func run(_ o: ServeBenchOptions) throws -> ServeBenchResult {
        guard o.clients >= 1, o.requests >= 1, o.maxTokens >= 1, !o.models.isEmpty, !o.prompts.isEmpty,
            o.timeout > 0
        else {
            throw ServeBenchError.bad("bench serve needs clients, requests and max tokens ≥ 1, a model and a prompt")
        }
        let deadline = Date().addingTimeInterval(o.timeout)
        let before = try metrics(o.url, deadline: deadline)
        let samples = Samples(count: o.requests)
        let next = Counter()
        let t0 = ServeBench.clock()
        let group = DispatchGroup()
        for _ in 0..<o.clients {
            group.enter()
            Thread {
                let client = Client()
                while Date() < deadline, let i = next.take(below: o.requests) {
                    samples.set(i, client.send(o, index: i, deadline: deadline))
                }
                client.close()
                group.leave()
            }.start()
        }
        // Each request's own timeout ends it by the deadline; the margin covers its last write.
        _ = group.wait(timeout: .now() + o.timeout + 30)
        let seconds = ServeBench.clock() - t0
        let after = try metrics(o.url, deadline: Date().addingTimeInterval(30))
        let all = samples.all
        let done = all.compactMap { $0 }
        let good = done.filter(\.ok)
        let tokens = good.reduce(0) { $0 + $1.tokens }
        let generated = (after.generated ?? 0) - (before.generated ?? 0)
        var rows: [ServeBenchCollective] = []
        for (key, a) in after.collectives.sorted(by: { ($0.key.site, $0.key.op) < ($1.key.site, $1.key.op) }) {
            let b = before.collectives[key] ?? (0, 0)
            let calls = a.calls - b.calls
            guard calls > 0 else { continue }
            rows.append(
                ServeBenchCollective(
                    site: key.site, op: key.op, calls: calls, bytes: a.bytes - b.bytes,
                    perToken: generated > 0 ? Double(calls) / Double(generated) : nil))
        }
        let ttft = good.map { 1000 * $0.ttft }
        let tpot = good.map { 1000 * $0.tpot }.filter(\.isFinite)
        return ServeBenchResult(
            url: o.url.absoluteString, clients: o.clients, requests: o.requests, stream: o.stream,
            maxTokens: o.maxTokens, models: o.models, ok: good.count, failed: done.count - good.count,
            notSent: all.count - done.count, outputTokens: tokens, serverGeneratedTokens: generated,
            seconds: seconds, outputTokensPerSecond: seconds > 0 ? Double(tokens) / seconds : 0,
            ttftP50Ms: percentile(ttft, 50), ttftP99Ms: percentile(ttft, 99), tpotP50Ms: percentile(tpot, 50),
            tpotP99Ms: percentile(tpot, 99), collectives: rows,
            failures: Array(done.compactMap(\.error).prefix(5)))
    }

    /// Seconds on a monotonic clock.
    static func clock() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }

    /// The nearest-rank percentile `p` of `values` (nil for none).
    public static func percentile(_ values: [Double], _ p: Double) -> Double? {
        guard !values.isEmpty else { return nil }
        let s = values.sorted()
        let rank = Int((p / 100 * Double(s.count)).rounded(.up))
        return s[min(max(rank, 1), s.count) - 1]
    }

    static func ms(_ v: Double?, _ digits: Int) -> String { v.map { fixed($0, digits) } ?? "-" }

    /// The table `bench serve` prints.
    public static func table(_ r: ServeBenchResult) -> String {
        var t = TextTable(
            [
                "clients", "requests", "ok", "failed", "not sent", "output tokens", "server tokens", "s",
                "output tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms"
            ], left: [])
        t.add([
            String(r.clients), String(r.requests), String(r.ok), String(r.failed), String(r.notSent),
            String(r.outputTokens), String(r.serverGeneratedTokens), fixed(r.seconds, 2),
            fixed(r.outputTokensPerSecond, 1), ms(r.ttftP50Ms, 1), ms(r.ttftP99Ms, 1), ms(r.tpotP50Ms, 2),
            ms(r.tpotP99Ms, 2)
        ])
        var out = t.render()
        if r.collectives.isEmpty {
            out += "collectives over the run: none (the server's ledger recorded no call)\n"
        } else {
            var c = TextTable(["site", "op", "calls", "bytes", "per generated token"], left: [0, 1])
            for x in r.collectives {
                c.add([x.site, x.op, String(x.calls), String(x.bytes), ms(x.perToken, 3)])
            }
            out += "collectives over the run (the server's /metrics, after − before):\n" + c.render()
        }
        for f in r.failures { out += "failed: \(f)\n" }
        return out
    }

    /// What /metrics says: tokens generated so far and the ledger's collectives by site and op.
    struct Metrics {
        struct Key: Hashable { var site: String, op: String }
        var generated: Int?
        var collectives: [Key: (calls: Int, bytes: Int)] = [:]
    }

    static func metrics(_ root: URL, deadline: Date) throws -> Metrics {
        let (status, body) = try fetch(root.appendingPathComponent("metrics"), deadline: deadline)
        guard status == 200 else {
            throw ServeBenchError.server("GET /metrics answered \(status): \(body.prefix(200))")
        }
        return parseMetrics(body)
    }

    /// Reads the Prometheus text of /metrics (Server.swift's `prometheus`).
    static func parseMetrics(_ text: String) -> Metrics {
        var m = Metrics()
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Int(line[line.index(after: space)...]) else {
                continue
            }
            let name = line[..<space]
            if name == "lora_dist_generated_tokens_total" { m.generated = value }
            let calls = name.hasPrefix("lora_dist_collectives_total{")
            guard calls || name.hasPrefix("lora_dist_collective_bytes_total{") else { continue }
            func label(_ l: String) -> String {
                guard let r = name.range(of: l + "=\"") else { return "" }
                return String(name[r.upperBound...].prefix { $0 != "\"" })
            }
            let key = Metrics.Key(site: label("site"), op: label("op"))
            var v = m.collectives[key] ?? (0, 0)
            if calls { v.calls = value } else { v.bytes = value }
            m.collectives[key] = v
        }
        return m
    }

    /// One GET, waiting at most until `deadline`.
    static func fetch(_ url: URL, deadline: Date) throws -> (Int, String) {
        let client = Client()
        defer { client.close() }
        var request = URLRequest(url: url)
        request.timeoutInterval = max(1, deadline.timeIntervalSinceNow)
        let r = client.perform(request, deadline: deadline)
        if let e = r.error { throw ServeBenchError.server("GET \(url.path): \(e)") }
        return (r.status, String(decoding: r.body, as: UTF8.self))
    }

    /// Request `i`'s body.
    static func body(_ o: ServeBenchOptions, _ i: Int) -> Data {
        let fields: [String: Any] = [
            "model": o.models[i % o.models.count], "prompt": o.prompts[i % o.prompts.count],
            "max_tokens": o.maxTokens, "temperature": 0, "stream": o.stream, "return_token_ids": true
        ]
        return (try? JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])) ?? Data()
    }

    /// A client: one URLSession whose delegate sees the bytes of its one request in flight as they
    /// arrive, and the time each server-sent event with tokens came.
    final class Client: NSObject, URLSessionDataDelegate, @unchecked Sendable {
        struct Response {
            var status = 0
            var body = Data()
            var error: String?
            /// Arrival times of the tokens of a stream (one per token id).
            var tokenTimes: [Double] = []
            var tokens = 0
        }
        private let lock = NSLock()
        private var current = Response()
        private var pending = Data()
        private var streaming = false
        private let finished = DispatchSemaphore(value: 0)
        private var session: URLSession!

        override init() {
            super.init()
            let c = URLSessionConfiguration.ephemeral
            c.httpMaximumConnectionsPerHost = 1
            session = URLSession(configuration: c, delegate: self, delegateQueue: nil)
        }

        func close() { session.invalidateAndCancel() }

        /// Runs `request` to its end (or `deadline`: then cancelled).
        func perform(_ request: URLRequest, deadline: Date, streaming: Bool = false) -> Response {
            lock.withLock {
                current = Response()
                pending = Data()
                self.streaming = streaming
            }
            let task = session.dataTask(with: request)
            task.resume()
            if finished.wait(timeout: .now() + max(0, deadline.timeIntervalSinceNow) + 5) == .timedOut {
                task.cancel()
                _ = finished.wait(timeout: .now() + 10)
                return lock.withLock {
                    var r = current
                    r.error = r.error ?? "no answer before the run's timeout"
                    return r
                }
            }
            return lock.withLock { current }
        }

        func send(_ o: ServeBenchOptions, index i: Int, deadline: Date) -> Sample {
            var request = URLRequest(url: o.url.appendingPathComponent("v1/completions"))
            request.httpMethod = "POST"
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            request.httpBody = ServeBench.body(o, i)
            request.timeoutInterval = max(1, deadline.timeIntervalSinceNow)
            let t0 = ServeBench.clock()
            let r = perform(request, deadline: deadline, streaming: o.stream)
            let t1 = ServeBench.clock()
            var s = Sample()
            if let e = r.error {
                s.error = "request \(i): \(e)"
                return s
            }
            guard r.status == 200 else {
                s.error = "request \(i): HTTP \(r.status): \(String(decoding: r.body, as: UTF8.self).prefix(200))"
                return s
            }
            if o.stream {
                let text = String(decoding: r.body, as: UTF8.self)
                guard text.hasSuffix("data: [DONE]\n\n"), !text.contains("\"error\"") else {
                    s.error = "request \(i): the stream did not end with [DONE]: \(text.suffix(200))"
                    return s
                }
                s.tokens = r.tokens
                guard let first = r.tokenTimes.first, let last = r.tokenTimes.last else {
                    s.error = "request \(i): no token"
                    return s
                }
                s.ttft = first - t0
                if r.tokenTimes.count > 1 { s.tpot = (last - first) / Double(r.tokenTimes.count - 1) }
            } else {
                let json = (try? JSONSerialization.jsonObject(with: r.body)) as? [String: Any]
                let choice = (json?["choices"] as? [[String: Any]])?.first
                guard let ids = choice?["token_ids"] as? [Any] else {
                    s.error = "request \(i): no token_ids in \(String(decoding: r.body, as: UTF8.self).prefix(200))"
                    return s
                }
                s.tokens = ids.count
                s.ttft = t1 - t0
                if !ids.isEmpty { s.tpot = (t1 - t0) / Double(ids.count) }
            }
            s.ok = s.tokens > 0
            if !s.ok { s.error = "request \(i): no token" }
            return s
        }

        func urlSession(
            _ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
            completionHandler: @escaping (URLSession.ResponseDisposition) -> Void
        ) {
            lock.withLock { current.status = (response as? HTTPURLResponse)?.statusCode ?? 0 }
            completionHandler(.allow)
        }

        func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
            let t = ServeBench.clock()
            lock.withLock {
                current.body += data
                guard streaming else { return }
                // Whole events ("data: {...}\n\n") so far; each token id is stamped with this chunk's time.
                pending += data
                let separator = Data("\n\n".utf8)
                while let r = pending.range(of: separator) {
                    let event = pending.subdata(in: pending.startIndex..<r.lowerBound)
                    pending.removeSubrange(pending.startIndex..<r.upperBound)
                    guard event.starts(with: Data("data: {".utf8)),
                        let json = try? JSONSerialization.jsonObject(with: event.dropFirst(6)) as? [String: Any],
                        let choice = (json["choices"] as? [[String: Any]])?.first,
                        let ids = choice["token_ids"] as? [Any]
                    else { continue }
                    current.tokens += ids.count
                    current.tokenTimes += Array(repeating: t, count: ids.count)
                }
            }
        }

        func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: Error?) {
            lock.withLock { if let error { current.error = "\(error.localizedDescription)" } }
            finished.signal()
        }
    }

    /// The next request's index, for the clients in turn.
    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var value = 0
        func take(below n: Int) -> Int? {
            lock.withLock {
                guard value < n else { return nil }
                defer { value += 1 }
                return value
            }
        }
    }

    /// Each request's sample, nil while not sent.
    final class Samples: @unchecked Sendable {
        private let lock = NSLock()
        private var values: [Sample?]
        init(count: Int) { values = Array(repeating: nil, count: count) }
        func set(_ i: Int, _ s: Sample) { lock.withLock { values[i] = s } }
        var all: [Sample?] { lock.withLock { values } }
    }
}
