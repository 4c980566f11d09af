import Foundation
import XCTest

/// Runs the built `lora-dist` binary (alone or under launch/mpirun) as a child process with a time
/// limit, for the tests that need real processes.
enum Launcher {
    static let root: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    static var binary: String {
        if let b = ProcessInfo.processInfo.environment["LORA_DIST_BIN"] { return b }
        return root.appendingPathComponent(".build/release/lora-dist").path
    }

    struct Result {
        var status: Int32
        var output: String
        var seconds: Double
        var timedOut: Bool
    }

    /// Runs `args` (the first is the program) and kills it after `timeout` seconds.
    static func run(_ args: [String], timeout: Double, cwd: String? = nil, env: [String: String] = [:]) throws -> Result
    {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        var e = ProcessInfo.processInfo.environment
        // ip, tc and friends live in the sbin directories, which a non-login PATH may lack.
        if let path = e["PATH"], !path.split(separator: ":").contains("/usr/sbin") {
            e["PATH"] = path + ":/usr/sbin:/sbin"
        }
        for (k, v) in env { e[k] = v }
        p.environment = e
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        let out = FileManager.default.temporaryDirectory.appendingPathComponent(
            "lora-dist-test-\(UUID().uuidString).log")
        FileManager.default.createFile(atPath: out.path, contents: nil)
        let h = try FileHandle(forWritingTo: out)
        p.standardOutput = h
        p.standardError = h
        let t0 = Date()
        try p.run()
        var timedOut = false
        while p.isRunning {
            if Date().timeIntervalSince(t0) > timeout {
                timedOut = true
                killTree(p.processIdentifier)
                break
            }
            usleep(20_000)
        }
        p.waitUntilExit()
        try h.close()
        let text = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
        try? FileManager.default.removeItem(at: out)
        return Result(
            status: p.terminationStatus, output: text, seconds: Date().timeIntervalSince(t0), timedOut: timedOut)
    }

    /// `launch/mpirun -n N lora-dist ARGS...`
    static func mpirun(
        _ n: Int, _ args: [String], timeout: Double = 120, cwd: String? = nil, env: [String: String] = [:]
    ) throws -> Result {
        let mpirun = root.appendingPathComponent("launch/mpirun").path
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/mpirun") || which("mpirun") != nil else {
            XCTFail("mpirun is not installed: run launch/setup first")
            return Result(status: -1, output: "", seconds: 0, timedOut: false)
        }
        return try run([mpirun, "-n", String(n), binary] + args, timeout: timeout, cwd: cwd, env: env)
    }

    static func lora(_ args: [String], timeout: Double = 120, cwd: String? = nil, env: [String: String] = [:]) throws
        -> Result
    {
        try run([binary] + args, timeout: timeout, cwd: cwd, env: env)
    }

    /// The processes below `pid` (children, their children, ...), read from /proc.
    static func descendants(of pid: Int32) -> [Int32] {
        var parent: [Int32: Int32] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let p = Int32(name), let stat = try? String(contentsOfFile: "/proc/\(name)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 2, let pp = Int32(fields[1]) { parent[p] = pp }
        }
        var out: [Int32] = []
        var frontier = [pid]
        while let q = frontier.popLast() {
            let kids = parent.filter { $0.value == q }.map(\.key).sorted()
            out += kids
            frontier += kids
        }
        return out
    }

    /// The rank processes of a launch: the `lora-dist` processes below `pid`.
    static func ranks(below pid: Int32) -> [Int32] {
        descendants(of: pid).filter { p in
            ((try? String(contentsOfFile: "/proc/\(p)/comm", encoding: .utf8)) ?? "").hasPrefix("lora-dist")
        }
    }

    /// SIGKILL to `pid` and everything below it (a test that timed out leaves nothing running).
    static func killTree(_ pid: Int32) {
        let all = descendants(of: pid)
        kill(pid, SIGKILL)
        for p in all { kill(p, SIGKILL) }
    }

    static func which(_ tool: String) -> String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") + ["/usr/sbin", "/sbin"] {
            let p = "\(dir)/\(tool)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return nil
    }
}

