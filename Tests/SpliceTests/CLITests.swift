import Foundation
import Splice
import XCTest

/// The `splice` executable, run as a user would.
final class CLITests: XCTestCase {
    func run(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) { try runSplice(arguments) }

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

    /// Memory arguments: bytes, a string, a zeroed buffer and a symbol's address, passed by
    /// address; `--json` gives each buffer's bytes after the call.
    func testCallWithMemoryArguments() throws {
        func call(_ image: String, _ args: [String]) throws -> [String: Any] {
            let r = try run(["call", samplePath(image)] + args + ["--json"])
            XCTAssertEqual(r.status, 0, r.err)
            return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any])
        }
        for image in [Samples.x86_64, Samples.ppc64le] {
            let bytes = try call(image, ["peek", "x:0102030405060708"])
            XCTAssertEqual(bytes["result"] as? Int, 0x0807_0605_0403_0201, image)
            let string = try call(image, ["peek", "s:ABCDEFG"])
            XCTAssertEqual(string["result"] as? Int, 0x0047_4645_4443_4241, image)
            let output = try call(image, ["poke", "o:8", "42"])
            let buffers = try XCTUnwrap(output["buffers"] as? [[String: Any]], image)
            XCTAssertEqual(buffers.map { $0["hex"] as? String }, ["2a00000000000000"], image)
            XCTAssertEqual(buffers.first?["argument"] as? Int, 0, image)
            XCTAssertEqual((output["arguments"] as? [Int])?.first, buffers.first?["address"] as? Int, "\(image): the address passed")
            let symbol = try call(image, ["peek", "&scale_factor"])
            XCTAssertEqual(symbol["result"] as? Int, 3, image)
        }
        let bad = try run(["call", samplePath(Samples.x86_64), "peek", "x:123"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.err.contains("argument 'x:123': x: takes pairs of hex digits"), bad.err)
        let unknown = try run(["call", samplePath(Samples.x86_64), "peek", "&no_such_symbol"])
        XCTAssertEqual(unknown.err, "splice: error: no symbol named no_such_symbol\n")
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

/// `splice inspect --redirect`: the porting engineer's before/after view.
final class RedirectPreviewCLITests: XCTestCase {
    func testBeforeAndAfterView() throws {
        let r = try runSplice(["inspect", samplePath(Samples.x86_64), "--arch", "x86_64", "--redirect", "scaled=checked_double",
                             "--args", "10"])
        XCTAssertEqual(r.status, 0, r.err)
        let lines = r.out.split(separator: "\n").map(String.init)
        let after = try XCTUnwrap(lines.firstIndex { $0.hasPrefix("  after:") })
        XCTAssertTrue(lines[after + 1].contains("e9 ") && lines[after + 1].contains("jmp ") && lines[after + 1].contains("<checked_double>"),
                      lines[after + 1])
        let before = try XCTUnwrap(lines.firstIndex { $0.hasPrefix("  before:") })
        XCTAssertTrue(lines[before + 1].contains("imul"), lines[before + 1])
        XCTAssertTrue(r.out.contains("scaled(10) = 31 in 3 instructions before; 20 in 4 after"), r.out)
        XCTAssertTrue(r.out.contains("method: jmp rel32; +1"), r.out)

        let json = try runSplice(["inspect", samplePath(Samples.x86_64Fentry), "--redirect", "checked_double=0", "--json"])
        let preview = try JSONDecoder().decode(RedirectPreview.self, from: Data(json.out.utf8))
        XCTAssertEqual(preview.site.kind, PatchSite.Kind.patchableEntry)
        XCTAssertEqual(Array(preview.after.instructions.map { $0.text }.prefix(3)), ["endbr64", "ret", "nop dword ptr [rax]"])
    }

    func testWrongArchitectureAndBadSpecsAreClearErrors() throws {
        let ppc = try runSplice(["inspect", samplePath(Samples.ppc64le), "--arch", "x86_64", "--redirect", "scaled=add"])
        XCTAssertEqual(ppc.status, 1)
        XCTAssertTrue(ppc.err.contains("is PowerPC64, not x86_64"), ppc.err)
        let short = try runSplice(["inspect", samplePath(Samples.x86_64), "--redirect", "identity=add"])
        XCTAssertEqual(short.err, "splice: error: identity is too short to patch: 4 bytes at its patch site, jmp rel32 needs 5\n")
        let bad = try runSplice(["inspect", samplePath(Samples.x86_64), "--redirect", "scaled"])
        XCTAssertEqual(bad.status, 1)
    }
}

final class PPC64LERedirectPreviewCLITests: XCTestCase {
    func testSiteAndMarkBeforeAndAfter() throws {
        let r = try runSplice(["inspect", samplePath(Samples.ppc64le), "--arch", "ppc64le", "--redirect", "scaled=scaled_v2",
                               "--load", samplePath("patch-ppc64le.elf"), "--args", "10", "--instructions", "4"])
        XCTAssertEqual(r.status, 0, r.err)
        let lines = r.out.split(separator: "\n").map(String.init)
        let before = try XCTUnwrap(lines.firstIndex { $0.hasPrefix("  before:") })
        let after = try XCTUnwrap(lines.firstIndex { $0.hasPrefix("  after:") })
        XCTAssertTrue(lines[before + 2].hasSuffix("addi r2, r2, 0x7f00"), lines[before + 2])
        XCTAssertTrue(lines[before + 4].hasSuffix("nop"), lines[before + 4])
        XCTAssertTrue(lines[after + 2].hasSuffix("addi r2, r2, 0x7f01"), lines[after + 2])
        XCTAssertTrue(lines[after + 4].contains("bl 0x") && lines[after + 4].hasSuffix("<ftrace_caller>"), lines[after + 4])
        XCTAssertTrue(r.out.contains("<scaled_v2>   (site table: the new address)"), r.out)
        XCTAssertTrue(r.out.contains("scaled(10) = 31 in 9 instructions before; 1050 in"), r.out)
    }
}

final class PayloadCLITests: XCTestCase {
    func testBuildThenPatchWithOracleAndRevert() throws {
        for isa in ["x86_64", "ppc64le"] {
            let dir = samplePath("patches/02-scaled-plus-two")
            let out = NSTemporaryDirectory() + "splice-cli-02-\(isa).lp"
            defer { unlink(out) }
            let build = try runSplice(["build", "--original", "\(dir)/orig-\(isa).o", "--patched", "\(dir)/patched-\(isa).o",
                                       "--target", PayloadTests.targetPath(isa), "-o", out, "--json"])
            XCTAssertEqual(build.status, 0, build.err)
            let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(build.out.utf8)) as? [String: Any])
            XCTAssertEqual(report["changed"] as? [String], ["scaled"])
            let patch = try runSplice(["patch", PayloadTests.targetPath(isa), out, "--call", "scaled=10",
                                       "--oracle", "\(dir)/oracle-\(isa).txt", "--revert"])
            XCTAssertEqual(patch.status, 0, patch.err)
            XCTAssertTrue(patch.out.contains("scaled(10) = 32"), patch.out)
            XCTAssertTrue(patch.out.contains("29/29 calls agree"), patch.out)
            XCTAssertTrue(patch.out.contains("code bytes identical to before"), patch.out)
        }
        let wrong = try runSplice(["patch", PayloadTests.targetPath("x86_64"), samplePath(Samples.x86_64)])
        XCTAssertEqual(wrong.status, 1)
        XCTAssertTrue(wrong.err.contains("is ET_EXEC (executable), not a relocatable object"), wrong.err)
    }
}
