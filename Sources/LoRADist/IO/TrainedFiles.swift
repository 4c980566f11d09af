import Foundation

// What a training run saves besides LoRA's adapter: the trained tensors of every method, whole
// (gathered over the TP group where they are sharded), so a file written at any TP degree loads at
// any other.
//
// - bottleneck adapters (adapter-h, adapter-l): OUT/adapter.safetensors, format
//   `lora-dist-bottleneck-v1`, tensors `adapter.h.<layer>.<attn|mlp>.{down,up}.{weight,bias}`
//   (down.weight [d, m], down.bias [m], up.weight [m, d], up.bias [d]) and, for Lin's, `ln.{weight,bias}` [d];
// - BitFit: OUT/adapter.safetensors, format `lora-dist-bitfit-v1`, every bias under its HF name and full shape;
// - full fine-tuning: OUT/model/ (config.json + model.safetensors), as `merge --out` writes.
// Each small file carries the base's identity (`BaseIdentity`) like LoRA's, and `generate`,
// `evaluate` and `merge --adapter` tell the three formats apart by their `format` metadata.

/// The kind of trained file `--adapter` names.
public enum TrainedFileKind: Equatable, Sendable {
    case lora
    case bottleneck(AdapterConfig)
    case bitfit

    /// The method that writes it, as `--method` names it.
    public var method: String {
        switch self {
        case .lora: return "lora"
        case .bottleneck(let c): return c.kind.rawValue
        case .bitfit: return "bitfit"
        }
    }
}

public enum TrainedFile {
    public static let bottleneckFormat = "lora-dist-bottleneck-v1"
    public static let bitfitFormat = "lora-dist-bitfit-v1"

    /// What `path` holds and the base it was trained on (LoRA's header is checked by `AdapterFile.header`).
    public static func kind(_ path: String) throws -> (kind: TrainedFileKind, base: BaseIdentity) {
        let f = try SafeTensorsFile(path: path)
        switch f.metadata["format"] {
        case bottleneckFormat:
            let (c, base) = try bottleneckHeader(f)
            return (.bottleneck(c), base)
        case bitfitFormat:
            return (.bitfit, try identity(f))
        default:
            return (.lora, try AdapterFile.header(path).base)
        }
    }

    static func identity(_ f: SafeTensorsFile) throws -> BaseIdentity {
        guard let b = f.metadata["base"], let id = try? JSONDecoder().decode(BaseIdentity.self, from: Data(b.utf8))
        else {
            throw IOError.corrupt(f.path, "the base identity metadata is missing or does not decode")
        }
        do { try id.config.validate() } catch {
            throw IOError.corrupt(f.path, "the base identity describes no valid model: \(error)")
        }
        return id
    }

    // MARK: bottleneck adapters

    static func names(layer: Int, position: AdapterPosition) -> String {
        "adapter.h.\(layer).\(position == .attention ? "attn" : "mlp")"
    }

    /// Every tensor of `c`'s adapters on a model of shape `m`: name and full shape.
    static func bottleneckTensors(_ c: AdapterConfig, model m: GPTConfig) -> [(name: String, shape: [Int])] {
        let d = m.nEmbd
        let b = c.bottleneck
        var out: [(String, [Int])] = []
        for l in 0..<m.nLayer {
            for pos in c.positions {
                let k = names(layer: l, position: pos)
                out += [
                    (k + ".down.weight", [d, b]), (k + ".down.bias", [b]), (k + ".up.weight", [b, d]),
                    (k + ".up.bias", [d])
                ]
                if c.kind == .lin { out += [(k + ".ln.weight", [d]), (k + ".ln.bias", [d])] }
            }
        }
        return out
    }

    static func bottleneckHeader(_ f: SafeTensorsFile) throws -> (AdapterConfig, BaseIdentity) {
        let base = try identity(f)
        guard let a = f.metadata["adapters"], let c = try? JSONDecoder().decode(AdapterConfig.self, from: Data(a.utf8))
        else {
            throw IOError.corrupt(f.path, "the adapter configuration metadata is missing or does not decode")
        }
        guard c.bottleneck >= 1, c.bottleneck <= 1 << 20 else {
            throw IOError.corrupt(f.path, "bottleneck \(c.bottleneck) is out of range")
        }
        for (name, shape) in bottleneckTensors(c, model: base.config) {
            guard let i = f.infos[name] else { throw IOError.corrupt(f.path, "tensor \(name) is missing") }
            guard i.shape == shape else {
                throw IOError.corrupt(f.path, "\(name) has shape \(i.shape), expected \(shape)")
            }
        }
        return (c, base)
    }

