import XCTest

/// The simulated cluster: two hosts as network namespaces, a 2-rank training across them equals
/// the same run on loopback, and no namespace is left behind. Needs root and iproute2 (launch/setup
/// installs it); under CI=true it fails, never skips, when they are missing.
final class SimulatedClusterTests: XCTestCase {
    func testTrainingAcrossTwoNamespacedHostsEqualsLoopback() throws {
        guard getuid() == 0, Launcher.which("ip") != nil else {
            try Skip.because("network namespaces need root and iproute2 (ip, tc); run as root after launch/setup")
        }
        let probe = try Launcher.run(["ip", "netns", "add", "ldprobe-\(getpid())"], timeout: 10)
        guard probe.status == 0 else { try Skip.because("cannot create network namespaces here: \(probe.output)") }
        _ = try Launcher.run(["ip", "netns", "del", "ldprobe-\(getpid())"], timeout: 10)

        let base = FileManager.default.temporaryDirectory.appendingPathComponent("sim-\(UUID().uuidString)").path
        let args = [
            "train", "--tp", "1", "--steps", "4", "--batch", "4", "--seq", "168", "--eval-examples", "0",
            "--valid-limit", "4",
            "--lr", "5e-3", "--warmup", "1", "--log-every", "1"
        ]
        let sim = Launcher.root.appendingPathComponent("cluster/sim").path
        let prefix = "ldt\(getpid() % 10000)"
        let r = try Launcher.run(
            [sim, "--hosts", "2", "--rate", "1gbit", "--prefix", prefix, "--", Launcher.binary] + args + [
                "--out", base + "/sim"
            ],
            timeout: 300)
        XCTAssertEqual(r.status, 0, r.output)
        let loop = try Launcher.mpirun(2, args + ["--out", base + "/loop"], timeout: 300)
        XCTAssertEqual(loop.status, 0, loop.output)
        let a = try String(contentsOfFile: base + "/sim/metrics.jsonl", encoding: .utf8)
        let b = try String(contentsOfFile: base + "/loop/metrics.jsonl", encoding: .utf8)
        func losses(_ s: String) -> [String] { s.split(separator: "\n").map { String($0.split(separator: ",")[1]) } }
        XCTAssertEqual(losses(a).count, 4)
        XCTAssertEqual(
            losses(a), losses(b), "the same ranks and reductions give the same losses across hosts and on loopback")
        let fa = try Data(contentsOf: URL(fileURLWithPath: base + "/sim/adapter.safetensors"))
        let fb = try Data(contentsOf: URL(fileURLWithPath: base + "/loop/adapter.safetensors"))
        XCTAssertEqual(fa, fb)
        let left = try Launcher.run(["ip", "netns", "list"], timeout: 10)
        XCTAssertFalse(left.output.contains(prefix), "namespaces left behind: \(left.output)")
    }
}
