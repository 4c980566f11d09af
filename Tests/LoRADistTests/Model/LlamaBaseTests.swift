import Foundation
import XCTest

@testable import LoRADist

/// The Llama family's frozen base, laid out, initialised and loaded per tensor-parallel rank, against
/// the checkpoints reference/make_llama_fixture.py writes with transformers (run once per class into
/// a temporary directory): Llama with 2 key/value heads and an untied head, the same sharded with an
/// index, Qwen2 with 1 key/value head, q/k/v biases and a tied head, and that one saved in bf16.
/// At TP 1, 2 and 4 every rank's shard is the slice of each whole tensor that its heads give (its
/// query heads' rows of q, the rows of the key/value heads they read, its rows of gate and up, its
/// columns of o_proj and down_proj, its vocabulary rows), q|k|v and gate|up back to back in that
/// order in both arenas; the shards reassemble the whole tensors, a key/value head shared by
/// several ranks is identical on them; the bf16 checkpoint loads as the fp32 one rounded; the
/// shape check names the config.json key at fault; the random initialisation has transformers'
/// statistics; GPT-2's layout is what it was. Needs Python with torch, transformers, peft,
/// safetensors and tokenizers; without them these tests fail, never skip.
final class LlamaBaseTests: XCTestCase {
    static let variants = ["llama", "llama-rope3", "qwen2", "qwen2-bf16"]

    static let fixture: Result<String, Error> = Result {
        let dir = makeTempDir("llama-base")
        _ = try PythonReference.check("make_llama_fixture.py", [dir])
        return dir
    }

    override class func tearDown() {
        if case .success(let dir) = fixture { try? FileManager.default.removeItem(atPath: dir) }
        super.tearDown()
    }

    func base(_ variant: String) throws -> String { try Self.fixture.get() + "/" + variant + "/base" }

    /// A temporary directory removed after the test.
    func scratch(_ prefix: String) -> String {
        let d = makeTempDir(prefix)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    /// Every tensor of a checkpoint directory read from its safetensors files one by one (the
    /// index not consulted), as fp32.
    static func wholeTensors(_ dir: String) throws -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for f in try FileManager.default.contentsOfDirectory(atPath: dir) where f.hasSuffix(".safetensors") {
            let st = try SafeTensorsFile(path: dir + "/" + f)
            for n in st.names { out[n] = try st.floats(n) }
        }
        return out
    }

    // MARK: The slices each rank should hold, from the heads

    /// Rows `rows` of a row-major matrix `width` wide; rows at or past `valid` are zeros (padding).
    static func rows(_ x: [Float], _ width: Int, _ rows: [Int], valid: Int = .max) -> [Float] {
        rows.flatMap { r in r < valid ? Array(x[(r * width)..<((r + 1) * width)]) : [Float](repeating: 0, count: width)
        }
    }

    /// Columns `cols` of every row of a row-major matrix `width` wide.
    static func cols(_ x: [Float], _ width: Int, _ cols: Range<Int>) -> [Float] {
        (0..<(x.count / width)).flatMap { r in x[(r * width + cols.lowerBound)..<(r * width + cols.upperBound)] }
    }

    /// What rank `t` of `p` holds, derived from the heads alone: its query heads are the t-th of p
    /// equal runs; query head h reads key/value head h / (nh / nkv), and the rank holds the
    /// key/value heads its query heads read; MLP and vocabulary rows are the t-th of p equal runs.
    struct Expected {
        var embed: [Float], head: [Float]?, norm: [Float]
        var ln1: [[Float]] = [], ln2: [[Float]] = [], qkv: [[Float]] = [], qkvBias: [[Float]] = []
        var o: [[Float]] = [], gateUp: [[Float]] = [], down: [[Float]] = []
        var kvHeads: [Int]
    }

