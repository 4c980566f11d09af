import Foundation
import XCTest

@testable import LoRADist

/// Every command of README.md's ```sh blocks runs as written. The commands run in README order in
/// one scratch directory, so a command finds the files an earlier one wrote (`runs/hf/adapter.safetensors`
/// after `train --out runs/hf`), on fixtures made first at the paths the README names: `gpt2-local`
/// (reference/make_random_gpt2.py, as the README suggests), `path/to/Qwen2.5-0.5B`
/// (reference/make_random_qwen2.py: Qwen2.5-0.5B's 14 query and 2 key/value heads at a small width)
/// and `e2e-dataset` (E2EFixture). Each runs with its own arguments and only shortening overrides
/// (one step, a few examples: `shortened`); `mpirun -n N` runs in-process as `--local-ranks N`
/// except the first such command and every `launch/mpirun` one, which run under real MPI. A shape
/// too large for a test keeps every option with a small stand-in (`standIns`); a command that cannot
/// run here at all is on `notRun` with the reason. A README command on neither path fails the test,
/// so a new README command must be covered.
final class ReadmeCommandsTests: XCTestCase {
    struct Command: CustomStringConvertible {
        var line: Int
        var words: [String]
        var text: String { words.joined(separator: " ") }
        var description: String { "README.md:\(line): \(text)" }
    }

    /// README commands that are not run, by their text, with the reason.
    static let notRun: [String: String] = [
        "launch/main":
            """
        installs packages, builds the release binary and trains the main job (240 steps on 4 ranks); the build is \
        what these tests run, the main job is MPITrainTests'
        """,
        "launch/test": "runs this whole test suite",
        "launch/bench-peer":
            """
        all five cases on the gpt2 shape, 3 runs a side (about 40 processes of a minute each); the README's next \
        line runs the same script on one case here, on the tiny shape
        """,
        "cluster/scale --out docs/scale":
            """
        creates network namespaces and tc links as root and trains 36 multi-host runs; it would also overwrite the \
        committed docs/scale figures
        """
    ]

    /// Paths the README names for checkpoints too large for a test, and the stand-in each gets (a
    /// fixture directory of the same family, every other option of the command kept).
    static let standIns: [String: (fixture: String, reason: String)] = [
        "gpt2-medium-local": (
            "gpt2-local",
            """
            gpt2-medium (355 M parameters) through the paper's E2E recipe and beam-10 decoding takes far longer than a \
            test; the random GPT-2 directory stands in
            """
        )
    ]

    // MARK: extraction

    /// Shell words: split at blanks, '…' and "…" quoted, a word starting with # ends the line.
    static func words(_ s: String) -> [String] {
        var out: [String] = []
        var cur = ""
        var quote: Character? = nil
        var inWord = false
        for ch in s {
            if let q = quote {
                if ch == q { quote = nil } else { cur.append(ch) }
            } else if ch == "'" || ch == "\"" {
                quote = ch
                inWord = true
            } else if ch == " " || ch == "\t" {
                if inWord {
                    out.append(cur)
                    cur = ""
                    inWord = false
                }
            } else if ch == "#" && !inWord {
                break
            } else {
                cur.append(ch)
                inWord = true
            }
        }
        if inWord { out.append(cur) }
        return out
    }

