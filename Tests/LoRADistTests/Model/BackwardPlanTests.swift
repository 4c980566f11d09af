import XCTest

@testable import LoRADist

/// The backward plan alone: the order of the stages, the lowest stage of each method and target,
/// and the steps with their collectives for small models. `CollectiveSiteTests` checks the plan's
/// calls against what a step issues.
final class BackwardPlanTests: XCTestCase {
    typealias Step = BackwardPlan.Step

    func testStagesAreOrderedFromTheEmbeddingsToTheHead() {
        let bottomUp: [Stage] =
            [.embeddings] + (0..<2).flatMap { l in BlockStage.allCases.map { Stage.block(l, $0) } }
            + [.finalNorm, .head]
        XCTAssertEqual(bottomUp.count, 1 + 6 * 2 + 2)
        XCTAssertEqual(bottomUp.shuffled().sorted(), bottomUp)
        XCTAssertLessThan(Stage.block(0, .adapterAfterMLP), .block(1, .attentionInput), "block 0 lies below block 1")
        XCTAssertLessThan(Stage.block(40, .adapterAfterMLP), .finalNorm)
    }

    func testTheLowestStageOfEachMethodAndTarget() {
        let cfg = Fixtures.tiny
        func lowest(_ method: Method, _ targets: [LoRATarget]? = nil, _ adapters: AdapterConfig? = nil) -> Stage {
            BackwardPlan(
                config: cfg, method: method, lora: targets.map { LoRAConfig(rank: 2, alpha: 4, targets: $0) },
                adapters: adapters
            ).lowest
        }
        let want: [(LoRATarget, BlockStage)] = [
            (.q, .attentionInput), (.k, .attentionInput), (.v, .attentionInput), (.o, .attentionOutput),
            (.mlpIn, .mlpInput), (.gate, .mlpInput), (.up, .mlpInput), (.mlpOut, .mlpOutput), (.down, .mlpOutput)
        ]
        XCTAssertEqual(Set(want.map(\.0)), Set(LoRATarget.allCases))
        for (target, stage) in want { XCTAssertEqual(lowest(.lora, [target]), .block(0, stage), "\(target)") }
        XCTAssertEqual(lowest(.lora, [.mlpOut, .v]), .block(0, .attentionInput), "the lowest of several targets")
        XCTAssertEqual(lowest(.lora, [.down, .o]), .block(0, .attentionOutput))
        XCTAssertEqual(lowest(.lora, []), .head, "nothing trains")
        XCTAssertEqual(lowest(.lora), .head)
        XCTAssertEqual(lowest(.full), .embeddings)
        XCTAssertEqual(lowest(.bitfit), .embeddings, "block 0's ln_1 β lies below its attention input")
        let houlsby = AdapterConfig(kind: .houlsby, bottleneck: 4, placement: .sharded)
        let lin = AdapterConfig(kind: .lin, bottleneck: 4, placement: .owner)
        XCTAssertEqual(lowest(.adapterH, nil, houlsby), .block(0, .adapterAfterAttention))
        XCTAssertEqual(lowest(.adapterL, nil, lin), .block(0, .adapterAfterMLP))
        XCTAssertEqual(lowest(.adapterH), .head)
        XCTAssertEqual(
            lowest(.lora, [.o], houlsby), .block(0, .attentionOutput),
            "adapters count under an adapter method only")
        let o = LoRAConfig(rank: 2, alpha: 4, targets: [.o])
        XCTAssertEqual(
            BackwardPlan(config: cfg, method: .lora, lora: o, adapters: houlsby),
            BackwardPlan(config: cfg, method: .lora, lora: o, adapters: nil))
    }

