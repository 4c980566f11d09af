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

    struct Result { var status: Int32; var output: String; var seconds: Double; var timedOut: Bool }

    /// Runs `args` (the first is the program) and kills it after `timeout` seconds.
    static func run(_ args: [String], timeout: Double, cwd: String? = nil, env: [String: String] = [:]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        var e = ProcessInfo.processInfo.environment
        // ip, tc and friends live in the sbin directories, which a non-login PATH may lack.
        if let path = e["PATH"], !path.split(separator: ":").contains("/usr/sbin") { e["PATH"] = path + ":/usr/sbin:/sbin" }
        for (k, v) in env { e[k] = v }
        p.environment = e
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("lora-dist-test-\(UUID().uuidString).log")
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
                kill(-p.processIdentifier, SIGKILL)
                p.terminate()
                kill(p.processIdentifier, SIGKILL)
                break
            }
            usleep(20_000)
        }
        p.waitUntilExit()
        try h.close()
        let text = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
        try? FileManager.default.removeItem(at: out)
        return Result(status: p.terminationStatus, output: text, seconds: Date().timeIntervalSince(t0), timedOut: timedOut)
    }

    /// `launch/mpirun -n N lora-dist ARGS...`
    static func mpirun(_ n: Int, _ args: [String], timeout: Double = 120, cwd: String? = nil) throws -> Result {
        let mpirun = root.appendingPathComponent("launch/mpirun").path
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/mpirun") || which("mpirun") != nil else {
            XCTFail("mpirun is not installed: run launch/setup first")
            return Result(status: -1, output: "", seconds: 0, timedOut: false)
        }
        return try run([mpirun, "-n", String(n), binary] + args, timeout: timeout, cwd: cwd)
    }

    static func lora(_ args: [String], timeout: Double = 120, cwd: String? = nil) throws -> Result {
        try run([binary] + args, timeout: timeout, cwd: cwd)
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
        while !FileManager.default.fileExists(atPath: afterFile) && Date().timeIntervalSince(t0) < timeout && p.isRunning { usleep(50_000) }
        // The rank processes are the lora-dist children of mpirun.
        let ps = try run(["pgrep", "-f", "-P", String(p.processIdentifier), "lora-dist"], timeout: 10)
        let pids = ps.output.split(separator: "\n").compactMap { Int32($0) }
        let tKill = Date()
        if let victim = pids.last { kill(victim, SIGKILL) }
        var timedOut = false
        while p.isRunning {
            if Date().timeIntervalSince(tKill) > timeout { timedOut = true; p.terminate(); break }
            usleep(20_000)
        }
        p.waitUntilExit()
        try h.close()
        let text = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
        return Result(status: pids.isEmpty ? -1 : p.terminationStatus, output: text + "\n(killed pid \(pids.last ?? -1) of \(pids))",
                      seconds: Date().timeIntervalSince(tKill), timedOut: timedOut)
    }
}
