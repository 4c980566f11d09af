import Foundation
import XCTest

@testable import LoRADist

/// The pieces of Model/Family/ as types of their own: each family's table builds its norm, MLP
/// activation, positions and weight orientation; each norm's and activation's backward is the
/// gradient of its own forward, in the layout the model gives it and in each way its parameters
/// train (central differences of the float32 forward, step 1e-2: KernelTests checks the kernels
/// themselves against float64); the positions add a table's rows or turn q and k, and the rotary
/// backward is the adjoint of its forward; and no source outside the tables, the file readers and
/// the config tells the families apart.
final class FamilyTests: XCTestCase {
    // MARK: helpers

    static func random(_ n: Int, _ rng: inout RNG, scale: Float = 1, shift: Float = 0) -> [Float] {
        KernelTests.random(n, &rng, scale: scale, shift: shift)
    }

    static func arena(_ v: [Float]) -> FloatArena {
        let a = FloatArena(count: v.count)
        a.base.update(from: v, count: v.count)
        return a
    }

    static func values(_ a: FloatArena) -> [Float] { Array(a.buffer) }

    /// Σ a ⊙ b in float64.
    static func pairing(_ a: [Float], _ b: [Float]) -> Double {
        zip(a, b).reduce(0) { $0 + Double($1.0) * Double($1.1) }
    }

    /// Central differences of `loss` (of float32 inputs) at x, step 1e-2.
    static func centralDifferences(_ x: [Float], _ loss: ([Float]) -> Double) -> [Double] {
        KernelTests.finiteDifferences(x.map(Double.init), h: 1e-2) { loss($0.map(Float.init)) }
    }

    /// |got − want| ≤ 2e-3 + 2e-2·|want| for every element (the step's truncation and float32's
    /// rounding are far below); a wrongly wired gradient is off by its own size.
    func assertGradient(
        _ got: [Float], _ want: [Double], _ label: String,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertEqual(got.count, want.count, label, file: file, line: line)
        for (i, (g, w)) in zip(got, want).enumerated() where Swift.abs(Double(g) - w) > 2e-3 + 2e-2 * Swift.abs(w) {
            XCTFail("\(label)[\(i)]: \(g), differences give \(w)", file: file, line: line)
            return
        }
        XCTAssertGreaterThan(
            want.map(Swift.abs).max() ?? 0, 1e-2, "\(label): a gradient worth comparing",
            file: file, line: line)
    }

    static func minus(_ a: [Float], _ b: [Float]) -> [Float] { zip(a, b).map { $0 - $1 } }

    // MARK: the tables

    func testEachFamilysTableBuildsItsOwnPieces() throws {
        let gpt2 = try TPLayout(config: GPTConfig.named("tiny")!, degree: 2, rank: 1)
        let gBase = BaseWeights(shape: BaseLayout(layout: gpt2))
        let g = FamilyParts(layout: gpt2, base: gBase)
        let ln = try XCTUnwrap(g.norm as? LayerNorm, "GPT-2's norm")
        XCTAssertEqual(ln.d, 128)
        XCTAssertEqual(ln.eps, gpt2.config.lnEps)
        XCTAssertTrue(g.activation is GELU, "GPT-2's activation")
        let table = try XCTUnwrap(g.positions as? LearnedPositions, "GPT-2's positions").table
        XCTAssertEqual(table, UnsafePointer(gBase.ptr(gBase.shape.wpe)), "wpe in the base")
        XCTAssertEqual(GPT2Family.orientation, .inOut)
        XCTAssertEqual(gpt2.localMLPIn, gpt2.localFFN, "c_fc's columns")

        var c = GPTConfig.named("llama-tiny")!
        c.lnEps = 1e-6
        let llama = try TPLayout(config: c, degree: 2, rank: 1)
        let l = FamilyParts(layout: llama, base: BaseWeights(shape: BaseLayout(layout: llama)))
        let rms = try XCTUnwrap(l.norm as? RMSNorm, "the Llama family's norm")
        XCTAssertEqual(rms.d, 128)
        XCTAssertEqual(rms.eps, 1e-6)
        XCTAssertTrue(l.activation is SwiGLU, "the Llama family's activation")
        let rot = try XCTUnwrap(l.positions as? RotaryPositions, "the Llama family's positions")
        XCTAssertEqual([rot.heads, rot.kvHeads, rot.kOffset, rot.headDim], [2, 1, 64, 32])
        XCTAssertEqual(rot.table.positions, c.nPositions)
        XCTAssertEqual(LlamaFamily.orientation, .outIn)
        XCTAssertEqual(llama.localMLPIn, 2 * llama.localFFN, "gate's and up's columns")

        var odd = c
        odd.ffn = 18
        XCTAssertEqual(TPLayout.refusal(odd, degree: 4), "--tp 4 does not divide the MLP width (intermediate_size) 18")
    }