    static func expected(_ c: GPTConfig, _ w: [String: [Float]], degree p: Int, rank t: Int) -> Expected {
        let d = c.nEmbd
        let hd = c.nEmbd / c.nHead
        let hl = c.nHead / p
        let group = c.nHead / c.nKVHead
        let qHeads = Array((t * hl)..<((t + 1) * hl))
        let kvHeads = Array(Set(qHeads.map { $0 / group })).sorted()
        func headRows(_ hs: [Int]) -> [Int] { hs.flatMap { ($0 * hd)..<(($0 + 1) * hd) } }
        let qRows = headRows(qHeads)
        let kvRows = headRows(kvHeads)
        let fl = c.ffn / p
        let fRows = Array((t * fl)..<((t + 1) * fl))
        let vl = c.paddedVocab / p
        let vRows = Array((t * vl)..<((t + 1) * vl))
        var e = Expected(
            embed: rows(w["model.embed_tokens.weight"]!, d, vRows, valid: c.vocabSize),
            head: w["lm_head.weight"].map { rows($0, d, vRows, valid: c.vocabSize) },
            norm: w["model.norm.weight"]!, kvHeads: kvHeads)
        if c.tiedHead { e.head = nil }
        for l in 0..<c.nLayer {
            let a = "model.layers.\(l).self_attn."
            let m = "model.layers.\(l).mlp."
            e.ln1.append(w["model.layers.\(l).input_layernorm.weight"]!)
            e.ln2.append(w["model.layers.\(l).post_attention_layernorm.weight"]!)
            e.qkv.append(
                rows(w[a + "q_proj.weight"]!, d, qRows) + rows(w[a + "k_proj.weight"]!, d, kvRows)
                    + rows(w[a + "v_proj.weight"]!, d, kvRows))
            if c.qkvBias {
                e.qkvBias.append(
                    rows(w[a + "q_proj.bias"]!, 1, qRows) + rows(w[a + "k_proj.bias"]!, 1, kvRows)
                        + rows(w[a + "v_proj.bias"]!, 1, kvRows))
            }
            e.o.append(cols(w[a + "o_proj.weight"]!, d, (qHeads[0] * hd)..<((qHeads.last! + 1) * hd)))
            e.gateUp.append(rows(w[m + "gate_proj.weight"]!, d, fRows) + rows(w[m + "up_proj.weight"]!, d, fRows))
            e.down.append(cols(w[m + "down_proj.weight"]!, c.ffn, fRows[0]..<(fRows.last! + 1)))
        }
        return e
    }

    /// Reports the first element where `got` and `want` differ (or their lengths).
    func assertSame<T: Equatable>(
        _ got: [T], _ want: [T], _ what: @autoclosure () -> String, show: (T) -> String = { "\($0)" },
        file: StaticString = #filePath, line: UInt = #line
    ) {
        guard got.count == want.count else {
            return XCTFail("\(what()): \(got.count) values, want \(want.count)", file: file, line: line)
        }
        if let i = got.indices.first(where: { got[$0] != want[$0] }) {
            XCTFail("\(what()) [\(i)]: \(show(got[i])), want \(show(want[i]))", file: file, line: line)
        }
    }

    /// `assertSame` on the values' bits (so -0 is not +0 and NaN is itself).
    func assertSameBits(
        _ got: [Float], _ want: [Float], _ what: @autoclosure () -> String, file: StaticString = #filePath,
        line: UInt = #line
    ) {
        assertSame(
            got.map(\.bitPattern), want.map(\.bitPattern), what(), show: { "\(Float(bitPattern: $0))" }, file: file,
            line: line)
    }

