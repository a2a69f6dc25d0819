import SpliceArchitectures
import SpliceDaemon
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
import Foundation

/// `splice stress`: N vCPUs run the sample workload while a payload and a cumulative
/// replacement are applied, reverted and replaced through the rendezvous, over and over.
/// After every cycle, inside a rendezvous (every vCPU parked at its safe point with its
/// records complete), each vCPU's last records are checked: scaled(x) and
/// apply_unary(0, x) must be the old (3x+1) or the new (3x+2) value.
///
/// With the non-stop engine the same cycle goes through `NonStopEngine`: nothing stops the
/// vCPUs together while patching (the check after the cycle still parks them, to read
/// complete records).
public enum StressRun {

    public struct Report: Codable, Sendable {
        public var architecture: String
        public var vcpus: Int
        public var cycles: Int
        public var engine: PatchEngineKind
        public var applies = 0, reverts = 0, replaces = 0, rendezvous = 0
        /// Non-stop engine: syncs made, grace periods waited, vCPUs sent on from an armed
        /// trap, and vCPUs that hit a trap already taken back (re-translated, ran on).
        public var syncs = 0, gracePeriods = 0, trapsTaken = 0, staleTraps = 0
        public var recordsChecked = 0, wrongResults = 0, faults = 0
        public var iterations: UInt64 = 0
        public var textIdenticalAtEnd = false
        public var seconds = 0.0
    }

    public static func run(samples: String, isa: String, vcpus: Int, cycles: Int, engine: PatchEngineKind = .stop) throws -> Report {
        let live = try LiveMachine(configuration: .init(
            image: samples + "/" + Samples.kernel(isa: isa), cpus: vcpus, engine: engine,
            rendezvousTimeoutMicroseconds: 5_000_000))
        defer { live.shutdown() }
        let elf = live.image.elf, loader = live.loader, runner = live.runner
        func payload(_ orig: String, _ patched: String, _ name: String) throws -> Payload {
            try Payload(bytes: try Samples.payload(original: orig, patched: patched, isa: isa, target: elf,
                                                   backend: live.patcher.backend, directory: samples).bytes, name: name)
        }
        let p02 = try loader.load(try payload("02-scaled-plus-two", "02-scaled-plus-two", "02"))
        let cumulative = try loader.load(try payload("01-greeting-len-fix", "04-scaled-twice-stacked", "cumulative"))
        let text = try live.executableText()
        // Every ring full before the first check, so that each check reads a whole ring of
        // every vCPU (a vCPU slow to start would otherwise give fewer records).
        let deadline = Date(timeIntervalSinceNow: 30)
        while try live.status(records: 0).vcpus.contains(where: { $0.iterations < UInt64(LiveMachine.ringSlots) }) {
            guard Date() < deadline else { throw LiveMachineError.badConfiguration("the workload did not fill its rings in 30 s") }
            Thread.sleep(forTimeInterval: 0.001)
        }
        var report = Report(architecture: live.machine.architecture.name, vcpus: vcpus, cycles: cycles, engine: engine)
        let start = DispatchTime.now().uptimeNanoseconds
        func validate() throws {
            // Read inside a rendezvous: every vCPU parked, its records complete.
            for v in try live.status(records: LiveMachine.ringSlots).vcpus {
                for r in v.records {
                    for y in r.results {
                        report.recordsChecked += 1
                        if y != 3 * r.x + 1 && y != 3 * r.x + 2 { report.wrongResults += 1 }
                    }
                }
            }
        }
        for _ in 0..<cycles {
            try loader.apply(p02); report.applies += 1
            try loader.revert(p02); report.reverts += 1
            try loader.replace(with: cumulative); report.replaces += 1
            try loader.replace(with: p02); report.replaces += 1
            try loader.revert(p02); report.reverts += 1
            try validate()
        }
        report.syncs = live.nonStop?.totals.syncs ?? 0
        report.gracePeriods = live.nonStop?.totals.grace ?? 0
        report.seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        report.rendezvous = runner.rendezvous.completed
        report.trapsTaken = runner.trapsTaken
        report.staleTraps = runner.staleTraps
        let end = try live.status(records: 0)
        runner.stop()
        for v in end.vcpus {
            if v.state == .faulted { report.faults += 1 }
            report.iterations += v.iterations
        }
        report.textIdenticalAtEnd = try live.executableText() == text
        return report
    }
}