extension Launcher {
    /// Starts `launch/mpirun -n N lora-dist ARGS`, waits until `afterFile` exists, SIGKILLs one rank
    /// process, and returns how mpirun ended.
    static func mpirunKillingOneRank(_ n: Int, _ args: [String], afterFile: String, timeout: Double) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: root.appendingPathComponent("launch/mpirun").path)
        p.arguments = ["-n", String(n), binary] + args
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("kill-\(UUID().uuidString).log")
        FileManager.default.createFile(atPath: out.path, contents: nil)
        let h = try FileHandle(forWritingTo: out)
        p.standardOutput = h
        p.standardError = h
        try p.run()
        let t0 = Date()
        while !FileManager.default.fileExists(atPath: afterFile) && Date().timeIntervalSince(t0) < timeout
            && p.isRunning
        { usleep(50_000) }
        // The rank processes are the lora-dist processes below launch/mpirun (children of mpirun).
        let pids = ranks(below: p.processIdentifier)
        let tKill = Date()
        if let victim = pids.last { kill(victim, SIGKILL) }
        var timedOut = false
        while p.isRunning {
            if Date().timeIntervalSince(tKill) > timeout {
                timedOut = true
                killTree(p.processIdentifier)
                break
            }
            usleep(20_000)
        }
        p.waitUntilExit()
        try h.close()
        let text = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
        XCTAssertEqual(pids.count, n, "the rank processes below launch/mpirun: \(pids)")
        return Result(
            status: pids.isEmpty ? -1 : p.terminationStatus,
            output: text + "\n(killed pid \(pids.last ?? -1) of \(pids))",
            seconds: Date().timeIntervalSince(tKill), timedOut: timedOut)
    }
}

/// A launch running in the background, for the tests that signal, stop or kill it while it runs.
final class BackgroundLaunch {
    let process = Process()
    private let log: URL
    private let handle: FileHandle
    let started = Date()

    /// Starts `args` (the first is the program) with `env` added to this environment.
    init(_ args: [String], env: [String: String] = [:]) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = args
        var e = ProcessInfo.processInfo.environment
        for (k, v) in env { e[k] = v }
        process.environment = e
        log = FileManager.default.temporaryDirectory.appendingPathComponent("bg-\(UUID().uuidString).log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    /// `launch/mpirun -n N lora-dist ARGS...` in the background.
    static func mpirun(_ n: Int, _ args: [String], env: [String: String] = [:]) throws -> BackgroundLaunch {
        try BackgroundLaunch(
            [Launcher.root.appendingPathComponent("launch/mpirun").path, "-n", String(n), Launcher.binary] + args,
            env: env)
    }

    var pid: Int32 { process.processIdentifier }
    var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    /// Waits until `condition` holds (true) or `timeout` seconds pass or the launch ends (false).
    func wait(timeout: Double, until condition: () -> Bool) -> Bool {
        let t0 = Date()
        while Date().timeIntervalSince(t0) < timeout {
            if condition() { return true }
            if !process.isRunning { return condition() }
            usleep(50_000)
        }
        return false
    }

    /// Waits for the end (at most `timeout` seconds, then kills everything below it); seconds are
    /// counted from `since`.
    func finish(timeout: Double, since: Date) -> Launcher.Result {
        var timedOut = false
        while process.isRunning {
            if Date().timeIntervalSince(since) > timeout {
                timedOut = true
                Launcher.killTree(pid)
                break
            }
            usleep(20_000)
        }
        process.waitUntilExit()
        try? handle.close()
        let text = output
        try? FileManager.default.removeItem(at: log)
        return Launcher.Result(
            status: process.terminationStatus, output: text, seconds: Date().timeIntervalSince(since),
            timedOut: timedOut)
    }
}

/// Lines of a run's metrics.jsonl (0 while it does not exist).
func metricsLines(_ out: String) -> Int {
    ((try? String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8)) ?? "").split(separator: "\n").count
}