    /// Checks one rank's loaded shard against `e`: the fp32 values, and under bf16 the bf16 values
    /// (rounded to nearest even), each region read as one run of the arena from its offset.
    func checkShard(_ w: BaseWeights, _ e: Expected, master: Bool, _ label: String) {
        let s = w.shape
        let c = w.config
        let bf16 = s.precision == .bf16
        func f32(_ off: Int, _ n: Int) -> [Float] { Array(UnsafeBufferPointer(start: w.ptr(off), count: n)) }
        func weight(_ o: WeightOffsets, _ want: [Float], _ what: String) {
            XCTAssertEqual(o.f32 >= 0, !bf16 || master, "\(label) \(what): fp32 copy")
            XCTAssertEqual(o.bf16 >= 0, bf16, "\(label) \(what): bf16 copy")
            if o.f32 >= 0 { assertSameBits(f32(o.f32, want.count), want, "\(label) \(what) fp32") }
            if o.bf16 >= 0 {
                let got = Array(UnsafeBufferPointer(start: w.halfPtr(o.bf16), count: want.count))
                assertSame(got, want.map { BF16.round($0) }, "\(label) \(what) bf16")
            }
        }
        weight(s.wte, e.embed, "embed_tokens")
        XCTAssertEqual(s.head == nil, e.head == nil, "\(label): an own head exactly when untied")
        if let h = s.head, let want = e.head { weight(h, want, "lm_head") }
        assertSameBits(f32(s.lnfw, c.nEmbd), e.norm, "\(label) model.norm")
        XCTAssertEqual([s.wpe, s.lnfb], [-1, -1], "\(label): no positions table, no LayerNorm β")
        for (l, b) in s.blocks.enumerated() {
            assertSameBits(f32(b.ln1w, c.nEmbd), e.ln1[l], "\(label) layer \(l) input_layernorm")
            assertSameBits(f32(b.ln2w, c.nEmbd), e.ln2[l], "\(label) layer \(l) post_attention_layernorm")
            weight(b.attnW, e.qkv[l], "layer \(l) q|k|v")
            if c.qkvBias {
                assertSameBits(f32(b.attnB, e.qkvBias[l].count), e.qkvBias[l], "\(label) layer \(l) q|k|v bias")
            }
            weight(b.projW, e.o[l], "layer \(l) o_proj")
            weight(b.fcW, e.gateUp[l], "layer \(l) gate|up")
            weight(b.fcProjW, e.down[l], "layer \(l) down_proj")
            XCTAssertEqual(
                [b.ln1b, b.ln2b, b.projB, b.fcB, b.fcProjB], [-1, -1, -1, -1, -1], "\(label) layer \(l): absent tensors"
            )
            if !c.qkvBias { XCTAssertEqual(b.attnB, -1, "\(label) layer \(l): no q/k/v bias") }
        }
    }

    /// Assembles the whole tensors from all ranks' fp32 shards by their slots' specs, checking that
    /// each element is held by as many ranks as the spec says (one for a shard, `ranks` for a
    /// shared key/value head, all for a replicated tensor) with the same bits, and that padded
    /// vocabulary rows are zero.
    func reassemble(_ ranks: [BaseWeights], _ label: String) -> [String: [Float]] {
        var whole: [String: [Float]] = [:]
        var holders: [String: [Int]] = [:]
        var want: [String: Int] = [:]
        let p = ranks.count
        for w in ranks {
            for s in w.shape.slots {
                let n = s.shape.reduce(1, *)
                let width = s.shape.count == 2 ? s.shape[1] : s.shape[0]
                let nrows = s.shape.count == 2 ? s.shape[0] : 1
                let v = UnsafeBufferPointer(start: w.ptr(s.offset), count: s.localCount)
                var full = whole[s.name] ?? [Float](repeating: .nan, count: n)
                var count = holders[s.name] ?? [Int](repeating: 0, count: n)
                func put(_ i: Int, _ x: Float) {
                    if count[i] > 0 && full[i].bitPattern != x.bitPattern {
                        XCTFail("\(label) \(s.name)[\(i)]: held as \(full[i]) and \(x)")
                    }
                    full[i] = x
                    count[i] += 1
                }
                func putRows(_ r: Range<Int>, valid: Int) {
                    for (k, row) in r.enumerated() {
                        for col in 0..<width {
                            if row < valid {
                                put(row * width + col, v[k * width + col])
                            } else if v[k * width + col] != 0 {
                                XCTFail("\(label) \(s.name): padded row \(row) is not zero")
                            }
                        }
                    }
                }
                func putCols(_ r: Range<Int>) {
                    for row in 0..<nrows {
                        for (k, col) in r.enumerated() { put(row * width + col, v[row * r.count + k]) }
                    }
                }
                switch s.spec {
                case .replicated:
                    putRows(0..<nrows, valid: nrows)
                    want[s.name] = p
                case .rows(let r, let valid):
                    putRows(r, valid: valid)
                    want[s.name] = 1
                case .cols(let r):
                    putCols(r)
                    want[s.name] = 1
                case .shared(let r, let sharers):
                    if s.shape.count == 2 { putRows(r, valid: nrows) } else { putCols(r) }
                    want[s.name] = sharers
                case .qkv: XCTFail("\(label) \(s.name): GPT-2's interleaved q/k/v in a Llama-family layout")
                }
                whole[s.name] = full
                holders[s.name] = count
            }
        }
        for (name, count) in holders where !count.allSatisfy({ $0 == want[name]! }) {
            XCTFail("\(label) \(name): elements held by \(Set(count).sorted()) ranks, want \(want[name]!)")
        }
        return whole
    }

