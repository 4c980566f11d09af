import XCTest

@testable import LoRADist

/// The α–β formulas against hand-computed cases, and the fit recovering known parameters.
final class CostModelTests: XCTestCase {
    let link = LinkModel(alpha: 10e-6, beta: 1e-9)  // 10 µs, 1 GB/s

    func testRingAllReduceOfFourRanks() {
        // 2·3·10µs + 2·3/4·1e6 B·1 ns/B = 60 µs + 1.5 ms
        XCTAssertEqual(link.ringAllReduce(bytes: 1e6, ranks: 4), 60e-6 + 1.5e-3, accuracy: 1e-12)
        XCTAssertEqual(link.ringAllReduce(bytes: 1e6, ranks: 1), 0)
    }

    func testTreeAllReduceWinsForSmallMessages() {
        // 8 bytes on 8 ranks: tree 3·(10µs + 8ns) vs ring 14·10µs + …
        XCTAssertEqual(link.treeAllReduce(bytes: 8, ranks: 8), 3 * (10e-6 + 8e-9), accuracy: 1e-15)
        XCTAssertEqual(link.allReduce(bytes: 8, ranks: 8), link.treeAllReduce(bytes: 8, ranks: 8))
        XCTAssertEqual(link.allReduce(bytes: 1e8, ranks: 8), link.ringAllReduce(bytes: 1e8, ranks: 8))
    }

    func testBroadcastAndAllGather() {
        XCTAssertEqual(link.broadcast(bytes: 1000, ranks: 4), 2 * (10e-6 + 1e-6), accuracy: 1e-15)
        XCTAssertEqual(link.allGather(bytesPerRank: 1000, ranks: 4), 3 * (10e-6 + 1e-6), accuracy: 1e-15)
    }

    func testLinkFromGigabits() {
        let l = LinkModel.link(gbit: 10, latencyMicros: 5)
        XCTAssertEqual(l.alpha, 5e-6, accuracy: 1e-15)
        XCTAssertEqual(l.beta, 0.8e-9, accuracy: 1e-18)
    }

    func testFitRecoversAlphaAndBeta() {
        // Timed as `allReduce` prices them: recursive doubling for the small messages, ring for the large.
        let samples = [(8.0, 2), (8.0, 4), (1e6, 2), (1e6, 4), (6.4e7, 4), (3e5, 8)].map { (b, p) in
            (bytes: b, ranks: p, seconds: link.allReduce(bytes: b, ranks: p))
        }
        XCTAssertEqual(link.allReduce(bytes: 8, ranks: 4), link.treeAllReduce(bytes: 8, ranks: 4))
        let fit = LinkModel.fitAllReduce(samples)!
        XCTAssertEqual(fit.alpha, link.alpha, accuracy: 1e-9)
        XCTAssertEqual(fit.beta, link.beta, accuracy: 1e-13)
    }

    func testLoRAParameterCountEqualsTheAllocatedWeights() {
        let tiny = GPTConfig.named("tiny")!
        let all = LoRAConfig(rank: 8, alpha: 16, targets: LoRATarget.available(in: .gpt2))
        // By hand: per layer q,k,v,o 4·8·(128+128) + mlp_in 8·(128+512) + mlp_out 8·(512+128) = 18,432.
        XCTAssertEqual(all.parameterCount(for: tiny), 4 * 18_432)
        XCTAssertEqual(all.parameterCount(for: tiny), LoRAWeights(config: all, model: tiny).count)
        XCTAssertEqual(LoRAConfig().parameterCount(for: tiny), LoRAWeights(config: LoRAConfig(), model: tiny).count)
    }

    func testFullFineTuningMovesTheWholeGradientThroughEachNodesLink() {
        // TP 2 inside nodes, DP 4 across: the two ranks of a node all-reduce their halves at once
        // through one link, so the link carries 4·|Φ| bytes: ring over 4 nodes = 6α + 1.5·4|Φ|·β.
        let tiny = GPTConfig.named("tiny")!
        let m = StepCostModel(
            config: tiny, seq: 64, batchPerReplica: 2, tp: 2, dp: 4, method: .full,
            flopsPerRank: 1e10, intra: LinkModel(alpha: 0, beta: 0), inter: link)
        let bytes = 4.0 * Double(tiny.parameterCount)
        XCTAssertEqual(m.predict().gradSync, 6 * 10e-6 + 1.5 * bytes * 1e-9, accuracy: 1e-12)
        XCTAssertEqual(m.predict().activation, 0)
    }