    /// The adapters of `ad` (this rank's part of them) as whole tensors. Every rank of `tp` calls
    /// it: sharded adapters are gathered over the TP group; replicated and owner-placed ones are
    /// whole on TP rank 0, which is the rank that writes.
    public static func wholeAdapters(_ ad: AdapterWeights, tp: Communicator) throws -> [String: (
        shape: [Int], data: [Float]
    )] {
        let c = ad.config
        let d = ad.model.nEmbd
        let m = c.bottleneck
        let ml = ad.localWidth
        var arena = Array(UnsafeBufferPointer(start: ad.arena.base, count: ad.arena.count))
        var parts = [arena]
        if c.placement == .sharded && tp.size > 1 {
            arena = try Collective.gather(arena, over: tp, at: .write)
            let n = ad.arena.count
            parts = (0..<tp.size).map { Array(arena[($0 * n)..<(($0 + 1) * n)]) }
        }
        guard ad.stored else { return [:] }
        var out: [String: (shape: [Int], data: [Float])] = [:]
        for s in ad.slots {
            let k = names(layer: s.layer, position: s.position)
            var wd = [Float](repeating: 0, count: d * m)
            var bd = [Float](repeating: 0, count: m)
            var wu = [Float](repeating: 0, count: m * d)
            for (t, p) in parts.enumerated() {
                let c0 = t * ml
                for r in 0..<d { for j in 0..<ml { wd[r * m + c0 + j] = p[s.wd + r * ml + j] } }
                for j in 0..<ml { bd[c0 + j] = p[s.bd + j] }
                for j in 0..<ml { for col in 0..<d { wu[(c0 + j) * d + col] = p[s.wu + j * d + col] } }
            }
            let p0 = parts[0]
            out[k + ".down.weight"] = ([d, m], wd)
            out[k + ".down.bias"] = ([m], bd)
            out[k + ".up.weight"] = ([m, d], wu)
            out[k + ".up.bias"] = ([d], Array(p0[s.bu..<(s.bu + d)]))
            if s.lnw >= 0 {
                out[k + ".ln.weight"] = ([d], Array(p0[s.lnw..<(s.lnw + d)]))
                out[k + ".ln.bias"] = ([d], Array(p0[s.lnb..<(s.lnb + d)]))
            }
        }
        return out
    }

    public static func saveBottleneck(
        _ tensors: [String: (shape: [Int], data: [Float])], config: AdapterConfig, base: BaseIdentity,
        to path: String
    ) throws {
        let meta = [
            "format": bottleneckFormat, "method": config.kind.rawValue, "adapters": try compactJSON(config),
            "base": try compactJSON(base)
        ]
        try SafeTensorsFile.write(
            path: path, tensors: tensors.sorted { $0.key < $1.key }.map { ($0.key, $0.value.shape, $0.value.data) },
            metadata: meta)
    }

    /// Loads a bottleneck adapter file into `ad` (this rank's part of adapters of the file's kind
    /// and width, any placement), refusing values that are not finite.
    public static func loadBottleneck(_ path: String, into ad: AdapterWeights) throws {
        let f = try SafeTensorsFile(path: path)
        let d = ad.model.nEmbd
        let m = ad.config.bottleneck
        let ml = ad.localWidth
        let c0 = ad.config.placement == .sharded ? ad.layout.rank * ml : 0
        func read(_ name: String) throws -> [Float] {
            let v = try f.floats(name)
            try requireFinite(
                v, tensor: name, file: path, shape: try f.info(name).shape,
                what: "the adapter is damaged (or was saved from a diverged run)")
            return v
        }
        for s in ad.slots {
            let k = names(layer: s.layer, position: s.position)
            let wd = try read(k + ".down.weight")
            let bd = try read(k + ".down.bias")
            let wu = try read(k + ".up.weight")
            for r in 0..<d { for j in 0..<ml { ad.ptr(s.wd)[r * ml + j] = wd[r * m + c0 + j] } }
            for j in 0..<ml { ad.ptr(s.bd)[j] = bd[c0 + j] }
            ad.ptr(s.wu).update(from: Array(wu[(c0 * d)..<((c0 + ml) * d)]), count: ml * d)
            ad.ptr(s.bu).update(from: try read(k + ".up.bias"), count: d)
            if s.lnw >= 0 {
                ad.ptr(s.lnw).update(from: try read(k + ".ln.weight"), count: d)
                ad.ptr(s.lnb).update(from: try read(k + ".ln.bias"), count: d)
            }
        }
    }

    /// Why `merge` cannot write a bottleneck adapter into the base, and what runs it instead.
    public static func cannotMerge(_ path: String, _ c: AdapterConfig) -> String {
        """
        it holds \(c.kind.rawValue) bottleneck adapters (bottleneck \(c.bottleneck)), which merge cannot fold into the \
        base: each is a nonlinear layer added after a sublayer (h + gelu(h·W_down + b_down)·W_up + b_up), not a change \
        of a weight matrix as LoRA's B·A is; run them as extra layers with generate --adapter \(path) or evaluate \
        --adapter \(path)
        """
    }

    // MARK: BitFit

    public static func saveBitFit(
        _ tensors: [String: (shape: [Int], data: [Float])], base: BaseIdentity, to path: String
    ) throws {
        let meta = ["format": bitfitFormat, "method": "bitfit", "base": try compactJSON(base)]
        try SafeTensorsFile.write(
            path: path, tensors: tensors.sorted { $0.key < $1.key }.map { ($0.key, $0.value.shape, $0.value.data) },
            metadata: meta)
    }