    /// Loads `config` from `source` on every rank of TP 1, 2 and 4 in fp32 and in bf16 (with and
    /// without the fp32 masters) and checks each shard, the key/value sharing and the reassembly.
    func checkAllRanks(
        _ c: GPTConfig, truth: [String: [Float]], source: WeightSource, degrees: [Int] = [1, 2, 4], _ name: String
    ) throws {
        for p in degrees {
            var ranks: [BaseWeights] = []
            for t in 0..<p {
                let layout = try TPLayout(config: c, degree: p, rank: t)
                let e = Self.expected(c, truth, degree: p, rank: t)
                XCTAssertEqual(Array(layout.kvHeadRange), e.kvHeads, "\(name) TP \(p) rank \(t): key/value heads")
                for (precision, master) in [(Precision.fp32, true), (.bf16, false), (.bf16, true)] {
                    let w = BaseWeights(shape: BaseLayout(layout: layout, precision: precision, master: master))
                    try w.load(from: source)
                    checkShard(w, e, master: master, "\(name) TP \(p) rank \(t) \(precision)\(master ? "" : " frozen")")
                    if precision == .fp32 { ranks.append(w) }
                }
            }
            // The shared spec exactly when there are fewer key/value heads than ranks.
            let k = ranks[0].shape.slots.first { $0.name == "model.layers.0.self_attn.k_proj.weight" }!
            if case .shared(_, let sharers) = k.spec {
                XCTAssertEqual(sharers, p / c.nKVHead)
            } else {
                XCTAssertGreaterThanOrEqual(c.nKVHead, p, "\(name) TP \(p): \(k.spec)")
            }
            let whole = reassemble(ranks, "\(name) TP \(p)")
            XCTAssertEqual(
                Set(whole.keys), Set(truth.keys.filter { !(c.tiedHead && $0 == "lm_head.weight") }),
                "\(name): the tensors of the model")
            for (n, x) in whole { assertSameBits(x, truth[n]!, "\(name) TP \(p) reassembled \(n)") }
        }
    }

    // MARK: Hugging Face checkpoints

    func testEveryRankHoldsItsSliceOfEachCheckpointTensor() throws {
        for v in Self.variants {
            let (c, source) = try LlamaFiles.open(try base(v))
            XCTAssertEqual(c.family, .llama)
            XCTAssertEqual(source.index != nil, v == "llama-rope3", "\(v): sharded with an index")
            let truth = try Self.wholeTensors(try base(v))
            XCTAssertEqual(truth["lm_head.weight"] == nil, c.tiedHead, "\(v): the fixture's head")
            try checkAllRanks(c, truth: truth, source: source, v)
        }
    }

    func testTheFixturesCoverEveryKeyValueLayout() throws {
        // Split (llama at TP 1, 2), one head per two ranks (llama at TP 4), one head per two and four ranks (qwen2).
        let llama = try LlamaFiles.open(try base("llama")).config
        let qwen = try LlamaFiles.open(try base("qwen2")).config
        XCTAssertEqual([llama.nKVHead, qwen.nKVHead], [2, 1])
        XCTAssertEqual(
            try [1, 2, 4].map { try TPLayout(config: llama, degree: $0, rank: 0).kvReplicated }, [false, false, true])
        XCTAssertEqual(
            try [1, 2, 4].map { try TPLayout(config: qwen, degree: $0, rank: 0).kvReplicated }, [false, true, true])
        XCTAssertEqual([llama.tiedHead, qwen.tiedHead, llama.qkvBias, qwen.qkvBias], [false, true, false, true])
        XCTAssertNotEqual(
            llama.paddedVocab, llama.vocabSize, "the llama vocabulary is padded, so the last shard holds padding rows")
    }

