import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Splice
import XCTest

final class ScenarioTests: XCTestCase {
    func parse(_ yaml: String) throws -> Scenario { try Scenario(yaml: yaml, path: "t.yaml") }

    func assertRefused(_ yaml: String, _ text: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(yaml), file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(text), "\(error)", file: file, line: line)
        }
    }

    func testScenarioFilesAreCheckedWithTheStepNamed() throws {
        let head = "image: kernel-{isa}.elf\nsteps:\n"
        let s = try parse(head + "  - run: { expect: 3*x - 1 }\n  - apply: p\n    fails: EINVAL\n  - call: { function: poke, args: [\"&tick_count\", 0x10] }\n  - text-unchanged:\n")
        XCTAssertEqual(s.steps.map(\.step), [.run(milliseconds: 0, expect: [LinearResult("3x-1")!]), .action(.apply, id: "p"),
                                             .call(function: "poke", arguments: [.address("tick_count"), .value(16)], expect: nil, expectString: nil),
                                             .textUnchanged])
        XCTAssertEqual(s.steps[1].fails, "EINVAL")
        XCTAssertEqual(ScenarioVariant.all(of: s).map(\.description), [
            "x86_64/stop", "x86_64/nonstop", "ppc64le/stop/frameless", "ppc64le/stop/shadow-stack",
            "ppc64le/nonstop/frameless", "ppc64le/nonstop/shadow-stack",
        ])
        assertRefused(head + "  - apply: p\n  - explode: now\n", "t.yaml: step 2: unknown step 'explode'")
        assertRefused(head + "  - run: { expect: 3y }\n", "step 1: expect is a·x+b")
        assertRefused(head + "  - apply: p\n    check: q\n", "step 1: one verb per step")
        assertRefused("image: a\ncpu: 4\nsteps:\n  - apply: p\n", "unknown key 'cpu'")
        assertRefused("image: a\nisa: arm64\nsteps:\n  - apply: p\n", "isa 'arm64'")
        assertRefused("steps:\n  - apply: p\n", "needs 'image'")
        assertRefused("image: a\nsteps: [\n", "not valid YAML")
    }

    /// A wrong expectation fails at its step, with what was seen; the steps after it do
    /// not run.
    func testAScenarioFailsAtTheStepThatDoesNotHold() throws {
        let s = try parse("""
            image: kernel-{isa}.elf
            isa: x86_64
            engine: stop
            steps:
              - build: { id: p02, patch: 02-scaled-plus-two }
              - upload: p02
              - check: p02
              - apply: p02
              - run: { expect: 3x+1 }
              - revert: p02
            """)
        let r = ScenarioRunner.run(s, ScenarioVariant.all(of: s)[0], samples: samplesDirectory)
        XCTAssertFalse(r.passed)
        XCTAssertEqual(r.steps.count, 5)
        XCTAssertTrue(r.steps[4].detail.contains("expected 3x+1"), r.steps[4].detail)
        XCTAssertNotNil(r.steps[3].rendezvous, "the apply's rendezvous was not recorded")
    }

    /// `splice matrix` writes JUnit XML a CI system can read: parsed here, one testsuite
    /// per scenario and one testcase per variant, failures counted.
    func testTheMatrixWritesValidJUnitXML() throws {
        let dir = NSTemporaryDirectory() + "splice-matrix-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // One bundled scenario and one that fails at its second step on both its variants.
        let failing = dir + "/failing.yaml"
        try """
            name: failing <&>
            image: kernel-{isa}.elf
            engine: stop
            return-strategy: shadow-stack
            steps:
              - call: { function: fib, args: [10], expect: 55 }
              - read: { symbol: observed_toc, expect: 1 }
            """.write(toFile: failing, atomically: true, encoding: .utf8)
        let r = try runSplice(["matrix", "--scenario", "demo", "--scenario", failing,
                               "--junit", dir + "/junit.xml", "--json-out", dir + "/results.json"])
        XCTAssertEqual(r.status, 1, "a failing scenario must fail the matrix: \(r.out)")
        XCTAssertTrue(r.out.contains("6/8 passed"), r.out)

        let doc = try XMLDocument(contentsOf: URL(fileURLWithPath: dir + "/junit.xml"), options: [])
        let root = try XCTUnwrap(doc.rootElement())
        XCTAssertEqual(root.name, "testsuites")
        XCTAssertEqual(root.attribute(forName: "tests")?.stringValue, "8")
        XCTAssertEqual(root.attribute(forName: "failures")?.stringValue, "2")
        let suites = root.elements(forName: "testsuite")
        XCTAssertEqual(suites.map { $0.attribute(forName: "name")?.stringValue }, ["demo", "failing <&>"])
        let demoCases = suites[0].elements(forName: "testcase")
        XCTAssertEqual(demoCases.compactMap { $0.attribute(forName: "name")?.stringValue },
                       ScenarioVariant.all(of: try Scenario(contentsOf: samplesDirectory + "/../../scenarios/demo.yaml")).map(\.description))
        XCTAssertTrue(demoCases.allSatisfy { $0.elements(forName: "failure").isEmpty })
        let failed = suites[1].elements(forName: "testcase")
        XCTAssertEqual(failed.count, 2)
        for c in failed {
            let message = try XCTUnwrap(c.elements(forName: "failure").first?.attribute(forName: "message")?.stringValue)
            XCTAssertTrue(message.hasPrefix("step 2 (read observed_toc == 1): observed_toc is 0"), message)
            XCTAssertTrue(try XCTUnwrap(c.elements(forName: "system-out").first?.stringValue).contains("ok   1. call fib(10) == 55"))
        }
        let json = try JSONDecoder().decode([ScenarioReport].self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/results.json")))
        XCTAssertEqual(json.count, 8)
        XCTAssertEqual(json.filter(\.passed).count, 6)
    }
}
