import ArgumentParser
import Foundation
import LoRADist

// Out-of-range option values, refused while parsing (before any rank starts) with the option's
// name: counts that must be positive, fractions that must lie in [0, 1), finite numbers.

enum Ranges {
    static func atLeast(_ value: Int?, _ least: Int, _ option: String) throws {
        if let v = value, v < least {
            throw ValidationError(
                least == 0
                    ? "\(option) must not be negative (got \(v))" : "\(option) must be at least \(least) (got \(v))")
        }
    }

    static func positive<F: BinaryFloatingPoint>(_ value: F?, _ option: String) throws {
        if let v = value, !(v > 0 && v.isFinite) {
            throw ValidationError("\(option) must be a positive number (got \(v))")
        }
    }

    static func notNegative<F: BinaryFloatingPoint>(_ value: F?, _ option: String) throws {
        if let v = value, !(v >= 0 && v.isFinite) {
            throw ValidationError("\(option) must be a number, 0 or more (got \(v))")
        }
    }

    static func fraction<F: BinaryFloatingPoint>(_ value: F, _ option: String) throws {
        guard value >= 0 && value < 1 else { throw ValidationError("\(option) must be in [0, 1) (got \(value))") }
    }
}

extension ModelOptions {
    func checkRanges() throws {
        for (v, o) in [
            (layers, "--layers"), (dim, "--dim"), (heads, "--heads"), (context, "--context"), (vocab, "--vocab")
        ] {
            try Ranges.atLeast(v, 1, o)
        }
    }
}

extension LoRAOptions {
    func validate() throws {
        try Ranges.atLeast(rank, 1, "--lora-rank")
        try Ranges.positive(alpha, "--lora-alpha")
        try Ranges.fraction(dropout, "--lora-dropout")
        if let t = targets, t.split(separator: ",").isEmpty { throw ValidationError("--lora-targets names no target") }
    }
}

extension RanksOptions {
    func validate() throws { try Ranges.atLeast(localRanks, 1, "--local-ranks") }
}

extension Generate {
    func validate() throws {
        try Ranges.atLeast(maxTokens, 1, "--max-tokens")
        try Ranges.atLeast(beams, 1, "--beams")
        try Ranges.notNegative(collectiveTimeout, "--collective-timeout")
    }
}

extension EvaluateCommand {
    func checkRanges() throws { try Ranges.atLeast(maxTokens, 1, "--max-tokens") }
}

extension BenchTrain {
    func checkRanges() throws {
        try Ranges.atLeast(batch, 1, "--batch")
        try Ranges.atLeast(seq, 2, "--seq")
        try Ranges.notNegative(peakGflops, "--peak-gflops")
    }
}

extension BenchInference {
    func validate() throws {
        try Ranges.atLeast(bottleneck, 1, "--bottleneck")
        try Ranges.atLeast(reps, 1, "--reps")
        try Ranges.atLeast(warmup, 0, "--warmup")
    }
}

extension BenchGemm {
    func validate() throws {
        try Ranges.atLeast(tiny, 1, "--tiny")
        try Ranges.atLeast(threads, 1, "--threads")
        try Ranges.positive(seconds, "--seconds")
    }
}

extension BenchPredict {
    func validate() throws {
        try Ranges.atLeast(tpPerNode, 1, "--tp-per-node")
        try Ranges.positive(acceleratorFlops, "--accelerator-flops")
        try Ranges.atLeast(cores, 1, "--cores")
    }
}

extension SweepTargets {
    func validate() throws { try Ranges.atLeast(budgetRank, 1, "--budget-rank") }
}

extension DataCommand {
    func validate() throws {
        try Ranges.atLeast(train, 1, "--train")
        try Ranges.atLeast(pretrainBytes, 0, "--pretrain-bytes")
    }
}