    func testTheBF16CheckpointLoadsAsTheFP32OneRounded() throws {
        let (c, fp32) = try LlamaFiles.open(try base("qwen2"))
        let (c16, bf16) = try LlamaFiles.open(try base("qwen2-bf16"))
        XCTAssertEqual(c, c16)
        var rounded = 0
        for p in [1, 2, 4] {
            for t in 0..<p {
                let layout = try TPLayout(config: c, degree: p, rank: t)
                let a = BaseWeights(shape: BaseLayout(layout: layout))
                let b = BaseWeights(shape: BaseLayout(layout: layout))
                try a.load(from: fp32)
                try b.load(from: bf16)
                let want = a.arena.buffer.map { BF16.widen(BF16.round($0)) }
                assertSameBits(
                    Array(b.arena.buffer), want, "TP \(p) rank \(t): the bf16 checkpoint against the fp32 one rounded")
                rounded += zip(a.arena.buffer, want).filter { $0 != $1 }.count
                // Held in bf16, both give the same bits.
                let ha = BaseWeights(shape: BaseLayout(layout: layout, precision: .bf16, master: false))
                let hb = BaseWeights(shape: BaseLayout(layout: layout, precision: .bf16, master: false))
                try ha.load(from: fp32)
                try hb.load(from: bf16)
                assertSame(Array(hb.half.buffer), Array(ha.half.buffer), "TP \(p) rank \(t): bf16 arenas")
                assertSameBits(
                    Array(hb.arena.buffer), Array(ha.arena.buffer).map { BF16.widen(BF16.round($0)) },
                    "TP \(p) rank \(t): fp32 tensors")
            }
        }
        XCTAssertGreaterThan(rounded, 10_000, "the fp32 weights are not already bf16 values")
    }

    func testTensorsWithoutTheModelPrefixLoadTheSame() throws {
        // A bare Qwen2Model / LlamaModel saves its tensors without "model.".
        let src = try base("qwen2")
        let dir = scratch("llama-bare")
        let truth = try Self.wholeTensors(src)
        let st = try SafeTensorsFile(path: src + "/model.safetensors")
        var stripped: [(name: String, shape: [Int], data: [Float])] = []
        for (name, data) in truth {
            stripped.append((String(name.dropFirst("model.".count)), try st.info(name).shape, data))
        }
        try SafeTensorsFile.write(path: dir + "/model.safetensors", tensors: stripped)
        try FileManager.default.copyItem(atPath: src + "/config.json", toPath: dir + "/config.json")
        let (c, bare) = try LlamaFiles.open(dir)
        XCTAssertEqual(bare.rename("model.layers.1.mlp.up_proj.weight"), "layers.1.mlp.up_proj.weight")
        XCTAssertTrue(truth.keys.allSatisfy { $0.hasPrefix("model.") })
        try checkAllRanks(c, truth: truth, source: bare, degrees: [2], "bare qwen2")
    }

