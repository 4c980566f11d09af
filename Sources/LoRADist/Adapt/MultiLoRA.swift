import Foundation

/// Which adapter each row of a pass uses: ranges of consecutive rows (tokens, batch-major as the
/// forward lays them out), each with an adapter's name or nil for the bare base. Rows no group
/// covers use the base. `all(_:)` gives every row of every pass one adapter (a single request's
/// prompt and decoding steps).
public struct RowAssignment: Equatable, Sendable {
    public struct Group: Equatable, Sendable {
        public var adapter: String?
        public var rows: Range<Int>

        public init(adapter: String?, rows: Range<Int>) {
            self.adapter = adapter
            self.rows = rows
        }
    }

    /// The groups in row order; nil when `uniform` applies to every row.
    public let groups: [Group]?
    /// The adapter of every row when `groups` is nil.
    public let uniform: String?

    private init(groups: [Group]?, uniform: String?) {
        self.groups = groups
        self.uniform = uniform
    }

    /// Every row of every pass uses `adapter` (nil: the base).
    public static func all(_ adapter: String?) -> RowAssignment { RowAssignment(groups: nil, uniform: adapter) }

    /// Groups of rows, ascending and not overlapping; neighbours with the same adapter are joined,
    /// empty groups dropped.
    public init(groups: [Group]) throws {
        var joined: [Group] = []
        var end = 0
        for g in groups where !g.rows.isEmpty {
            guard g.rows.lowerBound >= end else {
                throw ModelError.invalidConfig(
                    "row groups must ascend without overlapping (rows \(g.rows) after row \(end - 1))")
            }
            if let last = joined.last, last.adapter == g.adapter, last.rows.upperBound == g.rows.lowerBound {
                joined[joined.count - 1].rows = last.rows.lowerBound..<g.rows.upperBound
            } else {
                joined.append(g)
            }
            end = g.rows.upperBound
        }
        self.init(groups: joined, uniform: nil)
    }

    /// Sequences of `length` rows each, side by side: sequence i uses `adapters[i]`.
    public static func sequences(_ adapters: [String?], length: Int) throws -> RowAssignment {
        try RowAssignment(
            groups: adapters.enumerated().map { Group(adapter: $1, rows: ($0 * length)..<(($0 + 1) * length)) })
    }

    /// The adapters it names.
    public var names: Set<String> { Set((groups?.map(\.adapter) ?? [uniform]).compactMap { $0 }) }

    /// The groups of a pass of `rows` rows that use an adapter.
    func adapted(rows: Int) -> [(name: String, rows: Range<Int>)] {
        guard let groups else { return uniform.map { [($0, 0..<rows)] } ?? [] }
        return groups.compactMap { g in
            precondition(g.rows.upperBound <= rows, "row group \(g.rows) beyond the pass's \(rows) rows")
            return g.adapter.map { ($0, g.rows) }
        }
    }
}

/// Why an adapter set refuses a change.
public enum AdapterSetError: Error, CustomStringConvertible, Equatable {
    case duplicate(String)
    case unknown(String)
    case full(Int)
    case badName(String)
    /// Made for another base, or no LoRA a model of this shape can carry.
    case mismatch(String, String)
    case nonFinite(String, String)
    /// Its weights would take the loaded adapters' bytes past the budget (`serve --adapter-memory`).
    case memory(String, bytes: Int, loaded: Int, budget: Int)
    /// What only a training LoRA (LoRARuntime) does.
    case inferenceOnly(String)

    public var description: String {
        switch self {
        case .duplicate(let n): return "an adapter named \(n) is already loaded"
        case .unknown(let n): return "no adapter named \(n) is loaded"
        case .full(let k): return "\(k) adapters are loaded, the most --max-adapters allows; unload one first"
        case .badName(let n):
            return
                "adapter name \"\(n)\" must be 1 to 64 letters, digits, '-', '_' or '.' (it is the API's model name)"
        case .mismatch(let n, let why): return "adapter \(n) does not fit this base: \(why)"
        case .nonFinite(let n, let t): return "adapter \(n) holds NaN or Inf in \(t)"
        case .memory(let n, let bytes, let loaded, let budget):
            return """
                adapter \(n) takes \(bytes) bytes (\(MultiLoRASet.mib(bytes))); with the \(loaded) bytes of the \
                adapters loaded that passes the budget of \(budget) bytes (\(MultiLoRASet.mib(budget)), \
                --adapter-memory): unload one first, or raise --adapter-memory
                """
        case .inferenceOnly(let what): return "\(what): several adapters at once are served, not trained or merged"
        }
    }
}

