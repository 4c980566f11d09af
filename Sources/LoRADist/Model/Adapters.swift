import Foundation

/// The adapter baselines LoRA is compared with. Houlsby et al. (2019) put one adapter after the
/// attention sublayer and one after the MLP; Lin et al. (2020) one after the MLP, with its own
/// LayerNorm. Each is h ← h + gelu(h'·W_down + b_down)·W_up + b_up with h' = h (Houlsby) or LN(h) (Lin).
public enum AdapterKind: String, Codable, Sendable, CaseIterable {
    case houlsby = "adapter-h"
    case lin = "adapter-l"
}

/// Where an adapter lives on a tensor-parallel model (the collectives each adds: docs/ARCHITECTURE.md):
/// - replicated: every rank stores and runs all of it; no collective, p× storage;
/// - sharded: W_down column-parallel, W_up row-parallel; +1 AllReduce per adapter forward (and backward);
/// - owner: stored on TP rank 0 only, which computes the adapter and Broadcasts its output.
public enum AdapterPlacement: String, Codable, Sendable, CaseIterable {
    case replicated, sharded, owner
}

public struct AdapterConfig: Codable, Equatable, Sendable {
    public var kind: AdapterKind = .houlsby
    public var bottleneck = 16
    public var placement: AdapterPlacement = .replicated

    public init(kind: AdapterKind = .houlsby, bottleneck: Int = 16, placement: AdapterPlacement = .replicated) {
        self.kind = kind
        self.bottleneck = bottleneck
        self.placement = placement
    }

    public func validate(for c: GPTConfig, tp: Int) throws {
        guard bottleneck >= 1 else {
            throw ModelError.invalidConfig("--bottleneck must be at least 1 (got \(bottleneck))")
        }
        if placement == .sharded && bottleneck % tp != 0 {
            throw ModelError.invalidParallel(
                "--tp \(tp) does not divide the adapter bottleneck \(bottleneck) (sharded placement)")
        }
    }

    /// Adapters per block: Houlsby after attention and after the MLP, Lin after the MLP only.
    public var positions: [AdapterPosition] { kind == .houlsby ? [.attention, .mlp] : [.mlp] }
}

public enum AdapterPosition: Int, Codable, Sendable {
    case attention = 0
    case mlp = 1
}

/// One adapter's tensors on this rank: wd [d, ml], bd [ml], wu [ml, d], bu [d], and for Lin a
/// LayerNorm lnw, lnb [d]. ml = m/p when sharded, else m; `stored` is false on non-owner ranks.
public struct AdapterSlot: Sendable {
    public let layer: Int
    public let position: AdapterPosition
    public let wd: Int, bd: Int, wu: Int, bu: Int, lnw: Int, lnb: Int
}

/// This rank's adapter parameters in one arena (empty on non-owner ranks with `owner` placement).
/// Values are drawn per global element index from a hash, so every placement holds the same numbers.
public final class AdapterWeights {
    public let config: AdapterConfig
    public let model: GPTConfig
    public let layout: TPLayout
    public let localWidth: Int
    public let stored: Bool
    public let slots: [AdapterSlot]
    public let arena: FloatArena

    public init(config: AdapterConfig, layout: TPLayout) {
        self.config = config
        self.layout = layout
        model = layout.config
        let d = model.nEmbd
        localWidth = config.placement == .sharded ? config.bottleneck / layout.degree : config.bottleneck
        stored = config.placement != .owner || layout.rank == 0
        var p = ArenaPlanner()
        var slots: [AdapterSlot] = []
        if stored {
            for l in 0..<model.nLayer {
                for pos in config.positions {
                    let ml = localWidth
                    let lin = config.kind == .lin
                    slots.append(
                        AdapterSlot(
                            layer: l, position: pos, wd: p.take(d * ml), bd: p.take(ml), wu: p.take(ml * d),
                            bu: p.take(d), lnw: lin ? p.take(d) : -1, lnb: lin ? p.take(d) : -1))
                }
            }
        }
        self.slots = slots
        arena = FloatArena(count: p.total)
    }

    /// Trainable parameters of the whole model's adapters (all ranks together, stored once).
    public var globalCount: Int {
        let d = model.nEmbd
        let m = config.bottleneck
        let per = d * m + m + m * d + d + (config.kind == .lin ? 2 * d : 0)
        return per * model.nLayer * config.positions.count
    }

    @inline(__always) public func ptr(_ offset: Int) -> UnsafeMutablePointer<Float> { arena.base + offset }

    public func slot(layer: Int, position: AdapterPosition) -> Int? {
        guard stored else { return nil }
        return layer * config.positions.count + (config.positions.firstIndex(of: position) ?? 0)
    }

    /// W_down ~ N(0, 0.02²) by global index, biases 0, W_up = 0 (the adapter starts as identity),
    /// LayerNorm 1 / 0.
    public func initialize(seed: UInt64) {
        arena.zero()
        let d = model.nEmbd
        let m = config.bottleneck
        let ml = localWidth
        let col0 = config.placement == .sharded ? layout.rank * ml : 0
        for s in slots {
            let wd = ptr(s.wd)
            let id = UInt64(s.layer * 2 + s.position.rawValue)
            for r in 0..<d {
                for c in 0..<ml {
                    wd[r * ml + c] = hashNormal(seed, stream: id, index: UInt64(r * m + col0 + c), std: 0.02)
                }
            }
            if s.lnw >= 0 { ptr(s.lnw).update(repeating: 1, count: d) }
        }
    }
}