    func testWeightOrientationReadsConv1DAsStoredAndNNLinearTransposed() {
        let a = FloatArena(count: 15)
        let conv = WeightOrientation.inOut.stored(inputs: 3, outputs: 5)
        let linear = WeightOrientation.outIn.stored(inputs: 3, outputs: 5)
        XCTAssertEqual([conv.rows, conv.cols, linear.rows, linear.cols], [3, 5, 5, 3])
        let w = WeightOrientation.inOut.op(Mat(a.base, 3, 5))
        let wt = WeightOrientation.outIn.op(Mat(a.base, 5, 3))
        XCTAssertFalse(w.transposed)
        XCTAssertTrue(wt.transposed)
        XCTAssertEqual([w.opRows, w.opCols, wt.opRows, wt.opCols], [3, 5, 3, 5], "op(W) is [in, out] either way")
    }

    // MARK: norms

    /// A norm's forward with parameters γ and β (nil: none) on x [n, d]: y, mean, rstd.
    static func normForward(_ norm: any Norm, _ x: [Float], _ gamma: [Float], _ beta: [Float]?, n: Int, d: Int)
        -> (y: FloatArena, mean: FloatArena, rstd: FloatArena)
    {
        let y = FloatArena(count: n * d)
        let mean = FloatArena(count: n)
        let rstd = FloatArena(count: n)
        let xa = arena(x)
        let ga = arena(gamma)
        let ba = beta.map(arena)
        norm.forward(
            y.base, mean: mean.base, rstd: rstd.base, xa.base, NormParameters(gamma: ga.base, beta: ba?.base),
            n: n)
        return (y, mean, rstd)
    }

    /// The norm's backward from non-zero starting gradients (it accumulates), γ's and β's
    /// gradients given where `gamma`, `beta`: what dx, dγ and dβ hold after.
    static func normBackward(
        _ norm: any Norm, _ x: [Float], _ gamma: [Float], _ beta: [Float]?, dy: [Float],
        start: (dx: [Float], dg: [Float], db: [Float]), trains: (gamma: Bool, beta: Bool),
        n: Int, d: Int
    ) -> (dx: [Float], dg: [Float], db: [Float]) {
        let f = normForward(norm, x, gamma, beta, n: n, d: d)
        let xa = arena(x)
        let ga = arena(gamma)
        let ba = beta.map(arena)
        let dya = arena(dy)
        let dx = arena(start.dx)
        let dg = arena(start.dg)
        let db = arena(start.db)
        norm.backward(
            dx.base, dy: dya.base, x: xa.base, mean: f.mean.base, rstd: f.rstd.base,
            NormParameters(gamma: ga.base, beta: ba?.base),
            NormGradients(gamma: trains.gamma ? dg.base : nil, beta: trains.beta ? db.base : nil), n: n)
        return (values(dx), values(dg), values(db))
    }

    func testLayerNormsBackwardIsItsForwardsGradientInFullFineTuningAndBitFit() {
        var rng = RNG(seed: 41)
        let n = 3
        let d = 13
        let norm = LayerNorm(d: d, eps: 1e-5)
        let x = Self.random(n * d, &rng, scale: 1.5, shift: 0.4)
        let gamma = Self.random(d, &rng, scale: 0.3, shift: 1)
        let beta = Self.random(d, &rng, scale: 0.2)
        let dy = Self.random(n * d, &rng)
        let start = (dx: Self.random(n * d, &rng), dg: Self.random(d, &rng), db: Self.random(d, &rng))
        func back(_ g: Bool, _ b: Bool) -> (dx: [Float], dg: [Float], db: [Float]) {
            Self.normBackward(norm, x, gamma, beta, dy: dy, start: start, trains: (g, b), n: n, d: d)
        }
        let full = back(true, true)
        let bitfit = back(false, true)
        let frozen = back(false, false)
        func loss(_ x: [Float], _ g: [Float], _ b: [Float]) -> Double {
            Self.pairing(Self.values(Self.normForward(norm, x, g, b, n: n, d: d).y), dy)
        }
        assertGradient(Self.minus(full.dx, start.dx), Self.centralDifferences(x) { loss($0, gamma, beta) }, "dx")
        assertGradient(Self.minus(full.dg, start.dg), Self.centralDifferences(gamma) { loss(x, $0, beta) }, "dγ")
        assertGradient(Self.minus(full.db, start.db), Self.centralDifferences(beta) { loss(x, gamma, $0) }, "dβ")
        // BitFit's β alone is dy summed over rows in the same order as full fine-tuning's: the same bits.
        XCTAssertEqual(bitfit.db, full.db, "BitFit's dβ")
        XCTAssertEqual(bitfit.dx, full.dx, "the input gradient does not depend on what trains")
        XCTAssertEqual(frozen.dx, full.dx, "the input gradient does not depend on what trains")
    }

