import Foundation

/// One way to run a scenario: an ISA, an engine and (ppc64le) a return strategy.
public struct ScenarioVariant: Codable, Sendable, Equatable, CustomStringConvertible {
    public var isa: String
    public var engine: PatchEngineKind
    public var returnStrategy: ReturnStrategy?

    public init(isa: String, engine: PatchEngineKind, returnStrategy: ReturnStrategy? = nil) {
        self.isa = isa
        self.engine = engine
        self.returnStrategy = returnStrategy
    }

    public var description: String { [isa, engine.rawValue, returnStrategy?.rawValue].compactMap { $0 }.joined(separator: "/") }

    /// Every variant a scenario names: ISAs × engines, × return strategies on ppc64le.
    public static func all(of s: Scenario) -> [ScenarioVariant] {
        s.isas.flatMap { isa in
            s.engines.flatMap { engine in
                isa == "ppc64le" ? s.returnStrategies.map { ScenarioVariant(isa: isa, engine: engine, returnStrategy: $0) }
                    : [ScenarioVariant(isa: isa, engine: engine)]
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
                returnStrategy: variant.isa == "ppc64le" ? variant.returnStrategy : nil))
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

    struct StepFailure: Error, CustomStringConvertible { let description: String }

    /// Does one step; returns what it saw, or throws what went wrong.
    static func perform(_ step: Scenario.Step, _ machine: LiveMachine, _ variant: ScenarioVariant, samples: String,
                        scenarioDir: String, built: inout [String: [UInt8]], text: [LiveMachine.TextRegion]) throws -> String {
        switch step {
        case let .build(id, original, patched):
            let result = try Samples.payload(original: original, patched: patched, isa: variant.isa, target: machine.image.elf,
                                             backend: machine.patcher.backend, directory: samples)
            built[id] = result.bytes
            return "\(result.bytes.count) bytes; changed: " + result.report.changed.joined(separator: ", ")
        case let .upload(id, file):
            let bytes: [UInt8]
            if let file {
                let path = resolve(file, variant.isa, relativeTo: scenarioDir)
                guard let data = FileManager.default.contents(atPath: path) else { throw StepFailure(description: "cannot read \(path)") }
                bytes = [UInt8](data)
            } else {
                guard let b = built[id] else { throw StepFailure(description: "no payload built under id \(id) (add a build step)") }
                bytes = b
            }
            try machine.upload(id: id, bytes: bytes)
            return try machine.get(id).state
        case let .action(action, id):
            try machine.perform(action, id: id)
            return action == .unload ? "unloaded" : try machine.get(id).state
        case let .call(function, arguments, expect):
            let values = try arguments.map { a -> Int64 in
                switch a {
                case let .value(v): return v
                case let .address(s): return Int64(bitPattern: try machine.address(of: s))
                }
            }
            let v = try machine.call(function, values)
            if let expect, v != expect { throw StepFailure(description: "\(function) returned \(v), expected \(expect)") }
            return "= \(v)"
        case let .read(symbol, expect):
            let v = try machine.read(symbol)
            guard v == expect else { throw StepFailure(description: "\(symbol) is \(v) (0x\(String(UInt64(bitPattern: v), radix: 16))), expected \(expect)") }
            return "= \(v)"
        case let .run(ms, expect):
            return try machine.checkWorkload(expect: expect, milliseconds: ms)
        case .textUnchanged:
            let now = try machine.executableText()
            guard now == text else {
                let differing = zip(now, text).reduce(0) { $0 + zip($1.0.bytes, $1.1.bytes).filter { $0 != $1 }.count }
                throw StepFailure(description: "\(differing) bytes of text differ from the image as loaded")
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
                    address: address, location: f.map { "\($0.name)+0x\(String(address - $0.value, radix: 16))" } ?? hex(address),
                    bytesBefore: b.bytes[first..<end].map { String(format: "%02x", $0) }.joined(separator: " "),
                    bytesAfter: a.bytes[first..<end].map { String(format: "%02x", $0) }.joined(separator: " "),
                    before: listing(b.bytes), after: listing(a.bytes)))
                i = end
            }
        }
        return changes
    }

    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
}
