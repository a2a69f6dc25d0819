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
    public static func run(_ scenario: Scenario, _ variant: ScenarioVariant, samples: String,
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
        var text: [[UInt8]] = []
        do { text = try machine.executableText() } catch { report.error = "\(error)" }
        let scenarioDir = (scenario.path as NSString).deletingLastPathComponent

        for (i, entry) in scenario.steps.enumerated() {
            let stepStart = Date()
            var step = StepReport(index: i + 1, step: entry.description, passed: false, detail: "", milliseconds: 0)
            let rendezvousBefore = machine.runner.rendezvous.completed
            do {
                step.detail = try perform(entry.step, machine, variant, samples: samples, scenarioDir: scenarioDir,
                                          built: &built, text: text)
                if case .action = entry.step, machine.runner.rendezvous.completed > rendezvousBefore {
                    step.rendezvous = machine.lastRendezvous
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
                        scenarioDir: String, built: inout [String: [UInt8]], text: [[UInt8]]) throws -> String {
        switch step {
        case let .build(id, original, patched):
            let isa = variant.isa
            let target = machine.image.elf
            let builder = PayloadBuilder(
                original: try ELFFile(contentsOf: "\(samples)/patches/\(original)/orig-\(isa).o"),
                patched: try ELFFile(contentsOf: "\(samples)/patches/\(patched)/patched-\(isa).o"),
                target: target, backend: machine.patcher.backend)
            let result = try builder.build()
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
            return try runWorkload(machine, milliseconds: ms, expect: expect)
        case .textUnchanged:
            let now = try machine.executableText()
            guard now == text else {
                let differing = zip(now, text).reduce(0) { $0 + zip($1.0, $1.1).filter { $0 != $1 }.count }
                throw StepFailure(description: "\(differing) bytes of text differ from the image as loaded")
            }
            return "\(text.reduce(0) { $0 + $1.count }) bytes as loaded"
        }
    }

    /// Waits until every vCPU has run `milliseconds` and a full ring of new iterations,
    /// then checks the newest records: none may be anything but `expect`.
    static func runWorkload(_ machine: LiveMachine, milliseconds: Int, expect: Scenario.Linear?) throws -> String {
        let start = Date()
        let before = try machine.status(records: 0).vcpus.map(\.iterations)
        let ring = UInt64(LiveMachine.ringSlots)
        let deadline = Date(timeIntervalSinceNow: 30 + Double(milliseconds) / 1000)
        var status = try machine.status(records: 16)
        while zip(status.vcpus, before).contains(where: { $0.iterations < $1 + ring }) || Date().timeIntervalSince(start) * 1000 < Double(milliseconds) {
            guard Date() < deadline else { throw StepFailure(description: "the workload made no progress in 30 s: \(status.vcpus.map(\.state))") }
            Thread.sleep(forTimeInterval: 0.002)
            status = try machine.status(records: 16)
        }
        var checked = 0
        for v in status.vcpus {
            guard v.state == "running" else { throw StepFailure(description: "vCPU \(v.index) is \(v.state)") }
            for r in v.records {
                for y in r.results {
                    checked += 1
                    if let e = expect, y != e.a * r.x + e.b {
                        throw StepFailure(description: "vCPU \(v.index): x=\(r.x) gave \(y), expected \(e) = \(e.a * r.x + e.b)")
                    }
                }
            }
        }
        let iterations = zip(status.vcpus, before).map { $0.iterations - $1 }
        return "\(iterations.map(String.init).joined(separator: "+")) iterations; \(checked) results" + (expect.map { " all \($0)" } ?? "")
    }
}
