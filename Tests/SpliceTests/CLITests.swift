import Foundation
import Splice
import XCTest

/// The `splice` executable, run as a user would.
final class CLITests: XCTestCase {
    var splice: String {
        get throws {
            let dir = try XCTUnwrap(Samples.executableDirectory())
            let path = dir + "/splice"
            guard FileManager.default.isExecutableFile(atPath: path) else { throw XCTSkip("splice not built at \(path)") }
            return path
        }
    }

    func run(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try splice)
        p.arguments = arguments
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func testCallJSONOnBothISAs() throws {
        for image in [Samples.x86_64, Samples.ppc64le] {
            let r = try run(["call", samplePath(image), "add", "-7", "3", "--json"])
            XCTAssertEqual(r.status, 0, r.err)
            let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any])
            XCTAssertEqual(json["result"] as? Int, -4, image)
            XCTAssertGreaterThan(json["instructions"] as? Int ?? 0, 0, image)
        }
        let local = try run(["call", samplePath(Samples.ppc64le), "scaled", "0x10", "--entry", "local"])
        XCTAssertEqual(local.status, 0, local.err)
        XCTAssertTrue(local.out.hasPrefix("scaled(16) = 49"), local.out)
        XCTAssertTrue(local.out.contains("local entry"), local.out)
    }

    func testCallErrorsAreOneClearLine() throws {
        let missing = try run(["call", samplePath(Samples.x86_64), "no_such_function"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertEqual(missing.err, "splice: error: no function named no_such_function in \(samplePath(Samples.x86_64))\n")
        let fault = try run(["call", samplePath(Samples.ppc64le), "peek", "0x1234"])
        XCTAssertEqual(fault.status, 1)
        XCTAssertTrue(fault.err.contains("read of unmapped memory") && fault.err.contains("0x1234"), fault.err)
        let notELF = try run(["call", samplePath("oracle-x86_64.txt"), "add"])
        XCTAssertEqual(notELF.err, "splice: error: not an ELF file (no \\x7fELF magic at offset 0)\n")
    }

    func testInspectShowsPPC64LESitesAndTOCAddi() throws {
        let r = try run(["inspect", samplePath(Samples.ppc64le), "-f", "scaled"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("site mcount-call"), r.out)
        XCTAssertTrue(r.out.contains("site toc-addi") && r.out.contains("at site-8"), r.out)
        XCTAssertTrue(r.out.contains("local 0x100003c8 (+8)") || r.out.contains("(+8)"), r.out)
        let json = try run(["inspect", samplePath(Samples.x86_64Fentry), "--json"])
        let report = try JSONDecoder().decode(ImageReport.self, from: Data(json.out.utf8))
        XCTAssertEqual(report.architecture, "x86_64")
    }
}
