import SpliceArchitectures
import SpliceBytes
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

/// One way to run a scenario: an ISA, an engine and, where its backend offers a choice, a
/// return strategy.
public struct ScenarioVariant: Codable, Sendable, Equatable, CustomStringConvertible {
    public var isa: String
    public var engine: PatchEngineKind
    public var returnStrategy: String?

    public init(isa: String, engine: PatchEngineKind, returnStrategy: String? = nil) {
        self.isa = isa
        self.engine = engine
        self.returnStrategy = returnStrategy
    }

    public var description: String { [isa, engine.rawValue, returnStrategy].compactMap { $0 }.joined(separator: "/") }

    /// Every variant a scenario names: ISAs × engines, × the scenario's return strategies
    /// that the ISA's backend offers (none: one variant without).
    public static func all(of s: Scenario) -> [ScenarioVariant] {
        s.isas.flatMap { isa in
            let offered = (try? Architectures.backend(named: isa).returnStrategies) ?? []
            let strategies = s.returnStrategies.filter(offered.contains)
            return s.engines.flatMap { engine in
                strategies.isEmpty ? [ScenarioVariant(isa: isa, engine: engine)]
                    : strategies.map { ScenarioVariant(isa: isa, engine: engine, returnStrategy: $0) }
            }
        }
    }
}

public struct StepReport: Codable, Sendable {
    public var index: Int
    public var step: String
    public var passed: Bool
    /// What happened: the value, the state reached, or the failure.
    public var detail: String
    public var milliseconds: Double
    /// The rendezvous an action went through (the stop engine).
    public var rendezvous: Rendezvous.Trace?
    /// What an action changed in the image's text (when asked for).
    public var sites: [SiteChange]?

    /// One line for people: ok/FAIL, the step's number and name, what happened, how long.
    public var line: String {
        String(format: "  %@ %2d. %@: %@ (%.1f ms)", passed ? "ok  " : "FAIL", index, step, detail, milliseconds)
    }
}

/// A stretch of the image's text an action rewrote, disassembled before and after.
public struct SiteChange: Codable, Sendable, Equatable {
    public var address: UInt64
    /// function+offset.
    public var location: String
    public var bytesBefore: String
    public var bytesAfter: String
    public var before: [String]
    public var after: [String]
}

public struct ScenarioReport: Codable, Sendable {
    public var scenario: String
    public var file: String
    public var variant: ScenarioVariant
    public var passed: Bool
    public var seconds: Double
    public var steps: [StepReport]
    /// Set when the machine could not be set up (no step ran).
    public var error: String?
}

/// Runs a scenario's steps against a `LiveMachine`, in this process, stopping at the first
/// step that does not do what it must.
public enum ScenarioRunner {
    /// `recordSites`: disassemble what each action changed in the text, before and after.
    public static func run(_ scenario: Scenario, _ variant: ScenarioVariant, samples: String, recordSites: Bool = false,
                           onStep: (StepReport) -> Void = { _ in }) -> ScenarioReport {
        let start = Date()
        var report = ScenarioReport(scenario: scenario.name, file: scenario.path, variant: variant, passed: false, seconds: 0, steps: [])
        let imagePath = resolve(scenario.image, variant.isa, relativeTo: samples)
        let machine: LiveMachine
        do {
            machine = try LiveMachine(configuration: .init(
                image: imagePath, cpus: scenario.cpus, workload: scenario.workload, engine: variant.engine,
                returnStrategy: variant.returnStrategy))
        } catch {
            report.error = "cannot start the machine: \(error)"
            report.seconds = Date().timeIntervalSince(start)
            return report
        }
        defer { machine.shutdown() }
        var built: [String: [UInt8]] = [:]
        var text: [LiveMachine.TextRegion] = []
        do { text = try machine.executableText() } catch { report.error = "\(error)" }
        let scenarioDir = (scenario.path as NSString).deletingLastPathComponent

        for (i, entry) in scenario.steps.enumerated() {
            let stepStart = Date()
            var step = StepReport(index: i + 1, step: entry.description, passed: false, detail: "", milliseconds: 0)
            let rendezvousBefore = machine.runner.rendezvous.completed
            var isAction = false
            if case .action = entry.step { isAction = true }
            do {
                let textBefore = recordSites && isAction ? try machine.executableText() : []
                step.detail = try perform(entry.step, machine, variant, samples: samples, scenarioDir: scenarioDir,
                                          built: &built, text: text)
                if isAction, machine.runner.rendezvous.completed > rendezvousBefore {
                    step.rendezvous = machine.lastRendezvous
                }
                if recordSites && isAction {
                    step.sites = try siteChanges(machine, before: textBefore, after: try machine.executableText())
                }
                if let expected = entry.fails {
                    step.detail = "succeeded (\(step.detail)), but must fail with '\(expected)'"
                } else {
                    step.passed = true
                }
            } catch {
                let text = "\(error)"
                if let expected = entry.fails {
                    step.passed = text.contains(expected)
                    step.detail = step.passed ? "failed as it must: \(text)" : "failed, but not with '\(expected)': \(text)"
                } else {
                    step.detail = text
                }
            }
            step.milliseconds = Date().timeIntervalSince(stepStart) * 1000
            report.steps.append(step)
            onStep(step)
            if !step.passed { break }
        }
        report.passed = report.error == nil && report.steps.count == scenario.steps.count && report.steps.allSatisfy(\.passed)
        report.seconds = Date().timeIntervalSince(start)
        return report
    }

