import ArgumentParser
import Foundation
import SpliceDaemon
import SpliceFiles
import SpliceHarness
import SpliceScenarios

/// Loads a scenario by path, or by name from the bundled scenarios/ folder or the
/// conformance suite (samples/conformance/).
func loadScenario(_ nameOrPath: String) throws -> Scenario { try Scenario.named(nameOrPath) }

func printStep(_ s: StepReport) { print(s.line) }

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a scenario (a YAML file, or the name of a bundled one) and report each step.",
        discussion: "Without --isa/--engine/--return-strategy it runs every variant the scenario names. The format: docs/scenarios.md.")
    @Argument(help: "A scenario file or bundled scenario name (e.g. demo).") var scenario: String
    @Option(help: "Only this ISA.") var isa: ISAName?
    @Option(help: "Only this engine.") var engine: PatchEngineKind?
    @Option(help: "Only this return strategy (on a backend that offers a choice).") var returnStrategy: ReturnStrategyName?
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let (s, variants) = try reportingErrors { () -> (Scenario, [ScenarioVariant]) in
            let s = try loadScenario(scenario)
            let v = ScenarioVariant.all(of: s).filter {
                (isa == nil || $0.isa == isa?.name) && (engine == nil || $0.engine == engine)
                    && (returnStrategy == nil || $0.returnStrategy == returnStrategy?.name)
            }
            guard !v.isEmpty else { throw CommandError(description: "\(s.name): no variant matches the --isa/--engine/--return-strategy given") }
            return (s, v)
        }
        let samples = try reportingErrors { try Samples.directory() }
        var reports: [ScenarioReport] = []
        if !json { print("scenario \(s.name): \(s.description.trimmingCharacters(in: .whitespacesAndNewlines))") }
        for v in variants {
            if !json { print("\(v) (\(s.cpus) vCPUs\(s.workload.map { " running \($0)" } ?? "")):") }
            let r = ScenarioRunner.run(s, v, samples: samples, onStep: { if !json { printStep($0) } })
            if !json {
                if let e = r.error { print("  FAIL: \(e)") }
                print(String(format: "  %@ in %.2f s", r.passed ? "passed" : "FAILED", r.seconds))
            }
            reports.append(r)
        }
        if json { try printJSON(reports) }
        if reports.contains(where: { !$0.passed }) { throw ExitCode(1) }
    }
}

extension ScenarioSuite {
    func scenarios() throws -> [Scenario] {
        switch self {
        case .all: return try Scenario.all()
        case .demo: return try Scenario.bundled()
        case .conformance: return try Scenario.conformance()
        }
    }
}

struct MatrixCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "matrix",
        abstract: "Run every bundled scenario and the conformance suite on each ISA, engine and ppc64le return strategy it names; print a table, write JSON and JUnit XML.")
    @Option(help: "Only these scenarios (repeatable; names or files).") var scenario: [String] = []
    @Option(help: "Which scenarios without --scenario: all, demo (scenarios/) or conformance (samples/conformance/).")
    var suite = ScenarioSuite.all
    @Option(help: "Where to write the JUnit XML.") var junit = ".build/matrix/junit.xml"
    @Option(name: .customLong("json-out"), help: "Where to write the JSON results.") var jsonOut = ".build/matrix/results.json"

    func run() throws {
        let (scenarios, samples) = try reportingErrors {
            (try !scenario.isEmpty ? scenario.map(loadScenario) : suite.scenarios(), try Samples.directory())
        }
        let reports = Matrix.run(scenarios, samples: samples) { r in
            print(String(format: "%@ %@ %@ (%.2f s)", r.passed ? "pass" : "FAIL", r.scenario, r.variant.description, r.seconds))
            if !r.passed { r.steps.forEach(printStep); if let e = r.error { print("  \(e)") } }
        }
        print("")
        print(Matrix.table(reports))
        try reportingErrors {
            for path in [junit, jsonOut] {
                try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            }
            try SafeFile.write(Array(Matrix.junitXML(reports).utf8), to: junit)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try SafeFile.write(Array(try encoder.encode(reports)), to: jsonOut)
        }
        let failed = reports.filter { !$0.passed }.count
        print("\n\(reports.count - failed)/\(reports.count) passed; JUnit XML \(junit), JSON \(jsonOut)")
        if failed > 0 { throw ExitCode(1) }
    }
}