    /// A copy of a fixture's base directory with config.json's keys replaced.
    func copy(_ variant: String, config patch: [String: Any] = [:]) throws -> String {
        let dir = scratch("llama-copy") + "/base"
        try FileManager.default.copyItem(atPath: try base(variant), toPath: dir)
        let path = dir + "/config.json"
        var o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        for (k, v) in patch { o[k] = v }
        try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: path))
        return dir
    }

    func assertOpenFails(_ dir: String, _ parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try LlamaFiles.open(dir), file: file, line: line) { e in
            for p in parts { XCTAssertTrue("\(e)".contains(p), "\(e)\nwanted: \(p)", file: file, line: line) }
        }
    }

    func testTheShapeCheckNamesTheConfigKeyThatDisagrees() throws {
        let cases: [(variant: String, patch: [String: Any], message: [String])] = [
            (
                "llama", ["vocab_size": 950],
                [
                    """
                    vocab_size is 950 but tensor model.embed_tokens.weight in model.safetensors has shape [949, 64], \
                    it needs [950, 64]
                    """
                ]
            ),
            (
                "llama", ["hidden_size": 128, "head_dim": 32],
                ["hidden_size is 128 but tensor model.embed_tokens.weight", "it needs [949, 128]"]
            ),
            (
                "llama", ["num_key_value_heads": 4],
                [
                    """
                    num_key_value_heads is 4 but tensor model.layers.0.self_attn.k_proj.weight in model.safetensors \
                    has shape [32, 64], it needs [64, 64]
                    """
                ]
            ),
            (
                "qwen2", ["num_key_value_heads": 2],
                ["num_key_value_heads is 2 but tensor model.layers.0.self_attn.k_proj.weight", "has shape [16, 64]"]
            ),
            (
                "llama", ["intermediate_size": 128],
                [
                    """
                    intermediate_size is 128 but tensor model.layers.0.mlp.gate_proj.weight in model.safetensors has \
                    shape [160, 64], it needs [128, 64]
                    """
                ]
            ),
            (
                "llama-rope3", ["intermediate_size": 192],
                ["intermediate_size is 192 but tensor model.layers.0.mlp.gate_proj.weight in model-0000"]
            ),
            (
                "llama", ["num_hidden_layers": 3],
                ["num_hidden_layers is 3 but the checkpoint", "holds 2 layers (layers.0 … layers.1)"]
            ),
            ("qwen2", ["tie_word_embeddings": false], ["tie_word_embeddings is false", "has no lm_head.weight"]),
            ("qwen2", ["model_type": "llama"], ["model.layers.0.self_attn.q_proj.bias", "no biases"])
        ]
        for (variant, patch, message) in cases {
            assertOpenFails(try copy(variant, config: patch), message + ["config.json"])
        }
        for v in Self.variants { XCTAssertNoThrow(try LlamaFiles.open(try copy(v)), "\(v): the copies open unchanged") }
    }

    func testAMissingShardFileIsNamed() throws {
        let dir = try copy("llama-rope3")
        let index =
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: URL(fileURLWithPath: dir + "/model.safetensors.index.json"))) as! [String: Any]
        let map = index["weight_map"] as! [String: String]
        let shard = map["model.norm.weight"]!
        try FileManager.default.removeItem(atPath: dir + "/" + shard)
        let placed = map.filter { $0.value == shard }.count
        assertOpenFails(
            dir,
            [dir + "/" + shard, "no such file", "model.safetensors.index.json places \(placed) tensors in this shard"])
    }

    func testATensorMissingFromTheIndexIsNamed() throws {
        func rewrite(_ dir: String, _ change: (inout [String: String]) -> Void) throws {
            let path = dir + "/model.safetensors.index.json"
            var index =
                try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
            var map = index["weight_map"] as! [String: String]
            change(&map)
            index["weight_map"] = map
            try JSONSerialization.data(withJSONObject: index).write(to: URL(fileURLWithPath: path))
        }
        let dropped = try copy("llama-rope3")
        try rewrite(dropped) { $0["model.layers.1.mlp.up_proj.weight"] = nil }
        assertOpenFails(
            dropped,
            ["tensor model.layers.1.mlp.up_proj.weight is not in the weight_map of", "model.safetensors.index.json"])
        // An index that places a tensor in a shard without it.
        let moved = try copy("llama-rope3")
        var wrong = ""
        try rewrite(moved) { map in
            let other = Set(map.values).sorted().first { $0 != map["model.norm.weight"]! }!
            map["model.norm.weight"] = other
            wrong = other
        }
        assertOpenFails(moved, ["\(wrong) has no tensor model.norm.weight, though", "places it there"])
        // A shard named outside the directory.
        let outside = try copy("llama-rope3")
        try rewrite(outside) { $0["model.norm.weight"] = "../model.safetensors" }
        assertOpenFails(
            outside,
            ["weight_map[\"model.norm.weight\"] is the string \"../model.safetensors\", not the name of a file in"])
    }

    // MARK: Random initialisation

    /// Every tensor of a random initialisation, read whole.
    static func wholeTensors(_ src: RandomInitSource) throws -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for s in BaseLayout(layout: try TPLayout(config: src.config, degree: 1, rank: 0)).slots {
            let rows = s.shape.count == 2 ? s.shape[0] : 1
            let width = s.shape.count == 2 ? s.shape[1] : s.shape[0]
            var x = [Float](repeating: .nan, count: rows * width)
            try x.withUnsafeMutableBufferPointer {
                try src.readBlock(s.name, rows: 0..<rows, cols: 0..<width, into: $0.baseAddress!)
            }
            out[s.name] = x
        }
        return out
    }

    /// Llama-tiny's shape with q/k/v biases and an untied head, so every kind of tensor is drawn.
    static let randomShape: GPTConfig = {
        var c = GPTConfig.named("llama-tiny")!
        c.nLayer = 2
        c.qkvBias = true
        c.tiedHead = false
        return c
    }()

    func testRandomInitHasTransformersStatistics() throws {
        let c = Self.randomShape
        let w = try Self.wholeTensors(try RandomInitSource(config: c, seed: 5))
        var matrices = 0
        for (name, x) in w {
            if name.hasSuffix(".bias") {
                XCTAssertTrue(x.allSatisfy { $0 == 0 }, "\(name): biases 0")
            } else if name.hasSuffix("norm.weight") {
                XCTAssertTrue(x.allSatisfy { $0 == 1 }, "\(name): RMSNorm weights 1")
            } else {
                // N(0, 0.02²) for every matrix, o_proj and down_proj included (no residual scaling):
                // mean and standard deviation within 5 standard errors.
                let n = Double(x.count)
                let mean = x.reduce(0.0) { $0 + Double($1) } / n
                let sd = (x.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / n).squareRoot()
                XCTAssertLessThan(abs(mean), 5 * 0.02 / n.squareRoot(), "\(name): mean \(mean)")
                XCTAssertLessThan(abs(sd - 0.02), 5 * 0.02 / (2 * n).squareRoot(), "\(name): standard deviation \(sd)")
                matrices += 1
            }
        }
        XCTAssertEqual(matrices, 2 + 7 * c.nLayer, "embed_tokens, lm_head and the seven matrices of each layer")
        // Each tensor is its own draw.
        let starts = w.filter { $0.value.contains { $0 != 0 && $0 != 1 } }.map { Array($0.value.prefix(8)) }
        XCTAssertEqual(Set(starts.map { $0.map(\.bitPattern) }).count, starts.count)
        XCTAssertEqual(
            w.count, 3 + 12 * c.nLayer, "embed_tokens, lm_head, norm; per layer two norms, seven matrices, three biases"
        )
    }

    func testRandomInitShardsAreSlicesOfTheWholeInit() throws {
        let src = try RandomInitSource(config: Self.randomShape, seed: 9)
        try checkAllRanks(Self.randomShape, truth: try Self.wholeTensors(src), source: src, "random llama-tiny")
        // Widths that are not multiples of 16 (ArenaPlanner's rounding unit): d 42, three heads of
        // 14 sharing one key/value head, MLP 90; TP 3 shares the key/value head over three ranks.
        let odd = GPTConfig.llama(
            nLayer: 2, nEmbd: 42, nHead: 3, nKVHead: 1, ffn: 90, vocabSize: 257, nPositions: 32, qkvBias: true)
        XCTAssertNotEqual((odd.nEmbd * odd.nEmbd) % 16, 0)
        let oddSource = try RandomInitSource(config: odd, seed: 4)
        try checkAllRanks(
            odd, truth: try Self.wholeTensors(oddSource), source: oddSource, degrees: [1, 3], "random d 42")
    }

    // MARK: What stays as it was, and what is refused

    /// GPT-2's layout as it was before the Llama family: its tensors in HF order, each at the next
    /// 16-float boundary of its arena (GEMM weights in the bf16 arena under bf16, with an fp32
    /// master when asked), the block offsets those of their tensors, no own head.
    func testGPT2LayoutIsUnchanged() throws {
        let c = Fixtures.tiny
        let d = c.nEmbd
        for p in [1, 2] {
            let t = try TPLayout(config: c, degree: p, rank: p - 1)
            let dl = d / p
            let fl = 4 * d / p
            var tensors: [(String, Int, Bool)] = [
                ("transformer.wte.weight", c.paddedVocab / p * d, true),
                ("transformer.wpe.weight", c.nPositions * d, false)
            ]
            for l in 0..<c.nLayer {
                let h = "transformer.h.\(l)."
                tensors += [
                    (h + "ln_1.weight", d, false), (h + "ln_1.bias", d, false),
                    (h + "attn.c_attn.weight", d * 3 * dl, true),
                    (h + "attn.c_attn.bias", 3 * dl, false), (h + "attn.c_proj.weight", dl * d, true),
                    (h + "attn.c_proj.bias", d, false),
                    (h + "ln_2.weight", d, false), (h + "ln_2.bias", d, false), (h + "mlp.c_fc.weight", d * fl, true),
                    (h + "mlp.c_fc.bias", fl, false), (h + "mlp.c_proj.weight", fl * d, true),
                    (h + "mlp.c_proj.bias", d, false)
                ]
            }
            tensors += [("transformer.ln_f.weight", d, false), ("transformer.ln_f.bias", d, false)]
            for (precision, master) in [(Precision.fp32, true), (.bf16, true), (.bf16, false)] {
                let s = BaseLayout(layout: t, precision: precision, master: master)
                var f = 0
                var h = 0
                var want: [(String, Int, Int, Int)] = []
                for (name, n, gemm) in tensors {
                    let half = gemm && precision == .bf16
                    let padded = (n + 15) / 16 * 16
                    want.append((name, !half || master ? f : -1, half ? h : -1, n))
                    if !half || master { f += padded }
                    if half { h += padded }
                }
                let label = "TP \(p) \(precision) master \(master)"
                XCTAssertEqual(s.slots.map(\.name), want.map { $0.0 }, label)
                XCTAssertEqual(s.slots.map(\.offset), want.map { $0.1 }, label)
                XCTAssertEqual(s.slots.map(\.half), want.map { $0.2 }, label)
                XCTAssertEqual(s.slots.map(\.localCount), want.map { $0.3 }, label)
                XCTAssertEqual([s.total, s.halfTotal], [f, h], label)
                XCTAssertNil(s.head, label)
                let at = Dictionary(uniqueKeysWithValues: s.slots.map { ($0.name, ($0.offset, $0.half)) })
                XCTAssertEqual(
                    s.wte, WeightOffsets(f32: at["transformer.wte.weight"]!.0, bf16: at["transformer.wte.weight"]!.1),
                    label)
                XCTAssertEqual(
                    [s.wpe, s.lnfw, s.lnfb],
                    ["wpe.weight", "ln_f.weight", "ln_f.bias"].map { at["transformer." + $0]!.0 }, label)
                for (l, b) in s.blocks.enumerated() {
                    let o = { (n: String) in at["transformer.h.\(l)." + n]! }
                    XCTAssertEqual(
                        [b.ln1w, b.ln1b, b.attnB, b.projB, b.ln2w, b.ln2b, b.fcB, b.fcProjB],
                        [
                            "ln_1.weight", "ln_1.bias", "attn.c_attn.bias", "attn.c_proj.bias", "ln_2.weight",
                            "ln_2.bias", "mlp.c_fc.bias", "mlp.c_proj.bias"
                        ].map { o($0).0 }, label)
                    XCTAssertEqual(
                        [b.attnW, b.projW, b.fcW, b.fcProjW],
                        ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"].map {
                            WeightOffsets(f32: o($0).0, bf16: o($0).1)
                        }, label)
                }
                XCTAssertEqual(s.slots.filter(\.residualProjection).count, 2 * c.nLayer, label)
            }
        }
    }

    func testTrainingSharedKeyValueHeadsIsRefused() throws {
        let llama = GPTConfig.named("llama-tiny")!  // 4 query heads, 2 key/value heads, no biases
        let qwen = Self.randomShape.with { $0.nKVHead = 1 }  // 1 key/value head, q/k/v biases
        func refused(_ c: GPTConfig, _ p: Int, _ mode: Method) throws -> String? {
            do {
                try TPLayout(config: c, degree: p, rank: 0).requireKVTrainable(by: mode)
                return nil
            } catch { return "\(error)" }
        }
        let cases: [(GPTConfig, Int, Method, String?)] = [
            (
                llama, 4, .full,
                """
                full fine-tuning at --tp 4 is not supported for this model: its 2 key/value heads are shared by 2 \
                ranks each
                """
            ),
            (llama, 2, .full, nil),  // split heads: each rank's gradient is whole
            (llama, 4, .bitfit, nil),  // no q/k/v biases to train
            (qwen, 2, .bitfit, "BitFit (with the k_proj and v_proj biases) at --tp 2"),
            (qwen, 4, .full, "its 1 key/value head is shared by 4 ranks each"),
            (qwen, 1, .full, nil),
            (qwen, 4, .lora, nil),  // LoRA and adapters leave k and v frozen
            (qwen, 4, .adapterH, nil)
        ]
        for (c, p, mode, message) in cases {
            let got = try refused(c, p, mode)
            if let message {
                XCTAssertTrue(
                    got?.contains(message) == true, "\(mode) at TP \(p): \(got ?? "accepted")\nwanted: \(message)")
            } else {
                XCTAssertNil(got, "\(mode) at TP \(p)")
            }
        }
        XCTAssertNil(try refused(Fixtures.tiny, 4, .full), "GPT-2: as many key/value heads as query heads")
    }
}

extension GPTConfig {
    /// This shape with `change` applied.
    func with(_ change: (inout GPTConfig) -> Void) -> GPTConfig {
        var c = self
        change(&c)
        return c
    }
}