/// What builds a `MultiLoRASet` on a model (`Trainable.Spec.multiLoRA(maxAdapters:)`).
public struct MultiLoRASpec: Equatable, Sendable {
    public var maxAdapters: Int
    /// Bytes all adapters' weights may take.
    public var memoryBudget: Int = MultiLoRASet.defaultMemoryBudget

    var deltaSpec: DeltaSpec {
        let (k, budget) = (maxAdapters, memoryBudget)
        return DeltaSpec(self, ops: Set(BlockLinears.Op.allCases)) { config, trains in
            guard !trains else { throw AdapterSetError.inferenceOnly("a model built for training") }
            return try MultiLoRASet(model: config, maxAdapters: k, memoryBudget: budget)
        }
    }
}

/// Any number of named LoRA adapters on one base, for inference: each its own rank, α (scale) and
/// targets, whole on every rank and never merged, and the assignment of the next passes' rows to
/// them. It attaches one delta to every block op (so an adapter loaded later, on any target,
/// needs no new attachment); on each op, each group of consecutive rows sharing an adapter runs one
/// GEMM pair, x·A'ᵀ then ·B'ᵀ scaled, added into the base's output (the SGMV idea, on CPU). A'
/// and B' are the rank's slices as in training (`LoRARuntime.deltas`): column-parallel ops take
/// B's rows of this rank's outputs, row-parallel ones A's columns of its inputs, whose partial
/// output the op's own AllReduce sums, so serving adds no collective. GPT-2 and the Llama family.
/// Adapters are added and removed between passes, on every rank alike, up to `maxAdapters` of them
/// and `memoryBudget` bytes of their weights (every rank holds each adapter whole).
public final class MultiLoRASet: LinearDeltaSet {
    public let model: GPTConfig
    public let maxAdapters: Int
    /// Bytes the loaded adapters' weights (`LoRAWeights.bytes`) may take together.
    public let memoryBudget: Int
    /// 1 GiB (`serve --adapter-memory 1024`): 16 adapters (the default --max-adapters) of rank 8 on
    /// every projection of a 1B Llama-family model (16 layers, d 2048, key/value width 512, FFN
    /// 8192: 5.6 M parameters, 21.5 MiB each) take a third of it; GPT-2 small's rank-4 q, v adapter
    /// takes 0.56 MiB.
    public static let defaultMemoryBudget = 1 << 30
    /// The loaded adapters, in the order they were added.
    public private(set) var names: [String] = []
    private var loaded: [String: LoRAWeights] = [:]
    /// The rows of the next passes.
    public private(set) var assignment = RowAssignment.all(nil)
    /// u = x·A'ᵀ of one group [rows, r], grown to the largest so far.
    private var u = FloatArena(count: 0)
    private let none = FloatArena(count: 0)

    public init(model: GPTConfig, maxAdapters: Int, memoryBudget: Int = defaultMemoryBudget) throws {
        guard maxAdapters >= 1 else {
            throw ModelError.invalidConfig("--max-adapters must be at least 1 (got \(maxAdapters))")
        }
        guard memoryBudget >= 1 else {
            throw ModelError.invalidConfig("--adapter-memory must be at least 1 byte (got \(memoryBudget))")
        }
        self.model = model
        self.maxAdapters = maxAdapters
        self.memoryBudget = memoryBudget
    }

    /// Bytes of the loaded adapters' weights.
    public var loadedBytes: Int { loaded.values.reduce(0) { $0 + $1.bytes } }

    /// `bytes` in MiB, for messages.
    static func mib(_ bytes: Int) -> String { fixed(Double(bytes) / 1_048_576, 3) + " MiB" }

