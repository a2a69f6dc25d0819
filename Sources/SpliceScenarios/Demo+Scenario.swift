import SpliceHarness
import Foundation

extension Demo {
    /// The bundled demo scenario on every variant: vCPUs running the workload while
    /// payloads go in, are replaced and come out (steps shown for one variant per ISA).
    public func liveMachineScenario(dir: String) throws {
        let scenario = try Scenario.named("demo")
        say("== scenario \(scenario.name) (scenarios/demo.yaml): \(scenario.description.trimmingCharacters(in: .whitespacesAndNewlines))")
        var shown: Set<String> = []
        var failed = 0
        for v in ScenarioVariant.all(of: scenario) {
            let verbose = shown.insert(v.isa).inserted
            if verbose { say("\(v), \(scenario.cpus) vCPUs running \(scenario.workload ?? "nothing"):") }
            let r = ScenarioRunner.run(scenario, v, samples: dir, onStep: { if verbose { say($0.line) } })
            if !r.passed { failed += 1; if !verbose { r.steps.filter { !$0.passed }.forEach { say($0.line) } } }
            say(String(format: "  %@ %@: %d/%d steps in %.2f s", r.passed ? "passed" : "FAILED", v.description,
                         r.steps.filter(\.passed).count, scenario.steps.count, r.seconds) + (r.error.map { ": \($0)" } ?? ""))
        }
        if failed > 0 { throw ScenarioError(description: "the demo scenario failed on \(failed) variants") }
    }
}