    func testFullFineTuningBecomesNetworkBoundWhileLoRAStaysComputeBound() {
        let cfg = GPTConfig.named("gpt2-medium")!
        // Pure data parallelism over 64 nodes on 1 Gb/s at 1 TFLOP/s per node: full fine-tuning
        // all-reduces 4·|Φ| = 1.4 GB a step, LoRA 4·|Θ| = 0.8 MB.
        let slow = LinkModel.link(gbit: 1, latencyMicros: 50)
        func syncShare(_ m: Method) -> Double {
            let p = StepCostModel(
                config: cfg, seq: 1024, batchPerReplica: 8, tp: 1, dp: 64, method: m,
                flopsPerRank: 1e12, intra: slow, inter: slow
            ).predict()
            return p.gradSync / p.total
        }
        XCTAssertGreaterThan(syncShare(.full), 0.5)
        XCTAssertLessThan(syncShare(.lora), 0.01)
    }

    // MARK: calibration on measured runs

    /// Runs as a known cluster would time them: compute at `flops` per core (shared by the ranks
    /// of a 2-core machine) plus the gradient AllReduce priced by the link of each rate.
    func syntheticRuns(links: [String: LinkModel], flops: [Method: Double]) -> [MeasuredRun] {
        let tiny = GPTConfig.named("tiny")!
        var runs: [MeasuredRun] = []
        for (rate, l) in links {
            for hosts in [1, 2, 4] {
                for method in [Method.lora, .full] {
                    let trainable = method == .lora ? 73_728 : tiny.parameterCount
                    let f =
                        FlopCount.trainPerToken(
                            tiny, seq: 168, method: method, loraParams: method == .lora ? trainable : 0) * 1344
                        / Double(hosts)
                    let compute = f / (flops[method]! * min(1, 2 / Double(hosts)))
                    let sync = l.allReduce(bytes: Double(4 * trainable), ranks: hosts)
                    runs.append(
                        MeasuredRun(
                            hosts: hosts, ranksPerHost: 1, world: hosts, tp: 1, dp: hosts, rate: rate, method: method,
                            model: "tiny", seq: 168, tokensPerStep: 1344, secondsPerStep: compute + sync,
                            gradSyncSeconds: sync, activationSeconds: 0, gradBytes: 4 * trainable, trainable: trainable)
                    )
                }
            }
        }
        return runs
    }

    func testCalibrationRecoversAKnownClusterAndPredictsHeldOutRuns() {
        let links = [
            "1gbit": LinkModel.link(gbit: 1, latencyMicros: 50), "100mbit": LinkModel.link(gbit: 0.1, latencyMicros: 80)
        ]
        let runs = syntheticRuns(links: links, flops: [.lora: 20e9, .full: 30e9])
        let cal = Calibration.fit(runs, cores: 2)
        XCTAssertEqual(cal.flopsPerCore[.lora]!, 20e9, accuracy: 1)
        XCTAssertEqual(cal.flopsPerCore[.full]!, 30e9, accuracy: 1)
        for (rate, l) in links {
            XCTAssertEqual(cal.links[rate]!.alpha, l.alpha, accuracy: 1e-9, rate)
            XCTAssertEqual(cal.links[rate]!.beta, l.beta, accuracy: 1e-14, rate)
        }
        let held = Calibration.leaveOneCaseOut(runs, cores: 2)
        XCTAssertEqual(held.count, runs.count)
        for h in held {
            XCTAssertEqual(h.predicted, h.run.secondsPerStep, accuracy: 1e-9 * h.run.secondsPerStep, h.run.key)
        }
    }