    /// The base's weights with the biases of a BitFit file in place of its own: the file must hold
    /// exactly the biases of a model of `config`, with their shapes and finite values.
    public static func bitfitSource(_ path: String, over base: WeightSource, config: GPTConfig) throws -> WeightSource {
        let f = try SafeTensorsFile(path: path)
        let layout = BaseLayout(layout: try TPLayout(config: config, degree: 1, rank: 0))
        let biases = layout.slots.filter { BiasParameters.trains($0.name) }
        for s in biases {
            guard let i = f.infos[s.name] else { throw IOError.corrupt(path, "tensor \(s.name) is missing") }
            guard i.shape == s.shape else {
                throw IOError.corrupt(path, "\(s.name) has shape \(i.shape), expected \(s.shape)")
            }
        }
        guard f.infos.count == biases.count else {
            throw IOError.corrupt(
                path, "holds \(f.infos.count) tensors, but a BitFit file of this base holds its \(biases.count) biases")
        }
        return OverlayWeightSource(
            base: base, over: FiniteWeightSource(SafeTensorsWeightSource(file: f)), names: Set(biases.map(\.name)))
    }
}

/// The tensors `names` from `over`, every other from `base`.
public struct OverlayWeightSource: WeightSource {
    public let base: WeightSource, over: WeightSource
    public let names: Set<String>

    public func shape(of name: String) throws -> [Int] { try (names.contains(name) ? over : base).shape(of: name) }

    public func readBlock(_ name: String, rows: Range<Int>, cols: Range<Int>, into dst: UnsafeMutablePointer<Float>)
        throws
    {
        try (names.contains(name) ? over : base).readBlock(name, rows: rows, cols: cols, into: dst)
    }
}

extension BaseWeights {
    /// The tensors of the whole model (or those `include` selects) as HF-named full tensors,
    /// gathered over the TP group `tp` (every rank of it calls this, one AllGather per tensor):
    /// each rank's shard is put back where its layout took it from. Only `keep` ranks assemble
    /// them; the others return an empty dictionary.
    public func gatherFullTensors(over tp: Communicator, keep: Bool, include: (String) -> Bool = { _ in true }) throws
        -> [String: (shape: [Int], data: [Float])]
    {
        let p = shape.layout.degree
        if p == 1 {
            guard keep else { return [:] }
            return try fullTensors().filter { include($0.key) }
        }
        precondition(tp.size == p)
        let c = shape.layout.config
        let layouts = try (0..<p).map {
            BaseLayout(layout: try TPLayout(config: c, degree: p, rank: $0), precision: shape.precision, master: true)
        }
        var out: [String: (shape: [Int], data: [Float])] = [:]
        for (i, s) in shape.slots.enumerated() where include(s.name) {
            var local = [Float](repeating: 0, count: s.localCount)
            if s.offset >= 0 {
                local.withUnsafeMutableBufferPointer {
                    $0.baseAddress!.update(from: ptr(s.offset), count: s.localCount)
                }
            } else {
                local.withUnsafeMutableBufferPointer { BF16.widen(halfPtr(s.half), $0.baseAddress!, s.localCount) }
            }
            let all = try Collective.gather(local, over: tp, at: .write)
            guard keep else { continue }
            let is2D = s.shape.count == 2
            let n = is2D ? s.shape[0] : 1
            let width = is2D ? s.shape[1] : s.shape[0]
            var full = [Float](repeating: 0, count: s.shape.reduce(1, *))
            for t in 0..<p {
                let spec = layouts[t].slots[i].spec
                let lc = layouts[t].slots[i].localCount
                let src = all[(t * s.localCount)..<(t * s.localCount + lc)].map { $0 }
                switch spec {
                case .replicated:
                    if t == 0 { full = src }
                case .rows(let range, let valid):
                    let hi = min(range.upperBound, valid)
                    if hi > range.lowerBound {
                        for k in 0..<((hi - range.lowerBound) * width) { full[range.lowerBound * width + k] = src[k] }
                    }
                case .cols(let range):
                    for r in 0..<n {
                        for j in 0..<range.count { full[r * width + range.lowerBound + j] = src[r * range.count + j] }
                    }
                case .shared(let range, _):
                    if is2D {
                        for k in 0..<(range.count * width) { full[range.lowerBound * width + k] = src[k] }
                    } else {
                        for j in 0..<range.count { full[range.lowerBound + j] = src[j] }
                    }
                case .qkv(let range, let d):
                    let w = range.count
                    for r in 0..<n {
                        for part in 0..<3 {
                            for j in 0..<w {
                                full[r * width + part * d + range.lowerBound + j] = src[r * 3 * w + part * w + j]
                            }
                        }
                    }
                }
            }
            out[s.name] = (s.shape, full)
        }
        return out
    }
}
