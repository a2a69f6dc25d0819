import Foundation
import SpliceDaemon
import SpliceRuntime

/// The checks the scenarios, soak, stress and tests make of a live machine's workload: every
/// result in the rings is one of the expected linear functions of x.
extension LiveMachine {
    /// Waits until every vCPU has run `milliseconds` and a full ring of new iterations,
    /// then checks each vCPU's 16 newest records (read with all of them parked): both
    /// results must be `expect`. Returns what it saw; throws on the first wrong result, a
    /// vCPU that is not running, or no progress in 30 s.
    public func checkWorkload(expect: Scenario.Linear?, milliseconds: Int = 0) throws -> String {
        try checkWorkload(anyOf: expect.map { [$0] } ?? [], milliseconds: milliseconds)
    }

    /// What a workload check saw that it must not (a wrong result, a vCPU not running, no
    /// progress).
    struct WorkloadMismatch: Error, CustomStringConvertible { let description: String }

    /// `checkWorkload`, each result being one of `anyOf` (empty: not checked).
    public func checkWorkload(anyOf expect: [Scenario.Linear], milliseconds: Int = 0) throws -> String {
        let start = Date()
        let before = try status(records: 0).vcpus.map(\.iterations)
        let ring = UInt64(Self.ringSlots)
        let deadline = Date(timeIntervalSinceNow: 30 + Double(milliseconds) / 1000)
        var now = try status(records: 16)
        while zip(now.vcpus, before).contains(where: { $0.iterations < $1 + ring }) || Date().timeIntervalSince(start) * 1000 < Double(milliseconds) {
            if let stopped = now.vcpus.first(where: { $0.state != "running" }) {
                throw WorkloadMismatch(description: "vCPU \(stopped.index) is \(stopped.state)")
            }
            guard Date() < deadline else { throw WorkloadMismatch(description: "the workload made no progress in 30 s: \(now.vcpus.map(\.state))") }
            Thread.sleep(forTimeInterval: 0.002)
            now = try status(records: 16)
        }
        var matches: [Int] = []
        let checked = try Self.check(now, anyOf: expect, matches: &matches)
        let iterations = zip(now.vcpus, before).map { $0.iterations - $1 }
        return "\(iterations.map(String.init).joined(separator: "+")) iterations; \(checked) results"
            + (expect.isEmpty ? "" : " all " + expect.map(\.description).joined(separator: " or "))
    }

    /// Checks every record of `status`: each result is one of `expect` (empty: any), every
    /// vCPU running. Adds to `matches[i]` the results that were `expect[i]` (the first that
    /// fits) and returns how many results it checked.
    static func check(_ status: Status, anyOf expect: [Scenario.Linear], matches: inout [Int]) throws -> Int {
        if matches.count < expect.count { matches += Array(repeating: 0, count: expect.count - matches.count) }
        var checked = 0
        for v in status.vcpus {
            guard v.state == "running" else { throw WorkloadMismatch(description: "vCPU \(v.index) is \(v.state)") }
            for r in v.records {
                for y in r.results {
                    checked += 1
                    guard !expect.isEmpty else { continue }
                    guard let i = expect.firstIndex(where: { y == $0.a * r.x + $0.b }) else {
                        throw WorkloadMismatch(description: "vCPU \(v.index): x=\(r.x) gave \(y), expected "
                                    + expect.map { "\($0) = \($0.a * r.x + $0.b)" }.joined(separator: " or "))
                    }
                    matches[i] += 1
                }
            }
        }
        return checked
    }

    /// Applies and reverts payload `id` `cycles` times (each a full action) while the
    /// workload runs; after each action reads every vCPU's whole ring, which spans the
    /// action, and checks each result is one of `expect`, and that each of `expect` occurs.
    /// Returns what it checked.
    public func hammer(id: String, cycles: Int, expect: [Scenario.Linear]) throws -> String {
        var checked = 0, actions = 0, matches: [Int] = []
        let before = try status(records: 0).vcpus.map(\.iterations)
        for _ in 0..<cycles {
            for action in [LivePatchService.Action.apply, .revert] {
                try perform(action, id: id)
                actions += 1
                checked += try Self.check(try status(records: Self.ringSlots), anyOf: expect, matches: &matches)
            }
        }
        let after = try status(records: 0).vcpus.map(\.iterations)
        let ran = zip(after, before).map { $0 - $1 }
        guard ran.allSatisfy({ $0 > 0 }) else {
            throw LiveMachineError.badConfiguration("a vCPU made no progress while \(id) was applied and reverted: \(ran)")
        }
        if let missing = zip(expect, matches).first(where: { $0.1 == 0 }) {
            throw WorkloadMismatch(description: "no result was \(missing.0) in \(checked) results over \(actions) actions")
        }
        return "\(actions) actions on \(ran.count) vCPUs; \(checked) results: "
            + zip(expect, matches).map { "\($1) \($0)" }.joined(separator: ", ") + ", none else; iterations per vCPU \(ran.min()!)-\(ran.max()!)"
    }
}
