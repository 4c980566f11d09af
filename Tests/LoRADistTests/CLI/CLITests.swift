import XCTest

@testable import LoRADist

/// The command line itself: one error prefix for the argument parser's errors and the commands',
/// --version, out-of-range values refused while parsing with the option named, GPT-2's module names
/// as LoRA targets, the default --seq shortened to a small context, --steps winning over the E2E
/// recipe's epochs, and a bare `bench inference` that measures collectives in seconds.
final class CLITests: XCTestCase {
    func tmp() -> String { makeTempDir("cli") }

    static let quick = BadInputTests.quick

    /// Lines of `output` that look like an error line of any prefix.
    func errorLines(_ output: String) -> [Substring] {
        output.split(separator: "\n").filter {
            $0.hasPrefix("Error:") || $0.hasPrefix("error:") || $0.contains(": error:")
        }
    }

    func testVersion() throws {
        let r = try Launcher.lora(["--version"], timeout: 30)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertEqual(r.output, "lora-dist \(LoRADistVersion.current)\n")
        XCTAssertEqual(LoRADistVersion.current, "0.8.0")
    }

    func testHelpIsUnchanged() throws {
        let r = try Launcher.lora(["train", "--help"], timeout: 30)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("USAGE: lora-dist train"), r.output)
        XCTAssertTrue(errorLines(r.output).isEmpty, r.output)
    }

    /// `train` starts from the library's defaults (`TrainOptions`, `RunOptions.Defaults`), written
    /// once: every default its help shows is the library's value, and README.md says the same.
    func testTrainDefaultsAreTheLibrarys() throws {
        let r = try Launcher.lora(["train", "--help"], timeout: 30)
        XCTAssertEqual(r.status, 0, r.output)
        let t = TrainOptions()
        let run = RunOptions.Defaults.self
        let expected: [(String, String)] = [
            ("--steps", "\(t.steps)"), ("--seq", "\(t.seq)"), ("--batch", "\(t.globalBatch)"), ("--lr", "\(t.lr)"),
            ("--warmup", "\(t.warmup)"), ("--decay", t.decay.rawValue), ("--weight-decay", "\(t.weightDecay)"),
            ("--clip", "\(t.clip)"), ("--label-smoothing", "\(t.labelSmoothing)"), ("--seed", "\(t.seed)"),
            ("--precision", t.precision.rawValue), ("--recompute", t.recompute.rawValue),
            ("--method", t.method.rawValue),
            ("--lora-rank", "\(t.lora.rank)"), ("--lora-alpha", "\(t.lora.alpha)"),
            ("--lora-dropout", "\(t.lora.dropout)"), ("--lora-init", t.lora.initA.rawValue),
            ("--eval-examples", "\(run.evalExamples)"), ("--log-every", "\(run.logEvery)"),
            ("--valid-limit", run.validLimit.map(String.init) ?? "all"), ("--save-every", "\(run.saveEvery)"),
            ("--keep", "\(run.keep)")
        ]
        let shown = Self.helpDefaults(r.output)
        for (option, value) in expected { XCTAssertEqual(shown[option], value, "\(option) in train --help") }
        // Without --lora-targets the command adapts every projection, as the library's LoRA does.
        XCTAssertEqual(t.lora, TrainOptions.defaultLoRA(for: .gpt2))
        XCTAssertEqual(t.lora.targets, LoRATarget.available(in: .gpt2))
        let readme = try String(contentsOf: Launcher.root.appendingPathComponent("README.md"), encoding: .utf8)
            .split(whereSeparator: \.isWhitespace).joined(separator: " ")
        for phrase in [
            "`--valid-limit` held-out examples (default \(run.validLimit ?? 0);",
            "`--eval-examples` test examples (default \(run.evalExamples);",
            "`--seq` defaults to \(t.seq) tokens"
        ] {
            XCTAssertTrue(readme.contains(phrase), "README.md: \(phrase)")
        }
    }

    /// Each option of a help text and the default it shows: "(default: X)", "(values: ...;
    /// default: X)", or "(default: X, or ...)" in the option's own words.
    static func helpDefaults(_ help: String) -> [String: String] {
        var entries: [String: String] = [:]
        var current: String?
        for line in help.split(separator: "\n", omittingEmptySubsequences: false) {
            let text = line.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("  --") {
                current = String(text.prefix { $0 != " " })
                entries[current!] = text
            } else if line.hasPrefix("   "), let c = current {
                entries[c]! += " " + text
            } else {
                current = nil
            }
        }
        return entries.compactMapValues { e in
            e.range(of: "default: ", options: .backwards).map { r in
                String(e[r.upperBound...].prefix { !"),;".contains($0) })
            }
        }
    }

    /// The argument parser's errors (a validation, an unknown option, a missing one) start like the
    /// ranks' errors do, keep its usage lines and exit 64.
    func testParserErrorsHaveTheProjectPrefix() throws {
        for (args, message) in [
            (["train", "--steps", "0"], "--steps must be at least 1 (got 0)"),
            (["train", "--no-such-option"], "Unknown option '--no-such-option'"),
            (["generate"], "Missing expected argument '--prompt <prompt>'")
        ] {
            let r = try Launcher.lora(args, timeout: 30)
            XCTAssertEqual(r.status, 64, "\(args): \(r.output)")
            XCTAssertTrue(r.output.hasPrefix("lora-dist: error: \(message)\n"), "\(args): \(r.output)")
            XCTAssertTrue(r.output.contains("Usage: lora-dist"), r.output)
            XCTAssertFalse(r.output.contains("Error:"), r.output)
        }
    }

    /// An error a command throws outside its ranks (evaluate reads its examples first) and one a
    /// rank throws: the same prefix, exit 1.
    func testRuntimeErrorsHaveTheProjectPrefix() throws {
        let r = try Launcher.lora(["evaluate", "--data", "/nonexistent/data"], timeout: 30)
        XCTAssertEqual(r.status, 1, r.output)
        XCTAssertEqual(r.output, "lora-dist: error: data file /nonexistent/data/test.jsonl does not exist\n")
        let t = try Launcher.lora(["train", "--data", "/nonexistent/data"] + Self.quick, timeout: 60)
        XCTAssertEqual(t.status, 1, t.output)
        XCTAssertEqual(errorLines(t.output).map { $0.hasPrefix("lora-dist: error: ") }, [true], t.output)
    }

    /// Each out-of-range value is refused before any work, naming the option and the value.
    func testOutOfRangeValuesAreRefusedAtParseTime() throws {
        let cases: [([String], String)] = [
            (["generate", "--prompt", "x", "--beams", "0"], "--beams must be at least 1 (got 0)"),
            (["generate", "--prompt", "x", "--max-tokens", "0"], "--max-tokens must be at least 1 (got 0)"),
            (["generate", "--prompt", "x", "--max-tokens=-4"], "--max-tokens must be at least 1 (got -4)"),
            (
                ["generate", "--prompt", "x", "--collective-timeout=-1"],
                "--collective-timeout must be a number, 0 or more (got -1.0)"
            ),
            (["evaluate", "--max-tokens", "0"], "--max-tokens must be at least 1 (got 0)"),
            (["evaluate", "--beams", "0"], "--beams must be at least 1 (got 0)"),
            (["train", "--lora-rank", "0"], "--lora-rank must be at least 1 (got 0)"),
            (["train", "--lora-alpha", "0"], "--lora-alpha must be a positive number (got 0.0)"),
            (["train", "--lora-dropout", "1"], "--lora-dropout must be in [0, 1) (got 1.0)"),
            (["train", "--lora-dropout=-0.1"], "--lora-dropout must be in [0, 1) (got -0.1)"),
            (["train", "--batch", "0"], "--batch must be at least 1 (got 0)"),
            (["train", "--micro-batch", "0"], "--micro-batch must be at least 1 (got 0)"),
            (["train", "--steps=-3"], "--steps must be at least 1 (got -3)"),
            (["train", "--seq", "0"], "--seq must be at least 2 (got 0)"),
            (["train", "--warmup=-1"], "--warmup must not be negative (got -1)"),
            (["train", "--clip=-1"], "--clip must be a number, 0 or more (got -1.0)"),
            (["train", "--label-smoothing", "1"], "--label-smoothing must be in [0, 1) (got 1.0)"),
            (["train", "--eval-examples=-1"], "--eval-examples must not be negative (got -1)"),
            (["train", "--valid-limit=-1"], "The value '-1' is invalid for '--valid-limit <valid-limit>'"),
            (["train", "--log-every", "0"], "--log-every must be at least 1 (got 0)"),
            (["train", "--bottleneck", "0"], "--bottleneck must be at least 1 (got 0)"),
            (["train", "--local-ranks", "0"], "--local-ranks must be at least 1 (got 0)"),
            (["train", "--model", "tiny", "--layers", "0"], "--layers must be at least 1 (got 0)"),
            (["train", "--steps", "3", "--epochs", "1"], "--steps and --epochs cannot be combined"),
            (["bench", "train", "--batch", "0"], "--batch must be at least 1 (got 0)"),
            (["bench", "inference", "--reps", "0"], "--reps must be at least 1 (got 0)"),
            (["bench", "inference", "--bottleneck", "0"], "--bottleneck must be at least 1 (got 0)"),
            (["bench", "gemm", "--tiny", "0"], "--tiny must be at least 1 (got 0)"),
            (["bench", "predict", "--measured", "x.csv", "--cores", "0"], "--cores must be at least 1 (got 0)"),
            (["sweep", "targets", "--out", "x", "--budget-rank", "0"], "--budget-rank must be at least 1 (got 0)"),
            (["data", "--train", "0"], "--train must be at least 1 (got 0)"),
            (["serve", "--adapter-memory", "0"], "--adapter-memory must be at least one byte, in MiB (got 0.0)")
        ]
        for (args, message) in cases {
            let r = try Launcher.lora(args, timeout: 30)
            XCTAssertEqual(r.status, 64, "\(args) must be refused while parsing: \(r.output)")
            XCTAssertTrue(
                r.output.hasPrefix("lora-dist: error: \(message)"), "\(args): expected \"\(message)\" in:\n\(r.output)")
        }
    }

    /// The LoRA targets of a run on the built-in (GPT-2) base given `targets`, and its trainable count.
    func trainedTargets(_ targets: String) throws -> (targets: [LoRATarget], trainable: Int, config: GPTConfig) {
        let out = tmp()
        let r = try Launcher.lora(
            ["train", "--lora-targets", targets, "--lora-rank", "2", "--out", out] + Self.quick, timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
        let h = try AdapterFile.header(out + "/adapter.safetensors")
        // "...; 12288 trainable of 850816 parameters; ..."
        let n =
            r.output.components(separatedBy: " trainable of ").first?.split(separator: " ").last.flatMap { Int($0) }
            ?? -1
        return (h.lora.targets, n, h.base.config)
    }

    /// PEFT's target_modules names for GPT-2: c_attn is q, k and v; c_proj both attn.c_proj and
    /// mlp.c_proj (o and mlp_out), as PEFT's suffix match takes both; c_fc mlp_in; a dotted suffix one.
    func testGPT2ModuleNamesSelectTheirTargets() throws {
        let r = 2
        let a = try trainedTargets("c_attn")
        let c = a.config
        let d = c.nEmbd
        let L = c.nLayer
        XCTAssertEqual(a.targets, [.q, .k, .v])
        XCTAssertEqual(a.trainable, L * 3 * r * (d + d))
        let p = try trainedTargets("c_proj")
        XCTAssertEqual(p.targets, [.o, .mlpOut])
        XCTAssertEqual(p.trainable, L * (r * (d + d) + r * (4 * d + d)))
        let f = try trainedTargets("c_fc,attn.c_proj,q")
        XCTAssertEqual(f.targets, [.q, .o, .mlpIn])
        XCTAssertEqual(f.trainable, L * (r * (d + 4 * d) + 2 * r * (d + d)))
        let bad = try Launcher.lora(["train", "--lora-targets", "c_attn,gate_proj"] + Self.quick, timeout: 30)
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(
            bad.output.contains(
                """
                lora-dist: error: --lora-targets: unknown target gate_proj; it has q, k, v, o, mlp_in, mlp_out (PEFT's \
                names: c_attn, c_proj, c_fc)
                """
            ), bad.output)
    }

    /// Without --seq on completion data the longest training example sets the sequence length, at
    /// most the model's context: on a model whose context is 128 the built-in task's longer
    /// examples are dropped and counted (no --seq note: that is --text's default); an explicit
    /// --seq beyond the context is still refused.
    func testDefaultSeqIsShortenedToASmallContext() throws {
        let out = tmp()
        let r = try Launcher.lora(
            ["train", "--model", "tiny", "--context", "128", "--out", out] + Self.quick, timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("training examples longer than the model's context of 128 tokens"), r.output)
        XCTAssertFalse(r.output.contains("note: --seq"), r.output)
        XCTAssertTrue(r.output.contains("2 steps × 2 sequences × 128 tokens"), r.output)
        let s =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/summary.json")))
            as! [String: Any]
        XCTAssertEqual((s["seq"] as? NSNumber)?.intValue, 128)
        XCTAssertGreaterThan((s["dropped_too_long"] as? NSNumber)?.intValue ?? 0, 0)
        let e = try Launcher.lora(
            ["train", "--model", "tiny", "--context", "128", "--seq", "168"] + Self.quick, timeout: 120)
        XCTAssertNotEqual(e.status, 0, e.output)
        XCTAssertTrue(e.output.contains("lora-dist: error: --seq 168 exceeds the model's context 128"), e.output)
        // On the built-in base (context 192) the built-in task's longest example, 161 tokens, sets it.
        let b = try Launcher.lora(["train", "--out", tmp()] + Self.quick, timeout: 120)
        XCTAssertTrue(b.output.contains("2 steps × 2 sequences × 161 tokens"), b.output)
        XCTAssertFalse(b.output.contains("note: --seq") || b.output.contains("dropped"), b.output)
    }

    /// --paper-e2e-recipe counts 5 epochs unless --steps says otherwise: on 3 examples its epochs
    /// are 2 steps of 8, and --steps 3 runs 3.
    func testStepsWinOverTheRecipesEpochs() throws {
        let d = tmp()
        let lines =
            (0..<3).map { "{\"context\": \"name=\($0)\\n\", \"completion\": \"ok \($0)\"}" }.joined(separator: "\n")
            + "\n"
        for f in ["train.jsonl", "valid.jsonl"] {
            FileManager.default.createFile(atPath: d + "/" + f, contents: Data(lines.utf8))
        }
        let base = [
            "train", "--paper-e2e-recipe", "--data", d, "--eval-examples", "0", "--valid-limit", "2", "--log-every", "1"
        ]
        let out = tmp()
        let r = try Launcher.lora(base + ["--steps", "3", "--out", out], timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("3 steps × 8 sequences"), r.output)
        XCTAssertEqual(metricsLines(out), 3)
        let epochs = tmp()
        let e = try Launcher.lora(base + ["--out", epochs], timeout: 120)
        XCTAssertEqual(e.status, 0, e.output)
        XCTAssertTrue(e.output.contains("2 steps × 8 sequences"), e.output)
        XCTAssertEqual(metricsLines(epochs), 2)
    }

    /// A bare `bench inference`: several ranks (2 threads), so the collectives show, on a shape that
    /// takes seconds, and it says what it ran.
    func testBareBenchInferenceMeasuresCollectives() throws {
        let r = try Launcher.lora(["bench", "inference"], timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(
            r.output.contains(
                """
                tiny (4 layers, d 128), TP = 2 over 2 ranks as threads of this process (the default without mpirun or \
                --local-ranks)
                """
            ), r.output)
        let rows = r.output.split(separator: "\n").filter {
            $0.hasPrefix("base ") || $0.hasPrefix("adapter-h/sharded ")
        }
        XCTAssertEqual(rows.count, 4, r.output)
        for row in rows {
            let cells = row.split(separator: " ", omittingEmptySubsequences: true)
            // ... AllReduce, Broadcast, AllGather, bytes/pass: AllReduce is 4th from the end.
            let allReduce = Int(cells[cells.count - 4]) ?? 0
            XCTAssertGreaterThan(allReduce, 0, "collectives must show: \(row)")
        }
    }
}
