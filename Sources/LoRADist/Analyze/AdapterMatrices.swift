import Foundation

/// An adapter file's A and B as float64 matrices, per adapted (layer, target), with its LoRA
/// config and the identity of the base it was trained on.
public struct AdapterMatrices {
    public struct Pair {
        public var layer: Int
        public var target: LoRATarget
        public var a: DMatrix  // [r, in]
        public var b: DMatrix  // [out, r]
    }

    public var path: String
    public var config: LoRAConfig
    public var base: BaseIdentity
    public var pairs: [Pair]

    public init(path: String) throws {
        let (cfg, id) = try AdapterFile.header(path)
        let f = try SafeTensorsFile(path: path)
        var pairs: [Pair] = []
        for l in 0..<id.config.nLayer {
            for t in cfg.targets {
                let k = "lora.h.\(l).\(t.rawValue)"
                let i = t.inDim(id.config)
                let o = t.outDim(id.config)
                let r = cfg.slot(layer: l, target: t, family: id.config.family).rank
                var mats: [DMatrix] = []
                for (name, shape) in [(k + ".A", [r, i]), (k + ".B", [o, r])] {
                    let info = try f.info(name)
                    guard info.shape == shape else {
                        throw IOError.corrupt(path, "\(name) has shape \(info.shape), expected \(shape)")
                    }
                    let v = try f.floats(name)
                    try requireFinite(
                        v, tensor: name, file: path, shape: shape,
                        what: "the adapter is damaged (or was saved from a diverged run)")
                    mats.append(DMatrix(rows: shape[0], cols: shape[1], data: v.map(Double.init)))
                }
                pairs.append(Pair(layer: l, target: t, a: mats[0], b: mats[1]))
            }
        }
        self.path = path
        config = cfg
        base = id
        self.pairs = pairs
    }

    public func pair(layer: Int, target: LoRATarget) -> Pair? {
        pairs.first { $0.layer == layer && $0.target == target }
    }
}

extension LoRATarget {
    /// GPT-2: the Conv1D tensor ([in, out]) holding this target's W and the columns of it that are W's.
    func gpt2Tensor(layer: Int, _ c: GPTConfig) -> (name: String, cols: Range<Int>) {
        let p = "transformer.h.\(layer)."
        let d = c.nEmbd
        switch self {
        case .q: return (p + "attn.c_attn.weight", 0..<d)
        case .k: return (p + "attn.c_attn.weight", d..<(2 * d))
        case .v: return (p + "attn.c_attn.weight", (2 * d)..<(3 * d))
        case .mlpIn, .gate, .up: return (p + baseModule(.gpt2) + ".weight", 0..<c.ffn)
        case .o, .mlpOut, .down: return (p + baseModule(.gpt2) + ".weight", 0..<d)
        }
    }
}

/// The frozen weight a target adapts, as [out, in] (h = W·x), read from a base checkpoint.
public func baseWeight(_ source: WeightSource, config c: GPTConfig, layer: Int, target: LoRATarget) throws -> DMatrix {
    let rows = target.inDim(c)
    if c.family != .gpt2 {
        // nn.Linear holds [out, in] already.
        let out = target.outDim(c)
        var buf = [Float](repeating: 0, count: out * rows)
        try buf.withUnsafeMutableBufferPointer {
            try source.readBlock(
                "model.layers.\(layer)." + target.baseModule(c.family) + ".weight", rows: 0..<out, cols: 0..<rows,
                into: $0.baseAddress!)
        }
        return DMatrix(rows: out, cols: rows, data: buf.map(Double.init))
    }
    let (name, cols) = target.gpt2Tensor(layer: layer, c)
    var buf = [Float](repeating: 0, count: rows * cols.count)
    try buf.withUnsafeMutableBufferPointer {
        try source.readBlock(name, rows: 0..<rows, cols: cols, into: $0.baseAddress!)
    }
    // Conv1D holds [in, out]; transpose to [out, in].
    var w = DMatrix(rows: cols.count, cols: rows)
    for i in 0..<rows { for j in 0..<cols.count { w.data[j * rows + i] = Double(buf[i * cols.count + j]) } }
    return w
}
