import SpliceArchitectures
import SpliceBytes
import SpliceDaemon
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
import Crypto
import Foundation

/// `splice soak`: N vCPUs run the sample workload while a long random mix of upload /
/// check / apply / revert / replace / unload goes through the payload life cycle for a
/// given time. After every action the newest records of every vCPU (read with all of them
/// parked) must each be the old (3x+1) or the new (3x+2) result; every so often, once the
/// machine has settled, all of them must be the one the applied payloads call for. At the
/// end everything is reverted and unloaded and the text's SHA-256 must be the pristine one.
public enum SoakRun {
    public struct Report: Codable, Sendable {
        public var architecture: String
        public var vcpus: Int
        public var engine: PatchEngineKind
        public var seed: UInt64
        public var seconds = 0.0
        /// Per action: how often it was done, and how often the state refused it (as
        /// it must, e.g. revert of a payload that is not applied).
        public var done: [String: Int] = [:]
        public var refused: [String: Int] = [:]
        /// Actions that failed for any other reason (a rendezvous or sync timeout).
        public var failed: [String: Int] = [:]
        public var failures: [String] = []
        public var recordsChecked = 0, wrongResults = 0, settledChecks = 0, faults = 0
        public var iterations: UInt64 = 0
        public var rendezvous = 0
        public var pristineHash = "", finalHash = ""
        public var passed: Bool { wrongResults == 0 && faults == 0 && failed.isEmpty && pristineHash == finalHash }
    }

    /// The payloads in the mix: what each does to scaled(x) (and so to the workload).
    static let pool: [(id: String, original: String, patched: String, scaledPlusTwo: Bool)] = [
        ("p02", "02-scaled-plus-two", "02-scaled-plus-two", true),
        ("cumulative", "01-greeting-len-fix", "04-scaled-twice-stacked", true),
        ("p03", "03-greeting-sum-helper", "03-greeting-sum-helper", false),
        ("hooks", "05-hooks", "05-hooks", false),
        ("shadow", "06-shadow-write-count", "06-shadow-write-count", false),
    ]

    public static func run(samples: String, isa: String, vcpus: Int, seconds: Double, engine: PatchEngineKind = .stop,
                           seed: UInt64 = 1, progress: (String) -> Void = { _ in }) throws -> Report {
        let live = try LiveMachine(configuration: .init(
            image: samples + "/" + Samples.kernel(isa: isa), cpus: vcpus, engine: engine,
            rendezvousTimeoutMicroseconds: 5_000_000))
        defer { live.shutdown() }
        var report = Report(architecture: live.machine.architecture.name, vcpus: vcpus, engine: engine, seed: seed)
        func hash() throws -> String {
            var h = SHA256()
            for r in try live.executableText() { h.update(data: r.bytes) }
            return Array(h.finalize()).hexDigits
        }
        report.pristineHash = try hash()
        var bytes: [String: [UInt8]] = [:]
        for p in pool {
            bytes[p.id] = try Samples.payload(original: p.original, patched: p.patched, isa: isa, target: live.image.elf,
                                              backend: live.patcher.backend, directory: samples).bytes
        }
        var rng = SplitMix64(seed: seed)
        let start = Date()
        var lastProgress = start
        var actions = 0
        while Date().timeIntervalSince(start) < seconds {
            let p = pool[Int(rng.next() % UInt64(pool.count))]
            // Mostly what the payload's state allows, sometimes anything (which the state
            // must then refuse, changing nothing).
            let verbs = ["upload", "check", "apply", "revert", "replace", "unload"]
            let allowed: [String]
            switch (try? live.get(p.id))?.state {
            case nil: allowed = ["upload"]
            case .loaded?: allowed = ["check", "unload"]
            case .checked?, .reverted?: allowed = ["apply", "replace", "unload"]
            default: allowed = ["revert"]
            }
            let choices = rng.next() % 5 == 0 ? verbs : allowed
            let verb = choices[Int(rng.next() % UInt64(choices.count))]
            do {
                if verb == "upload" {
                    try live.upload(id: p.id, bytes: bytes[p.id]!)
                } else {
                    try live.perform(LivePatchService.Action(rawValue: verb)!, id: p.id)
                }
                report.done[verb, default: 0] += 1
            } catch let f as LivePatchServiceError {
                switch f {
                case .invalidTransition, .noSuchPayload, .exists: report.refused[verb, default: 0] += 1
                case let .actionFailed(_, _, _, reason) where reason.contains("has a newer redirect"):
                    report.refused[verb, default: 0] += 1 // revert under a stacked payload
                default:
                    report.failed[verb, default: 0] += 1
                    if report.failures.count < 10 { report.failures.append("\(verb) \(p.id): \(f)") }
                }
            } catch {
                report.failed[verb, default: 0] += 1
                if report.failures.count < 10 { report.failures.append("\(verb) \(p.id): \(error)") }
            }
            actions += 1
            // Every record any vCPU wrote lately: old or new, nothing else.
            for v in try live.status(records: LiveMachine.ringSlots).vcpus {
                if v.state != .running { report.faults += 1 }
                for r in v.records {
                    for y in r.results {
                        report.recordsChecked += 1
                        if y != 3 * r.x + 1 && y != 3 * r.x + 2 { report.wrongResults += 1 }
                    }
                }
            }
            if report.faults > 0 { break }
            // Settled: what the applied payloads say scaled must give, on every vCPU.
            if actions % 25 == 0 {
                let applied = Set(live.list(start: 0, count: 64).statuses.filter { $0.state == .applied }.map(\.id))
                let plusTwo = pool.contains { applied.contains($0.id) && $0.scaledPlusTwo }
                do {
                    _ = try live.checkWorkload(expect: LinearResult(plusTwo ? "3x+2" : "3x+1"))
                    report.settledChecks += 1
                } catch {
                    report.wrongResults += 1
                    if report.failures.count < 10 { report.failures.append("settled check with \(applied.sorted()): \(error)") }
                }
            }
            if Date().timeIntervalSince(lastProgress) >= 10 {
                lastProgress = Date()
                progress(String(format: "%.0f s: %d actions, %d records checked, %d wrong", Date().timeIntervalSince(start),
                                actions, report.recordsChecked, report.wrongResults))
            }
        }
        // Take everything out: reverts newest first (a stacked payload first), then unloads.
        for _ in 0..<pool.count {
            for s in live.list(start: 0, count: 64).statuses.reversed() where s.state == .applied {
                try? live.perform(.revert, id: s.id)
            }
        }
        for s in live.list(start: 0, count: 64).statuses { try live.perform(.unload, id: s.id) }
        report.seconds = Date().timeIntervalSince(start)
        report.rendezvous = live.runner.rendezvous.completed
        let end = try live.status(records: 0)
        report.iterations = end.vcpus.reduce(0) { $0 + $1.iterations }
        report.faults += end.vcpus.filter { $0.state != .running }.count
        report.finalHash = try hash()
        return report
    }
}

/// A small seeded generator (SplitMix64): the same seed gives the same sequence, so a
/// soak's mix of actions, or a test's corruptions, can be reproduced.
public struct SplitMix64: Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