    func testMeasuredCSVErrorsNameTheProblem() {
        XCTAssertThrowsError(try MeasuredRun.parseCSV("hosts,world\n1,1\n", source: "x.csv")) {
            XCTAssertTrue("\($0)".contains("no column ranks_per_host"), "\($0)")
        }
        let header =
            """
            rep,hosts,ranks_per_host,world,tp,dp,rate,method,model,steps,tokens_per_step,seconds_per_step,tokens_per_s,\
            grad_sync_s,activation_comm_s,grad_bytes,activation_bytes,peak_rss_mib,trainable,seq
            """
        XCTAssertThrowsError(
            try MeasuredRun.parseCSV(
                header + "\n1,2,1,2,1,2,1gbit,lora,tiny,20,1344,fast,1,0,0,1,0,1,1,168\n", source: "x.csv")
        ) {
            XCTAssertTrue("\($0)".contains("line 2: seconds_per_step is not a number"), "\($0)")
        }
        XCTAssertThrowsError(
            try MeasuredRun.parseCSV(
                header + "\n1,2,1,2,1,2,1gbit,sgd,tiny,20,1344,0.1,1,0,0,1,0,1,1,168\n", source: "x.csv")
        ) {
            XCTAssertTrue("\($0)".contains("unknown method sgd"), "\($0)")
        }
    }

    /// The model against the runs measured on the simulated cluster (docs/scale/scale.csv, written by
    /// `cluster/scale` on a 2-core machine, see README): every case is predicted by a calibration
    /// fitted on the other cases only. Stated tolerance: median |error| under 20 %, and under 30 % for
    /// each case whose ranks do not outnumber the cores; 4 ranks on 2 cores wait on each other in
    /// ways the model does not price (the measured worst is 64 %, LoRA at 100 Mbit on 4 hosts).
    func testModelReproducesMeasuredRunsItWasNotFittedOn() throws {
        let path = Launcher.root.appendingPathComponent("docs/scale/scale.csv").path
        let runs = try MeasuredRun.parseCSV(try String(contentsOfFile: path, encoding: .utf8), source: path)
        let held = Calibration.leaveOneCaseOut(runs, cores: 2)
        XCTAssertEqual(held.count, 12, "2 rates × 3 host counts × 2 methods")
        let errors = held.map { abs($0.predicted - $0.run.secondsPerStep) / $0.run.secondsPerStep }
        XCTAssertLessThan(median(errors), 0.20)
        for (h, e) in zip(held, errors) where h.run.world <= 2 {
            XCTAssertLessThan(e, 0.30, "\(h.run.key): measured \(h.run.secondsPerStep) s, predicted \(h.predicted) s")
        }
    }

    /// A packed pass's FLOPs by hand, on a model of 2 blocks, width 32, 4 heads, ffn 128, vocabulary
    /// 61 (64 padded), LoRA of 100 parameters, sequences of 3 and 5 tokens (8 rows, Σ len² 34):
    /// per row the blocks' GEMMs 2·2·(32·96 + 32·32 + 2·32·128) = 49,152 and the head 2·32·64 = 4,096,
    /// twice for the frozen base's forward and input gradients plus 6 per LoRA parameter: 107,096;
    /// attention 2·2·2·32 = 256 per (query, key) pair, twice: 8 × 107,096 + 2 × 256 × 34 = 874,176
    /// (full fine-tuning: 8 × 3 × 53,248 + 3 × 256 × 34 = 1,304,064). The cost model prices that pass.
    func testAPackedPassCostsItsRowsAndItsSquares() {
        let c = GPTConfig(nLayer: 2, nEmbd: 32, nHead: 4, vocabSize: 61, nPositions: 16)
        XCTAssertEqual(FlopCount.trainPerPass(c, rows: 8, squares: 34, method: .lora, loraParams: 100), 874_176)
        XCTAssertEqual(FlopCount.trainPerPass(c, rows: 8, squares: 34, method: .full), 1_304_064)
        XCTAssertEqual(FlopCount.blocksForwardPerPass(c, rows: 8, squares: 34), 49_152 * 8 + 256 * 34)
        // Rows of one length are what trainPerToken counts.
        XCTAssertEqual(
            FlopCount.trainPerPass(c, rows: 24, squares: 2 * 144, method: .lora, loraParams: 100),
            FlopCount.trainPerToken(c, seq: 12, method: .lora, loraParams: 100) * 24)
        var m = StepCostModel(
            config: c, seq: 5, batchPerReplica: 2, tp: 1, dp: 1, method: .lora, flopsPerRank: 1e9, intra: link,
            inter: link)
        m.trainable = 100
        m.tokensPerReplica = 8
        m.squaresPerReplica = 34
        XCTAssertEqual(m.predict().compute, 874_176 / 1e9, accuracy: 1e-15)
        m.recompute = .blocks
        XCTAssertEqual(m.recomputedBlocks, 1)
        XCTAssertEqual(m.predict().compute, (874_176 + (49_152 * 8 + 256 * 34) / 2) / 1e9, accuracy: 1e-15)
        // Without squares the rows of seq are priced as before, bit for bit.
        m.squaresPerReplica = nil
        m.tokensPerReplica = nil
        var rows = m
        rows.tokensPerReplica = 2 * 5
        XCTAssertEqual(rows.predict().compute, m.predict().compute)
        XCTAssertEqual(rows.predict().activation, m.predict().activation)
    }

