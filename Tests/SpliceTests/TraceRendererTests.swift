import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Splice
import XCTest

/// An attribute's value. (swift-corelibs-foundation's `attribute(forName:)` finds nothing
/// on an element in a default namespace, as every SVG element is.)
func attribute(_ e: XMLElement, _ name: String) -> String? {
    e.attributes?.first { $0.name == name }?.stringValue
}

final class TraceRendererTests: XCTestCase {
    /// `splice trace` on 4 vCPUs: every action's timeline is well-formed SVG with one lane
    /// per vCPU, exactly one master patching; the report shows the sites in Capstone text.
    func testTheTimelineHasALanePerVCPUAndTheReportTheSites() throws {
        let dir = NSTemporaryDirectory() + "splice-trace-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let scenario = dir + "/four.yaml"
        try """
            name: four
            image: kernel-{isa}.elf
            cpus: 4
            return-strategy: frameless
            steps:
              - build: { id: p02, patch: 02-scaled-plus-two }
              - upload: p02
              - check: p02
              - apply: p02
              - run: { expect: 3x+2 }
              - revert: p02
            """.write(toFile: scenario, atomically: true, encoding: .utf8)
        let r = try runSplice(["trace", scenario, "-o", dir + "/out"])
        XCTAssertEqual(r.status, 0, r.out + r.err)

        for (isa, stem) in [("x86_64", "four-x86_64-stop"), ("ppc64le", "four-ppc64le-stop-frameless")] {
            let svgPath = dir + "/out/\(stem)-step4-apply-p02.svg"
            let doc = try XMLDocument(contentsOf: URL(fileURLWithPath: svgPath), options: [])
            let root = try XCTUnwrap(doc.rootElement())
            XCTAssertEqual(root.name, "svg")
            XCTAssertEqual(root.uri, "http://www.w3.org/2000/svg", "no SVG namespace")
            let width = try XCTUnwrap(Double(attribute(root, "width") ?? ""))
            let lanes = try root.nodes(forXPath: "//*[local-name()='g'][@class='lane']").compactMap { $0 as? XMLElement }
            XCTAssertEqual(lanes.compactMap { attribute($0, "data-vcpu") }, ["0", "1", "2", "3"], isa)
            var patching = 0
            for lane in lanes {
                let rects = lane.elements(forName: "rect")
                XCTAssertFalse(rects.isEmpty)
                var previousEnd = 0.0
                for rect in rects {
                    let x = try XCTUnwrap(Double(attribute(rect, "x") ?? ""))
                    let w = try XCTUnwrap(Double(attribute(rect, "width") ?? ""))
                    XCTAssertGreaterThan(w, 0)
                    XCTAssertLessThanOrEqual(x + w, width)
                    XCTAssertGreaterThanOrEqual(x + 0.01, previousEnd, "segments overlap in lane \(lane)")
                    previousEnd = x + w - 0.5 // a minimum-width sliver may poke past the next start
                    if attribute(rect, "class") == "patching" { patching += 1 }
                }
                let classes = rects.compactMap { attribute($0, "class") }
                XCTAssertEqual(classes.first, "running")
                XCTAssertEqual(classes.last, "running")
                XCTAssertTrue(classes.contains("waiting") && classes.contains("interrupts-off"), "\(classes)")
            }
            XCTAssertEqual(patching, 1, "exactly one vCPU (the master) patches")

            let report = try String(contentsOfFile: dir + "/out/\(stem).md", encoding: .utf8)
            XCTAssertTrue(report.contains("![rendezvous timeline of step 4](\(stem)-step4-apply-p02.svg)"))
            if isa == "x86_64" {
                XCTAssertTrue(report.range(of: #"jmp 0x[0-9a-f]+ <p02:scaled>"#, options: .regularExpression) != nil, report)
            } else {
                XCTAssertTrue(report.contains("<ftrace_caller>"), report)
                XCTAssertTrue(report.contains("addi r2, r2, 0x7f01"), report) // the odd-TOC mark
            }
        }
    }

    func testAVCPUThatNeverArrivedGetsAGreyLane() {
        var t = Rendezvous.Trace()
        t.vcpus = 3
        t.master = 1
        t.aborted = true
        t.abortedAt = 30_000
        t.perVCPU = [.init(index: 1, arrived: 1_000, interruptsOff: 0, released: 30_000, resumed: 31_000),
                     .init(index: 0, arrived: 2_000, interruptsOff: 0, released: 30_100, resumed: 31_500)]
        let lanes = TraceRenderer.lanes(t, end: 40_000)
        XCTAssertEqual(lanes.map(\.vcpu), [0, 1, 2])
        XCTAssertEqual(lanes[2].segments.map(\.activity), [.absent])
        XCTAssertEqual(lanes[2].segments.map(\.end), [40_000])
        XCTAssertEqual(lanes[0].segments.map(\.activity), [.running, .waiting, .resuming, .running])
        XCTAssertFalse(lanes.flatMap(\.segments).contains { $0.activity == .patching }, "an aborted rendezvous wrote nothing")
        XCTAssertTrue(TraceRenderer.svg(t, title: "a & b").contains("aborted at 30.0 µs"))
    }
}