    func testRMSNormsBackwardIsItsForwardsGradientAndItHasNoBeta() {
        var rng = RNG(seed: 42)
        let n = 3
        let d = 13
        let norm = RMSNorm(d: d, eps: 1e-6)
        let x = Self.random(n * d, &rng, scale: 1.5, shift: 0.4)
        let gamma = Self.random(d, &rng, scale: 0.3, shift: 1)
        let dy = Self.random(n * d, &rng)
        let start = (dx: Self.random(n * d, &rng), dg: Self.random(d, &rng), db: Self.random(d, &rng))
        func back(_ g: Bool, _ b: Bool) -> (dx: [Float], dg: [Float], db: [Float]) {
            Self.normBackward(norm, x, gamma, nil, dy: dy, start: start, trains: (g, b), n: n, d: d)
        }
        let full = back(true, false)
        let frozen = back(false, false)
        let betaGiven = back(true, true)
        func loss(_ x: [Float], _ g: [Float]) -> Double {
            Self.pairing(Self.values(Self.normForward(norm, x, g, nil, n: n, d: d).y), dy)
        }
        assertGradient(Self.minus(full.dx, start.dx), Self.centralDifferences(x) { loss($0, gamma) }, "dx")
        assertGradient(Self.minus(full.dg, start.dg), Self.centralDifferences(gamma) { loss(x, $0) }, "dγ")
        XCTAssertEqual(frozen.dx, full.dx, "the input gradient does not depend on what trains")
        XCTAssertEqual(betaGiven.db, start.db, "RMSNorm writes no β gradient")
        XCTAssertEqual(betaGiven.dg, full.dg)
    }

    // MARK: MLP activations

    func testEachActivationsBackwardIsItsForwardsGradientOverItsInputLayout() {
        var rng = RNG(seed: 43)
        let rows = 3
        let width = 11
        for act in [GELU(), SwiGLU()] as [any MLPActivation] {
            let name = "\(type(of: act))"
            let inW = act.inputsPerHidden * width
            let pre = Self.random(rows * inW, &rng, scale: 2)
            let dh = Self.random(rows * width, &rng)
            func forward(_ p: [Float]) -> [Float] {
                let h = FloatArena(count: rows * width)
                let pa = Self.arena(p)
                act.forward(h.base, pa.base, rows: rows, width: width)
                return Self.values(h)
            }
            let dpre = Self.arena([Float](repeating: 7, count: rows * inW))
            let pa = Self.arena(pre)
            let dha = Self.arena(dh)
            act.backward(dpre.base, dh: dha.base, pre: pa.base, rows: rows, width: width)
            assertGradient(Self.values(dpre), Self.centralDifferences(pre) { Self.pairing(forward($0), dh) }, name)
            if act.backwardInPlace {
                let shared = Self.arena(dh)
                act.backward(shared.base, dh: shared.base, pre: pa.base, rows: rows, width: width)
                XCTAssertEqual(Self.values(shared), Self.values(dpre), "\(name) in place")
            }
        }
    }

    // MARK: positions

    func testLearnedPositionsAddTheirTableRowsAndLeaveAttentionAlone() {
        var rng = RNG(seed: 44)
        let d = 12
        let batch = 2
        let len = 3
        let pos0 = 2
        let table = Self.arena(Self.random(6 * d, &rng))
        let x0 = Self.random(batch * len * d, &rng)
        let positions = LearnedPositions(table: table.base, d: d)
        let x = Self.arena(x0)
        positions.embed(x.base, batch: batch, len: len, pos0: pos0)
        let want = (0..<(batch * len * d)).map { i in x0[i] + table.base[(pos0 + (i / d) % len) * d + i % d] }
        XCTAssertEqual(Self.values(x), want, "row t of each sequence gets position pos0 + t")
        let q = Self.random(4 * 9, &rng)
        let qkv = Self.arena(q)
        positions.apply(qkv.base, ld: 9, rows: 4, seq: 2, pos0: 1)
        positions.backward(qkv.base, ld: 9, rows: 4, seq: 2)
        XCTAssertEqual(Self.values(qkv), q, "attention sees no positions")
    }

