import SpliceArchitectures
import SpliceDaemon
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceHarness
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
import Foundation

/// The non-stop engine against the rendezvous on the same action: apply and revert of
/// payload 02 (one function) on a LiveMachine whose vCPUs run the workload, timed from the
/// request to the action's end. With the stop engine every vCPU is held for the whole
/// write; with the non-stop engine no vCPU is held, and each only passes its safe point
/// for the syncs.
public enum EngineBenchmark {
    public struct Row: Codable, Sendable {
        public var architecture: String
        public var vcpus: Int
        public var engine: PatchEngineKind
        public var repeats: Int
        public var applyMedianMicroseconds: Double
        public var revertMedianMicroseconds: Double
        /// Stop engine: how long all vCPUs were held (interrupts off to written) per apply.
        public var heldMedianMicroseconds: Double?
        /// Non-stop engine: syncs per apply + revert.
        public var syncsPerCycle: Double?
    }

    public static func run(samples: String, counts: [Int] = [1, 4], repeats: Int = 60) throws -> [Row] {
        var rows: [Row] = []
        for isa in Architectures.backends.map(\.architecture.name) {
            for n in counts {
                for engine in PatchEngineKind.allCases {
                    let live = try LiveMachine(configuration: .init(
                        image: samples + "/" + Samples.kernel(isa: isa), cpus: n, engine: engine,
                        rendezvousTimeoutMicroseconds: 2_000_000))
                    defer { live.shutdown() }
                    try live.upload(id: "p02", bytes: try Samples.payload(
                        original: "02-scaled-plus-two", patched: "02-scaled-plus-two", isa: isa, target: live.image.elf,
                        backend: live.patcher.backend, directory: samples).bytes)
                    try live.perform(.check, id: "p02")
                    var apply: [Double] = [], revert: [Double] = [], held: [Double] = []
                    let syncsBefore = live.nonStop?.totals.syncs ?? 0
                    for _ in 0..<repeats {
                        var t = DispatchTime.now().uptimeNanoseconds
                        try live.perform(.apply, id: "p02")
                        apply.append(Double(DispatchTime.now().uptimeNanoseconds - t) / 1000)
                        if engine == .stop {
                            let trace = live.lastRendezvous
                            held.append(Double(trace.written - trace.allArrived) / 1000)
                        }
                        t = DispatchTime.now().uptimeNanoseconds
                        try live.perform(.revert, id: "p02")
                        revert.append(Double(DispatchTime.now().uptimeNanoseconds - t) / 1000)
                    }
                    _ = try live.checkWorkload(expect: LinearResult("3x+1"))
                    rows.append(Row(architecture: live.machine.architecture.name, vcpus: n, engine: engine, repeats: repeats,
                                    applyMedianMicroseconds: RendezvousBenchmark.median(apply),
                                    revertMedianMicroseconds: RendezvousBenchmark.median(revert),
                                    heldMedianMicroseconds: engine == .stop ? RendezvousBenchmark.median(held) : nil,
                                    syncsPerCycle: live.nonStop.map { Double($0.totals.syncs - syncsBefore) / Double(repeats) }))
                }
            }
        }
        return rows
    }
}
