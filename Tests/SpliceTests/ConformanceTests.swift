import Foundation
import Splice
import XCTest

/// The conformance suite (samples/conformance/, docs/conformance.md): one test per case of
/// Xen's test payloads (xen/test/livepatch) and Linux's livepatch selftests
/// (tools/testing/selftests/livepatch), each running its scenario on every variant it
/// names — x86-64 and ppc64le, both engines unless the case is about one, and on ppc64le
/// both return strategies. A scenario's steps are its checks: values returned by real
/// guest code, hook counters read from guest memory, states, refusals with their reasons,
/// the text byte for byte.
final class ConformanceTests: XCTestCase {
    /// Every case, by scenario name, and the Xen or Linux test it is modelled on.
    static let cases: [(scenario: String, modelledOn: String)] = [
        ("xen-hello-world", "xen_hello_world"),
        ("xen-bye-world", "xen_bye_world"),
        ("xen-replace-world", "xen_replace_world"),
        ("xen-nop", "xen_nop"),
        ("xen-no-xen-buildid", "xen_no_xen_buildid"),
        ("xen-prepost-hooks", "xen_prepost_hooks"),
        ("xen-prepost-hooks-fail", "xen_prepost_hooks_fail"),
        ("xen-action-hooks", "xen_action_hooks_marker, xen_action_hooks, xen_action_hooks_nofunc, xen_action_hooks_noapply"),
        ("xen-expectations", "xen_expectations, xen_expectations_fail"),
        ("linux-livepatch", "test-livepatch.sh"),
        ("linux-callbacks", "test-callbacks.sh, test_klp_callbacks_demo2"),
        ("linux-callbacks-busy", "test-callbacks.sh (busy target)"),
        ("linux-shadow-vars", "test-shadow-vars.sh"),
        ("linux-state", "test-state.sh"),
        ("linux-syscall", "test-syscall.sh"),
    ]

    /// Runs the conformance scenario `name` on each of its variants and fails with the
    /// step that did not hold. Returns the reports.
    @discardableResult
    func run(_ name: String, engines: [PatchEngineKind] = [.stop, .nonstop], file: StaticString = #filePath,
             line: UInt = #line) throws -> [ScenarioReport] {
        let scenario = try XCTUnwrap(try Scenario.conformance().first { $0.name == name }, "no conformance scenario \(name)",
                                     file: file, line: line)
        let variants = ScenarioVariant.all(of: scenario)
        // Both ISAs; on ppc64le both return strategies (every case calls functions).
        XCTAssertEqual(Set(variants.map(\.isa)), ["x86_64", "ppc64le"], name, file: file, line: line)
        XCTAssertEqual(Set(variants.compactMap(\.returnStrategy)), Set(ReturnStrategy.allCases.map(\.rawValue)), name, file: file, line: line)
        XCTAssertEqual(Set(variants.map(\.engine)), Set(engines), name, file: file, line: line)
        let reports = Matrix.run([scenario], samples: samplesDirectory)
        XCTAssertEqual(reports.count, variants.count, file: file, line: line)
        for r in reports where !r.passed {
            let bad = r.steps.first { !$0.passed }
            XCTFail("\(name) \(r.variant): " + (r.error ?? bad.map { "step \($0.index) (\($0.step)): \($0.detail)" } ?? "did not finish"),
                    file: file, line: line)
        }
        for r in reports { XCTAssertEqual(r.steps.count, scenario.steps.count, "\(name) \(r.variant)", file: file, line: line) }
        return reports
    }

    /// The detail a passing step printed, for checks on what it saw.
    func detail(_ reports: [ScenarioReport], step: String) -> [String] {
        reports.compactMap { r in r.steps.first { $0.step.hasPrefix(step) }?.detail }
    }

    func testXenHelloWorld() throws { try run("xen-hello-world") }
    func testXenByeWorldStackedOnHello() throws { try run("xen-bye-world") }