    public var spec: DeltaSpec { MultiLoRASpec(maxAdapters: maxAdapters, memoryBudget: memoryBudget).deltaSpec }
    /// Nothing trains: the adapters' values are not the optimizer's.
    public var values: FloatArena { none }
    public var grad: FloatArena? { nil }
    public var parameterCount: Int { 0 }
    public var merged: Bool { false }
    var ops: Set<BlockLinears.Op> { Set(BlockLinears.Op.allCases) }

    /// The weights of adapter `name`, if loaded.
    public func adapter(_ name: String) -> LoRAWeights? { loaded[name] }

    /// Adds `weights` as `name`: refuses a name in use or malformed, a full set, an adapter whose
    /// base shape or targets are not this model's, one past the memory budget, and NaN or Inf in A
    /// or B.
    public func add(_ name: String, _ weights: LoRAWeights) throws {
        guard Self.validName(name) else { throw AdapterSetError.badName(name) }
        guard loaded[name] == nil else { throw AdapterSetError.duplicate(name) }
        guard loaded.count < maxAdapters else { throw AdapterSetError.full(maxAdapters) }
        guard weights.model == model else {
            let (a, b) = (weights.model, model)
            throw AdapterSetError.mismatch(
                name,
                """
                made for a \(a.family.rawValue)-family model of \(a.nLayer) layers, d \(a.nEmbd), not this \
                \(b.family.rawValue)-family model of \(b.nLayer) layers, d \(b.nEmbd)
                """
            )
        }
        do { try weights.config.validate(for: model) } catch {
            throw AdapterSetError.mismatch(name, "\(error)")
        }
        let loadedBytes = loadedBytes
        guard loadedBytes + weights.bytes <= memoryBudget else {
            throw AdapterSetError.memory(name, bytes: weights.bytes, loaded: loadedBytes, budget: memoryBudget)
        }
        if let t = weights.firstNonFinite { throw AdapterSetError.nonFinite(name, t) }
        loaded[name] = weights
        names.append(name)
    }

    /// Removes adapter `name`; an assignment naming it goes back to the base.
    public func remove(_ name: String) throws {
        guard loaded.removeValue(forKey: name) != nil else { throw AdapterSetError.unknown(name) }
        names.removeAll { $0 == name }
        if assignment.names.contains(name) { assignment = .all(nil) }
    }

    /// The rows of the next passes; every adapter it names must be loaded.
    public func assign(_ a: RowAssignment) throws {
        if let n = a.names.first(where: { loaded[$0] == nil }) { throw AdapterSetError.unknown(n) }
        assignment = a
    }

    /// 1 to 64 of letters, digits, '-', '_', '.'.
    public static func validName(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 64
            && s.unicodeScalars.allSatisfy {
                $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "-_.".contains(Character($0)))
            }
    }

    /// One delta on block `l`'s op, for every target of the family on that op.
    func deltas(layer l: Int, op: BlockLinears.Op, of lin: Linear, layout: TPLayout) -> [any LinearDelta] {
        let places = LoRATarget.available(in: model.family).filter { $0.op == op }.map {
            $0.placement(on: lin, layout: layout, model: model)
        }
        return places.isEmpty ? [] : [MultiLoRADelta(set: self, layer: l, places: places)]
    }

    /// Calls `body` with each adapted group of a pass of `rows` rows.
    fileprivate func forEachGroup(rows: Int, _ body: (LoRAWeights, Range<Int>) -> Void) {
        for g in assignment.adapted(rows: rows) { body(loaded[g.name]!, g.rows) }
    }

    /// Scratch for u [n, r].
    fileprivate func scratch(_ n: Int, _ r: Int) -> Mat {
        if u.count < n * r { u = FloatArena(count: n * r) }
        return Mat(u.base, n, r)
    }
}

/// Where a target's slice sits on a rank's op (`LoRATarget.placement`).
struct LoRAPlacement {
    let target: LoRATarget
    /// A's columns (this rank's inputs of a row-parallel op, else all) and B's rows (its outputs
    /// of a column-parallel op, else all).
    let inputs: Range<Int>, outputs: Range<Int>
    /// The first of the op's local output columns it adds into.
    let column: Int
}