struct Trace: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a scenario with the rendezvous engine and draw each action's rendezvous (SVG, a lane per vCPU) and its patch sites before and after (markdown).")
    @Argument(help: "A scenario file or bundled scenario name.") var scenario: String
    @Option(help: "The ISA (default: each the scenario names).") var isa: ISAName?
    @Option(help: "The return strategy, on a backend that offers a choice (default: the first the scenario names).")
    var returnStrategy: ReturnStrategyName?
    @Option(name: .shortAndLong, help: "Output folder.") var output = "trace"
    @Flag(help: "Print JSON (the reports, with every rendezvous trace and site change).") var json = false

    func run() throws {
        try reportingErrors {
            let s = try loadScenario(scenario)
            var seen: Set<String> = []
            let variants = ScenarioVariant.all(of: s).filter {
                $0.engine == .stop && (isa == nil || $0.isa == isa?.name)
                    && (returnStrategy == nil || $0.returnStrategy == returnStrategy?.name) && seen.insert($0.isa).inserted
            }
            guard !variants.isEmpty else {
                throw CommandError(description: "\(s.name): no variant with the stop engine matches (the timeline is of a rendezvous)")
            }
            // Made if nothing is there; whatever is there (a symlink, a file) is checked, not followed.
            var st = stat()
            if lstat(output, &st) != 0 { try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true) }
            let directory = try CheckedDirectory(output, policy: .stickyIfShared)
            let samples = try Samples.directory()
            var failed = false
            var reports: [ScenarioReport] = []
            for v in variants {
                let r = ScenarioRunner.run(s, v, samples: samples, recordSites: true)
                let stem = "\(s.name)-\(v.description.replacingOccurrences(of: "/", with: "-"))"
                var timelines: [Int: String] = [:]
                for step in r.steps {
                    guard let t = step.rendezvous else { continue }
                    let name = "\(stem)-step\(step.index)-" + step.step.replacingOccurrences(of: " ", with: "-") + ".svg"
                    try directory.replace(name, contents: Array(TraceRenderer.svg(t, title: "\(s.name) \(v): step \(step.index), \(step.step)").utf8))
                    timelines[step.index] = name
                }
                let report = output + "/\(stem).md"
                try directory.replace("\(stem).md", contents: Array(TraceRenderer.markdown(r, timelines: timelines).utf8))
                reports.append(r)
                if !r.passed { failed = true }
                if json { continue }
                print("\(v): \(r.passed ? "passed" : "FAILED"), \(timelines.count) rendezvous timelines, "
                      + "\(r.steps.reduce(0) { $0 + ($1.sites?.count ?? 0) }) site changes -> \(report)")
                if !r.passed { r.steps.filter { !$0.passed }.forEach(printStep) }
            }
            if json { try printJSON(reports) }
            if failed { throw CommandError(description: "the scenario failed; the report shows where") }
        }
    }
}

struct Soak: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "N vCPUs run the workload while a long random mix of upload/check/apply/revert/replace/unload goes on; every record checked, the text hash compared at the end.")
    @Option(help: "The ISA.") var isa = ISAName.first
    @Option(help: "Running vCPUs, 1-64.") var vcpus = 16
    @Option(help: "How long, in minutes.") var minutes = 10.0
    @Option(help: "The engine.") var engine = PatchEngineKind.stop
    @Option(help: "Seed of the action mix (the same seed, the same mix).") var seed: UInt64 = 1
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        guard (1...64).contains(vcpus), minutes > 0 else { throw ValidationError("--vcpus is 1 to 64, --minutes positive") }
    }

    func run() throws {
        let r = try reportingErrors {
            try SoakRun.run(samples: try Samples.directory(), isa: isa.name, vcpus: vcpus, seconds: minutes * 60, engine: engine, seed: seed,
                            progress: { if !json { print("  " + $0); fflush(stdout) } })
        }
        if json { try printJSON(r) } else {
            func counts(_ d: [String: Int]) -> String {
                ["upload", "check", "apply", "revert", "replace", "unload"].map { "\($0) \(d[$0] ?? 0)" }.joined(separator: ", ")
            }
            print("splice soak: \(r.architecture), \(r.vcpus) vCPUs, \(r.engine.rawValue) engine, seed \(r.seed), \(String(format: "%.1f", r.seconds)) s")
            print("  done:    " + counts(r.done))
            print("  refused: " + counts(r.refused) + " (the state did not allow it)")
            print("  failed:  " + counts(r.failed))
            for f in r.failures { print("    " + f) }
            print("  records checked \(r.recordsChecked), wrong \(r.wrongResults); settled checks \(r.settledChecks); faults \(r.faults)")
            print("  guest iterations \(r.iterations); rendezvous \(r.rendezvous)")
            print("  text SHA-256 pristine \(r.pristineHash)")
            print("  text SHA-256 at end   \(r.finalHash) \(r.pristineHash == r.finalHash ? "(identical)" : "(DIFFERENT)")")
        }
        if !r.passed { throw ExitCode(1) }
    }
}