    func testXenReplaceWorldInOneRendezvous() throws {
        let reports = try run("xen-replace-world")
        // "in 1 rendezvous" (stop engine) or "in 1 non-stop sequence": what the step measured.
        let replaced = detail(reports, step: "replace replace")
        XCTAssertEqual(replaced.count, reports.count)
        for d in replaced { XCTAssertTrue(d.hasPrefix("APPLIED in 1 "), d) }
    }

    func testXenNop() throws { try run("xen-nop") }
    func testXenNoXenBuildID() throws { try run("xen-no-xen-buildid") }
    func testXenPrePostHooks() throws { try run("xen-prepost-hooks") }
    func testXenPrePostHooksFail() throws { try run("xen-prepost-hooks-fail") }
    func testXenActionHooks() throws { try run("xen-action-hooks") }
    func testXenExpectations() throws { try run("xen-expectations") }
    func testLinuxLivepatchBasicMultipleAtomicReplace() throws { try run("linux-livepatch") }
    func testLinuxCallbacks() throws { try run("linux-callbacks") }

    /// Only the non-stop engine waits for a function to leave the stacks (the stop engine
    /// patches at the safe point, inside busy_target's loop, as Xen does).
    func testLinuxCallbacksBusyTargetStallsTheNonStopEngine() throws {
        let reports = try run("linux-callbacks-busy", engines: [.nonstop])
        for d in detail(reports, step: "busy is PROGRESS") {
            let looks = Int(d.split(separator: "(").last?.split(separator: " ").first ?? "") ?? 0
            XCTAssertGreaterThan(looks, 10, "PROGRESS was seen for the whole 300 ms: \(d)")
        }
    }

    func testLinuxShadowVariables() throws { try run("linux-shadow-vars") }
    func testLinuxStates() throws { try run("linux-state") }

    /// 16 vCPUs; the guest checks every call it makes (syscall_workload), the host every
    /// ring after every action.
    func testLinuxSyscallHammer() throws {
        let reports = try run("linux-syscall")
        let hammer = detail(reports, step: "hammer")
        XCTAssertEqual(hammer.count, reports.count)
        for d in hammer {
            XCTAssertTrue(d.contains("40 actions on 16 vCPUs"), d)
            XCTAssertTrue(d.contains(", 0 other"), d)
        }
    }

    /// The suite is the table of the issue, each case in samples/conformance and in
    /// docs/conformance.md with the test that runs it; `splice matrix` runs it too.
    func testEveryCaseIsInTheSuiteAndDocumented() throws {
        let suite = try Scenario.conformance().map(\.name)
        XCTAssertEqual(Set(suite), Set(Self.cases.map(\.scenario)))
        XCTAssertEqual(suite.count, Self.cases.count, "one scenario per case: \(suite)")
        XCTAssertTrue(Set(try Scenario.all().map(\.name)).isSuperset(of: suite), "splice matrix runs the suite")
        let doc = try String(contentsOfFile: samplesDirectory + "/../../docs/conformance.md", encoding: .utf8)
        // This file's test methods, as written (corelibs XCTest lists no suite's tests).
        let source = try String(contentsOfFile: #filePath, encoding: .utf8)
        let tests = source.components(separatedBy: "func test").dropFirst().map { String($0.prefix { $0.isLetter || $0.isNumber }) }
            .map { "test" + $0 }
        XCTAssertGreaterThan(tests.count, Self.cases.count, "\(tests)")
        for (scenario, modelledOn) in Self.cases {
            XCTAssertTrue(doc.contains("samples/conformance/\(scenario).yaml"), "docs/conformance.md lacks \(scenario)")
            for anchor in modelledOn.split(separator: ",") {
                let name = anchor.trimmingCharacters(in: .whitespaces).split(separator: " ").first.map(String.init) ?? ""
                XCTAssertTrue(doc.contains(name), "docs/conformance.md lacks \(name)")
            }
        }
        for test in tests where test.hasPrefix("test") && test != "testEveryCaseIsInTheSuiteAndDocumented" {
            XCTAssertTrue(doc.contains("ConformanceTests.\(test)"), "docs/conformance.md does not name \(test)")
        }
    }
}