extension LoRATarget {
    /// This target's slice on `lin` (block op `op`, built on this rank of `layout`): column-parallel
    /// ops take all of A and B's rows for this rank's outputs; row-parallel ones A's columns for this
    /// rank's inputs and all of B.
    func placement(on lin: Linear, layout: TPLayout, model: GPTConfig) -> LoRAPlacement {
        let inputs = lin.kind == .row ? lin.inOffset..<(lin.inOffset + lin.inLocal) : 0..<inDim(model)
        let outputs: Range<Int>
        switch self {
        case _ where lin.kind == .row: outputs = 0..<outDim(model)
        case .k, .v: outputs = layout.kvDimRange
        case .mlpIn, .gate, .up: outputs = layout.ffnRange
        default: outputs = layout.dimRange
        }
        return LoRAPlacement(target: self, inputs: inputs, outputs: outputs, column: column(in: layout))
    }
}

/// A block op's LoRA on behalf of every adapter of a `MultiLoRASet`: per group of rows sharing an
/// adapter, per target of the op that adapter adapts, y[rows, target's columns] += s·(x[rows]·A'ᵀ)·B'ᵀ.
struct MultiLoRADelta: LinearDelta {
    let set: MultiLoRASet
    let layer: Int
    let places: [LoRAPlacement]

    func forward(x: Mat, y: Mat, _ pass: DeltaPass) {
        set.forEachGroup(rows: x.rows) { weights, rows in
            let xg = Mat(x.base + rows.lowerBound * x.ld, rows.count, x.cols, ld: x.ld)
            let yg = Mat(y.base + rows.lowerBound * y.ld, rows.count, y.cols, ld: y.ld)
            for p in places {
                guard let si = weights.slotIndex(layer: layer, target: p.target) else { continue }
                let slice = weights.slice(si, inputs: p.inputs, outputs: p.outputs, grad: nil)
                slice.forward(
                    x: xg, y: yg.columns(p.column, p.outputs.count), u: set.scratch(rows.count, slice.rank))
            }
        }
    }

    func backward(x: Mat, dy: Mat, dx: Mat?, _ pass: DeltaPass) {
        preconditionFailure(AdapterSetError.inferenceOnly("a backward pass").description)
    }

    func merge(into w: Mat, sign: Float) {
        preconditionFailure(AdapterSetError.inferenceOnly("a merge").description)
    }
}

extension Trainable {
    /// The adapters a serving model holds, when it was built with `.multiLoRA(maxAdapters:)`.
    public var multiLoRA: MultiLoRASet? {
        if case .deltas(let d) = self { return d as? MultiLoRASet } else { return nil }
    }
}

extension Trainable.Spec {
    /// Up to `maxAdapters` LoRA adapters of `memoryBudget` bytes in all served side by side,
    /// unmerged (`MultiLoRASet`).
    public static func multiLoRA(maxAdapters: Int, memoryBudget: Int = MultiLoRASet.defaultMemoryBudget) -> Self {
        .deltas(MultiLoRASpec(maxAdapters: maxAdapters, memoryBudget: memoryBudget).deltaSpec)
    }
}

extension LoRAWeights {
    /// The first tensor holding NaN or Inf ("layer L TARGET A" or "... B"), nil when all are finite.
    public var firstNonFinite: String? {
        for s in slots {
            for (what, off, count) in [("A", s.a, s.rank * s.inDim), ("B", s.b, s.outDim * s.rank)] {
                let p = ptr(off)
                if !(0..<count).allSatisfy({ p[$0].isFinite }) {
                    return "layer \(s.layer) \(s.target.rawValue) \(what)"
                }
            }
        }
        return nil
    }

    /// Bytes of its weights: A and B of every slot, fp32.
    public var bytes: Int { count * MemoryLayout<Float>.size }
}

extension GPTModel {
    /// The model's served adapters (its trainable's), if it was built to serve several.
    public var multiLoRA: MultiLoRASet? { trainable?.multiLoRA }
}