    func testTheStepsOfSmallModels() {
        var cfg = Fixtures.tiny
        cfg.nLayer = 2
        let f = { (site: Site) in BackwardPlan.Call(op: .allReduce, site: site) }
        func step(_ stage: Stage, _ below: Bool = true, _ call: BackwardPlan.Call? = nil) -> Step {
            Step(stage: stage, inputGradient: below, call: call)
        }
        func block(_ l: Int, _ part: BlockStage) -> Stage { .block(l, part) }
        func steps(_ method: Method, _ targets: [LoRATarget] = [], _ adapters: AdapterConfig? = nil) -> [Step] {
            let lora = LoRAConfig(rank: 2, alpha: 4, targets: targets)
            return BackwardPlan(config: cfg, method: method, lora: lora, adapters: adapters).steps
        }
        // A block whose every stage computes its input gradient (no adapters).
        func through(_ l: Int) -> [Step] {
            [
                step(block(l, .mlpOutput)), step(block(l, .mlpInput), true, f(.mlpInGrad)),
                step(block(l, .attentionOutput)), step(block(l, .attentionInput), true, f(.attnInGrad))
            ]
        }
        let top = [step(.head, true, f(.headInGrad)), step(.finalNorm)]

        // LoRA on q and v: down to block 0's attention input, whose input gradient nothing needs.
        XCTAssertEqual(
            steps(.lora, [.q, .v]),
            top + through(1) + [
                step(block(0, .mlpOutput)), step(block(0, .mlpInput), true, f(.mlpInGrad)),
                step(block(0, .attentionOutput)), step(block(0, .attentionInput), false)
            ])
        // LoRA on mlp_out: block 0 stops at its MLP output.
        XCTAssertEqual(steps(.lora, [.mlpOut]), top + through(1) + [step(block(0, .mlpOutput), false)])
        // Nothing trains: the head runs (its input gradient unneeded) and backward stops.
        XCTAssertEqual(steps(.lora), [step(.head, false)])
        // Full fine-tuning: every stage, down to the embeddings.
        XCTAssertEqual(steps(.full), top + through(1) + through(0) + [step(.embeddings, false)])
        XCTAssertEqual(steps(.bitfit), steps(.full))

        // Houlsby adapters, owner-placed: a Broadcast of each needed input gradient; block 0's
        // adapter after attention is the lowest stage and sends nothing.
        let owner = AdapterConfig(kind: .houlsby, bottleneck: 4, placement: .owner)
        let broadcast = BackwardPlan.Call(op: .broadcast, site: .adapterOwner)
        XCTAssertEqual(
            steps(.adapterH, [], owner),
            top + [
                step(block(1, .adapterAfterMLP), true, broadcast), step(block(1, .mlpOutput)),
                step(block(1, .mlpInput), true, f(.mlpInGrad)), step(block(1, .adapterAfterAttention), true, broadcast),
                step(block(1, .attentionOutput)), step(block(1, .attentionInput), true, f(.attnInGrad)),
                step(block(0, .adapterAfterMLP), true, broadcast), step(block(0, .mlpOutput)),
                step(block(0, .mlpInput), true, f(.mlpInGrad)), step(block(0, .adapterAfterAttention), false)
            ])
        // Lin's sharded adapter after the MLP needs its down-projection's f even at the lowest stage
        // (its LayerNorm's gradients); replicated ones issue nothing.
        let lin = AdapterConfig(kind: .lin, bottleneck: 4, placement: .sharded)
        XCTAssertEqual(
            steps(.adapterL, [], lin).suffix(2),
            [
                step(block(1, .attentionInput), true, f(.attnInGrad)),
                step(block(0, .adapterAfterMLP), false, f(.adapterInGrad))
            ])
        let replicated = AdapterConfig(kind: .lin, bottleneck: 4, placement: .replicated)
        XCTAssertEqual(steps(.adapterL, [], replicated).last, step(block(0, .adapterAfterMLP), false))
        let houlsby = AdapterConfig(kind: .houlsby, bottleneck: 4, placement: .sharded)
        XCTAssertEqual(
            steps(.adapterH, [], houlsby).last, step(block(0, .adapterAfterAttention), false),
            "Houlsby's f only when its input gradient is needed")
    }

    /// The model holds the plan of its trainable and asks it whether the head's input gradient is needed.
    func testTheModelReadsItsPlan() throws {
        let lora = LoRAConfig(rank: 2, alpha: 4, targets: [.o])
        let models = try InProcessCommunicator.run(ranks: 1) { comm in
            try [Trainable.Spec.lora(lora), nil].map { spec in
                try Fixtures.randomModel(Fixtures.tiny, comm, trainable: spec, baseSeed: 1)
            }
        }[0]
        let plan = BackwardPlan(config: Fixtures.tiny, method: .lora, lora: lora, adapters: nil)
        XCTAssertEqual(models[0].backwardPlan, plan)
        XCTAssertTrue(models[0].headNeedsInputGradient)
        XCTAssertEqual(models[1].backwardPlan.lowest, .head, "a model without a trainable trains nothing")
        XCTAssertFalse(models[1].headNeedsInputGradient)
    }
}