    /// The commands of the ```sh blocks of `readme`: continuation lines joined, comments dropped.
    static func commands(in readme: String) -> [Command] {
        var out: [Command] = []
        var fence: String? = nil
        var pending = ""
        var start = 0
        for (i, line) in readme.components(separatedBy: "\n").enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("```") {
                fence = fence == nil ? String(trimmed.dropFirst(3)) : nil
                continue
            }
            guard fence == "sh" else { continue }
            if pending.isEmpty { start = i + 1 }
            let body = line.replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
            if body.hasSuffix("\\") {
                pending += String(body.dropLast()) + " "
                continue
            }
            let w = words(pending + body)
            pending = ""
            if !w.isEmpty { out.append(Command(line: start, words: w)) }
        }
        return out
    }

    func testExtractionJoinsContinuationLinesAndDropsComments() {
        let text = """
            prose `lora-dist ignored`
            ```sh
            lora-dist data --out data   # a comment
            mpirun -n 4 lora-dist train --seq 128 \\
                --out runs/x           # the rest
            ```
            ```
            lora-dist not-a-command
            ```
            ```sh
            launch/bench-peer --cases 'lora:fp32:1'
            ```
            """
        let c = Self.commands(in: text)
        XCTAssertEqual(
            c.map(\.words),
            [
                ["lora-dist", "data", "--out", "data"],
                ["mpirun", "-n", "4", "lora-dist", "train", "--seq", "128", "--out", "runs/x"],
                ["launch/bench-peer", "--cases", "lora:fp32:1"]
            ])
        XCTAssertEqual(c.map(\.line), [3, 4, 11])
    }

    // MARK: shortening

    /// Sets option `name` to `value` in `args[range]`: replaces the value where the option is
    /// given, else appends it at the end of the range.
    static func set(_ args: inout [String], _ name: String, _ value: String, in range: Range<Int>? = nil) {
        let r = range ?? 0..<args.count
        if let i = args[r].firstIndex(of: name), i + 1 < r.upperBound {
            args[i + 1] = value
            return
        }
        args.insert(contentsOf: [name, value], at: r.upperBound)
    }

    /// The range of `args` before a `--` (the command's own options), and after it.
    static func segments(_ args: [String]) -> (own: Range<Int>, after: Range<Int>?) {
        guard let dd = args.firstIndex(of: "--") else { return (0..<args.count, nil) }
        return (0..<dd, (dd + 1)..<args.count)
    }

    /// A lora-dist command's arguments shortened for a test: one optimizer step, a few examples.
    static func shortened(_ args: [String]) -> [String] {
        var a = args
        switch a.first ?? "" {
        case "train":
            for (k, v) in [
                ("--steps", "1"), ("--batch", "4"), ("--eval-examples", "1"), ("--valid-limit", "2"),
                ("--eval-before", "off"), ("--log-every", "1")
            ] { set(&a, k, v) }
        case "evaluate":
            set(&a, "--limit", "1")
        case "sweep":
            set(&a, "--steps", "1", in: segments(a).own)
            if segments(a).after == nil { a.append("--") }
            for (k, v) in [("--eval-examples", "0"), ("--valid-limit", "2"), ("--batch", "4")] {
                set(&a, k, v, in: segments(a).after!)
            }
        case "bench" where a.count > 1 && a[1] == "train":
            // On a dataset (--data) the rows are as long as its longest example: a --seq shorter than
            // that would drop every example.
            let seq: [(String, String)] = a.contains("--data") ? [] : [("--seq", "16")]
            for (k, v) in [("--steps", "1"), ("--warmup", "0"), ("--batch", "1")] + seq + [("--peak-gflops", "100")] {
                set(&a, k, v, in: segments(a).own)
            }
        default: break
        }
        return a
    }

    // MARK: running

    /// Makes the fixtures the README's commands name, in `dir`.
    static func makeFixtures(_ dir: String) throws {
        let text = dir + "/fixture-text"
        try BuiltinTask.writeFiles(dir: text, train: 300, valid: 8, test: 8, pretrainBytes: 1000, seed: 42)
        _ = try PythonReference.check("make_random_gpt2.py", [dir + "/gpt2-local", "--text", text + "/train.jsonl"])
        try FileManager.default.createDirectory(atPath: dir + "/path/to", withIntermediateDirectories: true)
        _ = try PythonReference.check(
            "make_random_qwen2.py", [dir + "/path/to/Qwen2.5-0.5B", "--tokenizer", dir + "/gpt2-local"])
        try E2EFixture.write(dir + "/e2e-dataset")
        for (name, s) in standIns {
            try FileManager.default.createSymbolicLink(
                atPath: dir + "/" + name, withDestinationPath: dir + "/" + s.fixture)
        }
    }

    /// `args` with absolute paths moved under `dir` (the README's /tmp/sweeps/... stay in the scratch directory).
    static func rerooted(_ args: [String], _ dir: String) -> [String] {
        args.map { $0.hasPrefix("/") && !$0.hasPrefix(dir) ? dir + $0 : $0 }
    }

    static func value(_ args: [String], _ name: String) -> String? {
        guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
        return args[i + 1]
    }

    static func lines(_ path: String) -> Int {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").count
    }

    /// Checks the files a finished lora-dist command `args` (run in `dir`) wrote.
    func checkOutputs(_ args: [String], _ dir: String, _ c: Command) {
        func path(_ p: String) -> String { p.hasPrefix("/") ? p : dir + "/" + p }
        func exists(_ p: String) {
            XCTAssertTrue(FileManager.default.fileExists(atPath: path(p)), "\(c): \(p) was not written")
        }
        let out = Self.value(args, "--out")
        switch args.first ?? "" {
        case "data":
            let o = out ?? "data/builtin"
            exists(o + "/train.jsonl")
            if let n = Self.value(args, "--train") {
                XCTAssertEqual(Self.lines(path(o + "/train.jsonl")), Int(n), "\(c)")
            }
        case "train":
            let o = out ?? "runs/latest"
            exists(o + "/adapter.safetensors")
            exists(o + "/summary.json")
            XCTAssertEqual(Self.lines(path(o + "/metrics.jsonl")), 1, "\(c): one step")
        case "evaluate":
            let o = out ?? "runs/evaluate"
            exists(o + "/scores.json")
            XCTAssertEqual(Self.lines(path(o + "/predictions.txt")), 1, "\(c): one example")
        case "export-peft":
            exists(out! + "/adapter_config.json")
            exists(out! + "/adapter_model.safetensors")
        case "merge":
            exists(out! + "/model.safetensors")
            exists(out! + "/config.json")
        case "analyze":
            exists((out ?? "runs/analyze") + "/analysis.json")
        case "sweep":
            let own = Array(args[Self.segments(args).own])
            let seeds = (Self.value(own, "--seeds") ?? "1,2,3").split(separator: ",").count
            let sets =
                (Self.value(own, "--target-sets")
                ?? (args[1] == "rank" ? "q;v;q,v;q,k,v,o" : "q;k;v;o;q,k;q,v;q,k,v,o")).split(separator: ";").count
            let ranks = args[1] == "rank" ? (Self.value(own, "--ranks") ?? "1,2,4,8,64").split(separator: ",").count : 1
            XCTAssertEqual(
                Self.lines(path(out! + "/sweep.csv")), 1 + seeds * sets * ranks, "\(c): a header and a row per run")
            exists(out! + "/sweep.md")
        case "bench":
            if let j = Self.value(args, "--json") {
                let obj = (try? Data(contentsOf: URL(fileURLWithPath: path(j)))).flatMap {
                    try? JSONSerialization.jsonObject(with: $0)
                }
                let first = (obj as? [[String: Any]])?.first ?? [:]
                let trainable = (first["trainableParams"] ?? first["trainable_params"]) as? Int
                XCTAssertNotNil(trainable, "\(c): no trainable count in \(j)")
                if args.contains("gpt2") && Self.value(args, "--lora-targets") == "q,v"
                    && Self.value(args, "--lora-rank") == "4"
                {
                    XCTAssertEqual(trainable, 147_456, "\(c): the README's LoRA r 4 on q,v of the gpt2 shape")
                }
            }
        default: break
        }
    }

    enum Outcome {
        case ran(String)
        case notRun(String)
    }

    /// Runs README command `c` in `dir`; `realMPI` says whether an `mpirun -n N` runs under MPI.
    func run(_ c: Command, in dir: String, realMPI: Bool) throws -> Outcome {
        if let why = Self.notRun[c.text] { return .notRun(why) }
        var w = c.words
        var ranks: Int? = nil
        var viaMPI = false
        var how = "as written"
        if ["mpirun", "launch/mpirun"].contains(w[0]), w.count > 3, w[1] == "-n", let n = Int(w[2]), w[3] == "lora-dist"
        {
            ranks = n
            viaMPI = w[0] == "launch/mpirun" || realMPI
            w.removeFirst(3)
        }
        let timeout = 150.0
        let result: Launcher.Result
        switch w[0] {
        case "lora-dist":
            var args = Self.shortened(Self.rerooted(Array(w.dropFirst()), dir))
            for (name, s) in Self.standIns where args.contains(name) { how = "stand-in for \(name): \(s.reason)" }
            if let n = ranks, !viaMPI {
                Self.set(&args, "--local-ranks", String(n), in: Self.segments(args).own)
                how += ", \(n) ranks in-process"
            }
            result =
                viaMPI
                ? try Launcher.mpirun(ranks!, args, timeout: timeout, cwd: dir)
                : try Launcher.lora(args, timeout: timeout, cwd: dir)
            if viaMPI { how += ", under mpirun -n \(ranks!)" }
            XCTAssertEqual(
                result.status, 0, "\(c) ran as lora-dist \(args.joined(separator: " ")):\n\(result.output.suffix(3000))"
            )
            if result.status == 0 { checkOutputs(args, dir, c) }
        case "python3" where w.count > 1 && w[1] == "reference/peer_peft.py":
            var args = Array(w.dropFirst(2))
            let seq: [(String, String)] = args.contains("--data") ? [] : [("--seq", "16")]
            for (k, v) in [("--steps", "1"), ("--warmup", "0"), ("--batch", "1")] + seq { Self.set(&args, k, v) }
            result = try Launcher.run(
                [PythonReference.python, Launcher.root.appendingPathComponent(w[1]).path] + args, timeout: timeout,
                cwd: dir)
            XCTAssertEqual(result.status, 0, "\(c):\n\(result.output.suffix(3000))")
            let json =
                result.output.split(separator: "\n").last { $0.hasPrefix("{") }.flatMap {
                    try? JSONSerialization.jsonObject(with: Data($0.utf8))
                } as? [String: Any]
            // On a dataset the peer reports examples/s and real (target) tokens/s.
            let rate = args.contains("--data") ? "real_tokens_per_second" : "tokens_per_second"
            XCTAssertNotNil(json?[rate] as? Double, "\(c): no measurement in \(result.output.suffix(1000))")
            if Self.value(args, "--model") == "gpt2" && Self.value(args, "--method") == "lora" {
                XCTAssertEqual(
                    json?["trainable_params"] as? Int, 147_456,
                    "\(c): PEFT's rank-4 c_attn on the gpt2 shape, as the README says")
            }
        case "launch/bench-peer":
            var args = Array(w.dropFirst())
            // The gpt2 shape's runs take minutes a side: the tiny shape through the same script.
            for (k, v) in [("--model", "tiny"), ("--steps", "1"), ("--warmup", "0"), ("--out", dir + "/bench-peer")] {
                Self.set(&args, k, v)
            }
            how = "on the tiny shape (gpt2's runs take minutes a side), 1 step"
            result = try Launcher.run(
                [Launcher.root.appendingPathComponent(w[0]).path] + args, timeout: timeout, cwd: dir)
            XCTAssertEqual(result.status, 0, "\(c):\n\(result.output.suffix(3000))")
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/bench-peer/peer.csv"), "\(c): no peer.csv")
        default:
            XCTFail(
                "\(c): neither run by this test nor on its notRun list (with the reason it cannot run): cover it here")
            return .notRun("not covered")
        }
        XCTAssertFalse(result.timedOut, "\(c): timed out")
        print("\(c) — \(how) (\((result.seconds * 10).rounded() / 10) s, exit \(result.status))")
        return .ran(how)
    }

    func testEveryReadmeCommandRunsAsWritten() throws {
        let readme = try String(contentsOf: Launcher.root.appendingPathComponent("README.md"), encoding: .utf8)
        let commands = Self.commands(in: readme)
        XCTAssertGreaterThan(commands.count, 10, "the README's ```sh blocks hold the commands")
        for key in Self.notRun.keys {
            XCTAssertTrue(commands.contains { $0.text == key }, "notRun lists \(key), which the README no longer has")
        }
        let dir = makeTempDir("readme-commands")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.makeFixtures(dir)
        var ran = 0
        var skipped: [String] = []
        var firstMPI = true
        for c in commands {
            let isMPI = c.words.first == "mpirun"
            switch try run(c, in: dir, realMPI: isMPI && firstMPI) {
            case .ran: ran += 1
            case .notRun(let why): skipped.append("\(c): \(why)")
            }
            if isMPI { firstMPI = false }
        }
        print(
            "README commands: \(commands.count) found, \(ran) run, \(skipped.count) not run:\n"
                + skipped.joined(separator: "\n"))
        XCTAssertEqual(ran + skipped.count, commands.count)
        XCTAssertEqual(skipped.count, Self.notRun.count)
    }
}