    func testRotaryPositionsTurnQAndKAloneAndTheirBackwardIsTheAdjoint() throws {
        var rng = RNG(seed: 45)
        // Rank 1 of 2: query heads 2 and 3 and the key/value head they read, q|k|v 16 + 8 + 8 wide.
        let c = GPTConfig.llama(nLayer: 1, nEmbd: 32, nHead: 4, nKVHead: 2, ffn: 16, vocabSize: 16, nPositions: 16)
        let layout = try TPLayout(config: c, degree: 2, rank: 1)
        let positions = RotaryPositions(layout)
        let qw = layout.localQKV
        let ld = qw + 2
        let seq = 5
        let rows = 2 * seq
        XCTAssertEqual([qw, positions.kOffset], [32, 16])
        let x = Self.random(rows * ld, &rng)
        let turned = Self.arena(x)
        positions.apply(turned.base, ld: ld, rows: rows, seq: seq, pos0: 0)
        let y = Self.values(turned)
        for r in 0..<rows {
            let row = r * ld
            let moved = r % seq > 0
            XCTAssertEqual(y[(row + 24)..<(row + ld)], x[(row + 24)..<(row + ld)], "v and padding of row \(r)")
            XCTAssertEqual(y[row..<(row + 24)] != x[row..<(row + 24)], moved, "q, k of row \(r) turn but at position 0")
        }
        // ⟨g, apply(x)⟩ = ⟨backward(g), x⟩ over the whole rows.
        let g = Self.random(rows * ld, &rng)
        let back = Self.arena(g)
        positions.backward(back.base, ld: ld, rows: rows, seq: seq)
        XCTAssertEqual(Self.pairing(y, g), Self.pairing(Self.values(back), x), accuracy: 1e-4)
        // A decoding step turns one row at its position as the training pass turned it.
        for r in [1, 4, seq + 2] {
            let one = Self.arena(Array(x[(r * ld)..<((r + 1) * ld)]))
            positions.apply(one.base, ld: ld, rows: 1, seq: 1, pos0: r % seq)
            XCTAssertEqual(Self.values(one), Array(y[(r * ld)..<((r + 1) * ld)]), "row \(r) at position \(r % seq)")
        }
    }

    // MARK: where the families are told apart

    /// Outside the tables (Model/Family/), the file readers (IO/) and the config
    /// (Config/GPTConfig.swift), the sources tell GPT-2 from the Llama family only where listed
    /// here, at most as often.
    func testOnlyTheFamilyTablesTheReadersAndTheConfigTellTheFamiliesApart() throws {
        let sources = Launcher.root.appendingPathComponent("Sources")
        let pattern = #"\bfamily\s*[=!]=|[=!]=\s*\.(gpt2|llama)\b|switch[^{]*\bfamily\b"#
        let check = try NSRegularExpression(pattern: pattern)
        let allowed = ["LoRADist/Model/Family/", "LoRADist/IO/", "LoRADist/Config/GPTConfig.swift"]
        let kept = [
            "LoRADist/Adapt/LoRAConfig.swift": 3,  // each family's LoRA targets and their PEFT module names
            "LoRADist/Analyze/AdapterMatrices.swift": 1,  // a target's base weight read from a checkpoint
            "LoRADist/Train/FuzzTargets.swift": 1  // the PEFT reader's fuzz target, a rank pattern per family
        ]
        let files = FileManager.default.enumerator(atPath: sources.path)!.compactMap { $0 as? String }
            .filter { $0.hasSuffix(".swift") }
        XCTAssertGreaterThan(files.count, 50)
        var offenders: [String] = []
        var inAllowed = 0
        for f in files {
            let text = try String(contentsOfFile: sources.appendingPathComponent(f).path, encoding: .utf8)
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false).enumerated().filter { _, line in
                let code = line.components(separatedBy: "//")[0]
                return check.firstMatch(in: code, range: NSRange(code.startIndex..., in: code)) != nil
            }
            if allowed.contains(where: { f.hasPrefix($0) }) {
                inAllowed += lines.count
            } else if lines.count > kept[f, default: 0] {
                offenders += lines.map { "\(f):\($0.offset + 1): \($0.element)" }
            }
        }
        XCTAssertEqual(offenders, [], offenders.joined(separator: "\n"))
        XCTAssertGreaterThan(inAllowed, 5, "the pattern finds the config's and the readers' checks")
    }
}
