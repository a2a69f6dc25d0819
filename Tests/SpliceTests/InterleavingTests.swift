import Splice
import XCTest

/// Deterministic and exhaustive: a vCPU is placed at every instruction boundary of the
/// patched function and sees memory exactly as it is after every step of the write
/// sequence. A naive sequence must be caught tearing; the stop-machine order and the
/// non-stop sequences never tear.
final class InterleavingTests: XCTestCase {
    enum Strategy: String, CaseIterable { case naive, nonStop = "non-stop", stopMachine = "stop-machine" }

    /// vCPUs sent on from an armed int3 in the last exploration.
    var redirects = 0

    struct Outcome: CustomStringConvertible {
        var boundary: Int, step: Int, result: DeterministicScheduler.State
        var description: String { "boundary \(boundary), after step \(step): \(result)" }
    }

    /// Runs every (boundary, step) pair for one strategy on a fresh machine each time.
    /// `call` enters the function; returns every outcome.
    /// With `revert`, the redirect is in force first and the sequence takes it back.
    func explore(_ isa: String, _ strategy: Strategy, function: String, target: String, entry: EntryKind,
                 boundaries: Int, revert: Bool = false) throws -> [Outcome] {
        var outcomes: [Outcome] = []
        redirects = 0
        var maxSteps = 1
        var d = 0
        for k in 0...boundaries {
            d = 0
            while d <= maxSteps {
                let image = try loadImage(path: PayloadTests.targetPath(isa))
                let backend = try Architectures.backend(for: image.elf)
                let patcher = try LivePatcher(image: image, backend: backend)
                let item = LivePatcher.BatchItem(function: function, target: .address(try image.function(named: target).value))
                let scheduler = DeterministicScheduler(machine: image.machine, backend: backend, quantum: 1)
                let callEntry = try XCTUnwrap(image.entries(of: function).first { $0.kind == entry })
                try scheduler.start(vcpu: 0, entry: callEntry, arguments: [10])
                if k > 0 { try scheduler.step(0, instructions: k) } // (0 would mean "no limit" to Unicorn)
                // Reverting: the redirect went in (all at once) while the vCPU stood here.
                let applied = revert ? try patcher.apply(batch: [item])[0] : nil
                // The sequence of steps, per strategy.
                var steps: [NonStopStep] = []
                switch (strategy, applied) {
                case let (.nonStop, applied?):
                    steps = patcher.nonStopRevertSteps(for: applied)
                case let (.naive, applied?):
                    // Every byte on its own, and (ppc64le) the odd-TOC mark last.
                    let writes = applied.undo.sorted { ($0.purpose.contains("odd-TOC") ? 1 : 0) < ($1.purpose.contains("odd-TOC") ? 1 : 0) }
                    steps = writes.flatMap { w in w.bytes.enumerated().flatMap { i, b in
                        [NonStopStep.write(w.address + UInt64(i), [b], purpose: "byte \(i)"), .sync]
                    } }
                case let (.stopMachine, applied?):
                    try scheduler.runToCompletion()
                    steps = applied.undo.reversed().flatMap { [NonStopStep.write($0.address, $0.bytes, purpose: $0.purpose), .sync] }
                case (.nonStop, nil):
                    let prepared = try patcher.prepare(batch: [item])
                    steps = backend.nonStopSteps(for: prepared.plans[0].writes)
                    patcher.abandon(prepared)
                case (.naive, nil):
                    // Every byte on its own, and (ppc64le) the odd-TOC mark first.
                    let prepared = try patcher.prepare(batch: [item])
                    let writes = prepared.plans[0].writes.sorted { ($0.purpose.contains("odd-TOC") ? 0 : 1) < ($1.purpose.contains("odd-TOC") ? 0 : 1) }
                    steps = writes.flatMap { w in w.bytes.enumerated().flatMap { i, b in
                        [NonStopStep.write(w.address + UInt64(i), [b], purpose: "byte \(i)"), .sync]
                    } }
                    patcher.abandon(prepared)
                case (.stopMachine, nil):
                    // The rendezvous: the vCPU reaches its safe point (returns) before any write.
                    try scheduler.runToCompletion()
                    let prepared = try patcher.prepare(batch: [item])
                    steps = prepared.plans[0].writes.flatMap { [NonStopStep.write($0.address, $0.bytes, purpose: $0.purpose), .sync] }
                    patcher.abandon(prepared)
                }
                maxSteps = steps.count
                // Make the first d steps, let the vCPU run to its end, then finish the sequence.
                var pending: [(UInt64, Int)] = []
                func perform(_ s: NonStopStep) throws {
                    if case let .write(a, bytes, _) = s {
                        try image.machine.memory.write(a, bytes)
                        pending.append((a, bytes.count))
                    }
                    try scheduler.handle(s, changed: pending)
                    if case .sync = s { pending = [] }
                }
                for s in steps.prefix(d) { try perform(s) }
                try scheduler.runToCompletion(maxRounds: 100_000)
                for s in steps.dropFirst(d) { try perform(s) }
                scheduler.disarmAll()
                outcomes.append(Outcome(boundary: k, step: d, result: scheduler.states[0]!))
                redirects += scheduler.trapRedirects
                d += 1
            }
        }
        return outcomes
    }

    func check(_ isa: String, function: String, target: String, entry: EntryKind, boundaries: Int, old: Int64, new: Int64,
               revert: Bool = false) throws {
        var torn: [Strategy: [Outcome]] = [:]
        let what = revert ? "\(isa) revert" : isa
        for strategy in Strategy.allCases {
            let outcomes = try explore(isa, strategy, function: function, target: target, entry: entry, boundaries: boundaries,
                                       revert: revert)
            torn[strategy] = outcomes.filter { o in
                if case let .returned(v) = o.result { return v != old && v != new }
                return true
            }
            if strategy == .nonStop && isa == "x86_64" {
                XCTAssertGreaterThan(redirects, 0, "some vCPUs hit the int3 and were sent to the new code")
            }
            print("\(what) \(strategy.rawValue): \(outcomes.count) interleavings, \(torn[strategy]!.count) torn, \(redirects) int3 redirects"
                  + (torn[strategy]!.first.map { " (e.g. \($0))" } ?? ""))
        }
        XCTAssertFalse(torn[.naive]!.isEmpty, "\(what): the naive byte-by-byte sequence must be caught tearing")
        XCTAssertEqual(torn[.nonStop]!.count, 0, "\(what): \(torn[.nonStop]!)")
        XCTAssertEqual(torn[.stopMachine]!.count, 0, "\(what): \(torn[.stopMachine]!)")
    }

    func testX86_64FiveBytePatch() throws {
        // scaled: imul (8 bytes), lea, ret: the 5-byte jmp lands over the first instruction.
        try check("x86_64", function: "scaled", target: "checked_double", entry: .global, boundaries: 3, old: 31, new: 20)
    }

    func testPPC64LEEnableSequence() throws {
        // Entered at the global entry (lis, addi, mflr, site, ...): the odd-TOC mark matters.
        try check("ppc64le", function: "scaled", target: "checked_double", entry: .global, boundaries: 6, old: 31, new: 20)
    }

    func testX86_64FiveBytePatchRevert() throws {
        try check("x86_64", function: "scaled", target: "checked_double", entry: .global, boundaries: 3, old: 31, new: 20,
                  revert: true)
    }

    func testPPC64LEDisableSequence() throws {
        try check("ppc64le", function: "scaled", target: "checked_double", entry: .global, boundaries: 6, old: 31, new: 20,
                  revert: true)
    }
}