    /// Runs that recorded what they computed (a packed run's rows and Σ len²) calibrate on those:
    /// the fit recovers the FLOP/s and each held-out run is predicted exactly; the model of a run
    /// carries its rows and squares per replica, and a run of rows of seq tokens none.
    func testCalibrationReadsAPackedRunsRowsAndSquares() throws {
        let tiny = GPTConfig.named("tiny")!
        let l = LinkModel.link(gbit: 1, latencyMicros: 50)
        var runs: [MeasuredRun] = []
        for hosts in [1, 2, 4] {
            for method in [Method.lora, .full] {
                let trainable = method == .lora ? 73_728 : tiny.parameterCount
                let (rows, squares) = (800, 800 * 70)
                let f =
                    FlopCount.trainPerPass(
                        tiny, rows: rows, squares: squares, method: method,
                        loraParams: method == .lora ? trainable : 0) / Double(hosts)
                let compute = f / ((method == .lora ? 20e9 : 30e9) * min(1, 2 / Double(hosts)))
                let sync = l.allReduce(bytes: Double(4 * trainable), ranks: hosts)
                runs.append(
                    MeasuredRun(
                        hosts: hosts, ranksPerHost: 1, world: hosts, tp: 1, dp: hosts, rate: "1gbit", method: method,
                        model: "tiny", seq: 168, tokensPerStep: 700, secondsPerStep: compute + sync,
                        gradSyncSeconds: sync, activationSeconds: 0, gradBytes: 4 * trainable, trainable: trainable,
                        tokensComputedPerStep: rows, squaresPerStep: squares))
            }
        }
        let cal = Calibration.fit(runs, cores: 2)
        XCTAssertEqual(cal.flopsPerCore[.lora]!, 20e9, accuracy: 1)
        XCTAssertEqual(cal.flopsPerCore[.full]!, 30e9, accuracy: 1)
        let m = try XCTUnwrap(cal.model(for: runs[4]))
        XCTAssertEqual(m.tokensPerReplica, 200)
        XCTAssertEqual(m.squaresPerReplica, 800 * 70 / 4)
        for h in Calibration.leaveOneCaseOut(runs, cores: 2) {
            XCTAssertEqual(h.predicted, h.run.secondsPerStep, accuracy: 1e-6 * h.run.secondsPerStep, h.run.key)
        }
        let header = MeasuredRun.columns.joined(separator: ",") + ",tokens_computed_per_step,attention_squares_per_step"
        let row = "1,1,1,1,1,1gbit,lora,tiny,168,700,0.1,0,0,0,73728"
        let parsed = try MeasuredRun.parseCSV("\(header)\n\(row),800,56000\n\(row),,\n", source: "x.csv")
        XCTAssertEqual(parsed[0].tokensComputedPerStep, 800)
        XCTAssertEqual(parsed[0].squaresPerStep, 56000)
        XCTAssertNil(parsed[1].squaresPerStep)
        var plain = runs[4]
        (plain.tokensPerStep, plain.tokensComputedPerStep, plain.squaresPerStep) = (1344, nil, nil)
        let p = try XCTUnwrap(cal.model(for: plain))
        XCTAssertNil(p.squaresPerReplica)
        XCTAssertEqual(p.passTokens, p.batchPerReplica * p.seq)
    }
}
