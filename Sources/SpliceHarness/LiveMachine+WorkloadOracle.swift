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
    public func checkWorkload(expect: LinearResult?, milliseconds: Int = 0) throws -> String {
        try checkWorkload(anyOf: expect.map { [$0] } ?? [], milliseconds: milliseconds)
    }

    /// `checkWorkload`, each result being one of `anyOf` (empty: not checked).
    public func checkWorkload(anyOf expect: [LinearResult], milliseconds: Int = 0) throws -> String {
        let start = Date()
        let before = try status(records: 0).vcpus.map(\.iterations)
        let ring = UInt64(Self.ringSlots)
        let deadline = Date(timeIntervalSinceNow: 30 + Double(milliseconds) / 1000)
        var now = try status(records: 16)
        while zip(now.vcpus, before).contains(where: { $0.iterations < $1 + ring }) || Date().timeIntervalSince(start) * 1000 < Double(milliseconds) {
            if let stopped = now.vcpus.first(where: { $0.state != .running }) {
                throw Mismatch(description: "vCPU \(stopped.index) is \(stopped.summary)")
            }
            guard Date() < deadline else { throw Mismatch(description: "the workload made no progress in 30 s: \(now.vcpus.map(\.summary))") }
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
    static func check(_ status: Status, anyOf expect: [LinearResult], matches: inout [Int]) throws -> Int {
        if matches.count < expect.count { matches += Array(repeating: 0, count: expect.count - matches.count) }
        var checked = 0
        for v in status.vcpus {
            guard v.state == .running else { throw Mismatch(description: "vCPU \(v.index) is \(v.summary)") }
            for r in v.records {
                for y in r.results {
                    checked += 1
                    guard !expect.isEmpty else { continue }
                    guard let i = expect.firstIndex(where: { y == $0.a * r.x + $0.b }) else {
                        throw Mismatch(description: "vCPU \(v.index): x=\(r.x) gave \(y), expected "
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
    public func hammer(id: String, cycles: Int, expect: [LinearResult]) throws -> String {
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
            throw Mismatch(description: "no result was \(missing.0) in \(checked) results over \(actions) actions")
        }
        return "\(actions) actions on \(ran.count) vCPUs; \(checked) results: "
            + zip(expect, matches).map { "\($1) \($0)" }.joined(separator: ", ") + ", none else; iterations per vCPU \(ran.min()!)-\(ran.max()!)"
    }
}

/// y = a·x + b, what the workload's results must be.
public struct LinearResult: Sendable, Equatable, CustomStringConvertible, Codable {
    public var a: Int64, b: Int64
    public var description: String {
        (a == 1 ? "x" : "\(a)x") + (b == 0 ? "" : b > 0 ? "+\(b)" : "\(b)")
    }

    /// "3x+2", "3*x + 2", "x-1", "2x".
    public init?(_ text: String) {
        let t = text.replacingOccurrences(of: " ", with: "").replacingOccurrences(of: "*", with: "")
        guard let xi = t.firstIndex(of: "x") else { return nil }
        let head = String(t[..<xi]), tail = String(t[t.index(after: xi)...])
        guard let a = head.isEmpty ? 1 : head == "-" ? -1 : Int64(head) else { return nil }
        guard let b = tail.isEmpty ? 0 : Int64(tail.hasPrefix("+") ? String(tail.dropFirst()) : tail) else { return nil }
        self.a = a
        self.b = b
    }
}

/// What a check of the harness saw that it must not: a wrong result, a vCPU not running,
/// no progress, a call that disagrees with its oracle, code that differs after a revert.
public struct Mismatch: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}