    static func resolve(_ path: String, _ isa: String, relativeTo dir: String) -> String {
        let p = path.replacingOccurrences(of: "{isa}", with: isa)
        return p.hasPrefix("/") ? p : dir + "/" + p
    }


    /// Does one step; returns what it saw, or throws what went wrong.
    static func perform(_ step: Scenario.Step, _ machine: LiveMachine, _ variant: ScenarioVariant, samples: String,
                        scenarioDir: String, built: inout [String: [UInt8]], text: [LiveMachine.TextRegion]) throws -> String {
        switch step {
        case let .build(id, original, patched, options):
            let elf = machine.image.elf
            let dependencies = try options.depends.map { d -> Payload in
                guard let bytes = built[d] else { throw ScenarioError(description: "no payload built under id \(d) to depend on") }
                return try Payload(bytes: bytes, name: d)
            }
            let result = try Samples.payload(original: original, patched: patched, isa: variant.isa, target: elf,
                                             backend: machine.patcher.backend, directory: samples) { b in
                b.dependencies = dependencies
                b.expectBytes = options.expectBytes
                b.expectedBytes = options.expect
                b.omitTargetBuildID = !options.targetBuildID
                b.nopRanges = try options.nops.map { n in
                    guard let f = elf.symbol(named: n.function) else { throw ScenarioError(description: "the image has no \(n.function)") }
                    var offset = UInt64(n.offset)
                    if let at = n.at {
                        guard let s = elf.symbol(named: at), s.value >= f.value, s.value < f.value + f.size else {
                            throw ScenarioError(description: "\(at) is not a symbol inside \(n.function)")
                        }
                        offset = s.value - f.value
                    }
                    return .init(function: n.function, offset: UInt32(offset), length: UInt32(n.bytes))
                }
            }
            built[id] = result.bytes
            return "\(result.bytes.count) bytes; changed: " + result.report.changed.joined(separator: ", ")
        case let .upload(id, file):
            let bytes: [UInt8]
            if let file {
                let path = resolve(file, variant.isa, relativeTo: scenarioDir)
                guard let data = FileManager.default.contents(atPath: path) else { throw ScenarioError(description: "cannot read \(path)") }
                bytes = [UInt8](data)
            } else {
                guard let b = built[id] else { throw ScenarioError(description: "no payload built under id \(id) (add a build step)") }
                bytes = b
            }
            try machine.upload(id: id, bytes: bytes)
            return try machine.get(id).state.rawValue
        case let .action(action, id, engineActions):
            let rendezvousBefore = machine.runner.rendezvous.completed, nonStopBefore = machine.nonStop?.actions ?? 0
            try machine.perform(action, id: id)
            let state = action == .unload ? "unloaded" : try machine.get(id).state.rawValue
            guard let engineActions else { return state }
            let (n, what) = machine.nonStop.map { ($0.actions - nonStopBefore, "non-stop sequence") }
                ?? (machine.runner.rendezvous.completed - rendezvousBefore, "rendezvous")
            guard n == engineActions else {
                throw ScenarioError(description: "\(state), but it took \(n) \(what)\(n == 1 || what == "rendezvous" ? "" : "s"), not \(engineActions)")
            }
            return "\(state) in \(n) \(what)\(n == 1 || what == "rendezvous" ? "" : "s")"
        case let .call(function, arguments, expect, expectString):
            let values = try arguments.map { a -> Int64 in
                switch a {
                case let .value(v): return v
                case let .address(s): return Int64(bitPattern: try machine.address(of: s))
                }
            }
            let v = try machine.call(function, values)
            if let expect, v != expect { throw ScenarioError(description: "\(function) returned \(v), expected \(expect)") }
            if let expectString {
                let got = try machine.string(at: UInt64(bitPattern: v))
                guard got == expectString else {
                    throw ScenarioError(description: "\(function) returned \"\(got)\", expected \"\(expectString)\"")
                }
                return "= \"\(got)\""
            }
            return "= \(v)"
        case let .read(symbol, expect):
            let v = try machine.read(symbol)
            guard v == expect else { throw ScenarioError(description: "\(symbol) is \(v) (\(hex(UInt64(bitPattern: v)))), expected \(expect)") }
            return "= \(v)"
        case let .write(symbol, value):
            try machine.write(symbol, value)
            return "\(symbol) = \(value)"
        case let .run(ms, expect):
            return try machine.checkWorkload(anyOf: expect, milliseconds: ms)
        case let .begin(action, id):
            let ticket = try machine.begin(action, id: id)
            return "ticket \(ticket): " + (try machine.get(id).state.rawValue)
        case let .state(id, state, ms):
            let end = Date().addingTimeInterval(Double(ms) / 1000)
            var samples = 0
            repeat {
                let now = try machine.get(id).state
                guard now == state else {
                    throw ScenarioError(description: "\(id) is \(now)" + (samples > 0 ? " after \(samples) looks" : "") + ", expected \(state)")
                }
                samples += 1
                if ms > 0 { Thread.sleep(forTimeInterval: 0.005) }
            } while Date() < end
            return "\(state) (\(samples) looks)"
        case let .wait(id, state):
            let deadline = Date().addingTimeInterval(30)
            var s = try machine.get(id)
            while s.state == .progress && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.002)
                s = try machine.get(id)
            }
            if s.state != state {
                throw ScenarioError(description: "\(id) is \(s.state)" + (s.error.map { ": \($0)" } ?? "") + ", expected \(state)")
            }
            return s.state.rawValue + (s.rc != 0 ? " (rc \(s.rc): \(s.error ?? ""))" : "")
        case let .hammer(id, cycles, expect, tally):
            let before = tally ? try machine.ringTail(words: 3) : []
            var detail = try machine.hammer(id: id, cycles: cycles, expect: expect)
            if tally {
                let after = try machine.ringTail(words: 5)
                let old = zip(after, before).reduce(0) { $0 + $1.0[0] - $1.1[0] }
                let new = zip(after, before).reduce(0) { $0 + $1.0[1] - $1.1[1] }
                if let bad = after.indices.first(where: { after[$0][2] != before[$0][2] }) {
                    throw ScenarioError(description: "vCPU \(bad): \(after[bad][2] - before[bad][2]) calls returned neither old nor new "
                                      + "(the last: x=\(after[bad][3]) gave \(after[bad][4]))")
                }
                guard old > 0, new > 0 else {
                    throw ScenarioError(description: "the calls gave \(old) old and \(new) new results: both must occur")
                }
                detail += "; in the guest, every call: \(old) old, \(new) new, 0 other"
            }
            return detail
        case .textUnchanged:
            let now = try machine.executableText()
            guard now == text else {
                let differing = zip(now, text).reduce(0) { $0 + zip($1.0.bytes, $1.1.bytes).filter { $0 != $1 }.count }
                throw ScenarioError(description: "\(differing) bytes of text differ from the image as loaded")
            }
            return "\(text.reduce(0) { $0 + $1.bytes.count }) bytes as loaded"
        }
    }

    /// The stretches of text that differ (bytes within 8 of each other merged), each
    /// disassembled from its first byte through its last, before and after.
    static func siteChanges(_ machine: LiveMachine, before: [LiveMachine.TextRegion], after: [LiveMachine.TextRegion]) throws -> [SiteChange] {
        let disassembler = try Disassembler(mode: machine.machine.architecture.disassemblyMode)
        let functions = machine.image.functionMap
        let names = machine.codeNames()
        var changes: [SiteChange] = []
        for (b, a) in zip(before, after) where b.bytes != a.bytes {
            var i = 0
            while i < b.bytes.count {
                guard b.bytes[i] != a.bytes[i] else { i += 1; continue }
                var end = i + 1, quiet = 0
                var j = i + 1
                while j < b.bytes.count && quiet < 8 {
                    if b.bytes[j] != a.bytes[j] { end = j + 1; quiet = 0 } else { quiet += 1 }
                    j += 1
                }
                // Decode from the instruction holding the first changed byte: walk the
                // original function from its start to find that boundary.
                var first = i
                if let f = functions.function(containing: b.base + UInt64(i)), f.value >= b.base {
                    var o = Int(f.value - b.base)
                    while o <= i, let insn = disassembler.decodeOne(b.bytes, offset: o, address: b.base + UInt64(o)) {
                        if o + insn.size > i { first = o; break }
                        o += max(insn.size, 1)
                    }
                }
                let address = b.base + UInt64(first)
                func listing(_ bytes: [UInt8]) -> [String] {
                    var out: [String] = []
                    var offset = first
                    while offset < end, let insn = disassembler.decodeOne(bytes, offset: offset, address: b.base + UInt64(offset)) {
                        out.append("\(hex(insn.address)):  \(insn.bytesHex.padding(toLength: 20, withPad: " ", startingAt: 0)) "
                                   + Inspector.annotate(insn.text, names))
                        offset += max(insn.size, 1)
                    }
                    return out
                }
                let f = functions.function(containing: address)
                changes.append(SiteChange(
                    address: address, location: f.map { "\($0.name)+\(hex(address - $0.value))" } ?? hex(address),
                    bytesBefore: b.bytes[first..<end].hexBytes,
                    bytesAfter: a.bytes[first..<end].hexBytes,
                    before: listing(b.bytes), after: listing(a.bytes)))
                i = end
            }
        }
        return changes
    }
}
