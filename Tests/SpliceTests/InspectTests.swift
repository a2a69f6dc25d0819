import Splice
import XCTest

/// `splice inspect`'s data: entries, live-patching landmarks, prologue listings.
final class InspectTests: XCTestCase {
    let kernelFunctions = ["add", "identity", "fib", "counter_add", "counter_get", "scaled", "scaled_twice",
                           "apply_op", "apply_unary", "greeting_sum", "greeting_len", "mix_loop", "gcd", "peek", "poke",
                           "kernel_main", "checked_double"]

    func testPPC64LEMcountSitesAndTOCSetup() throws {
        let report = try Inspector.report(try ELFFile(contentsOf: samplePath(Samples.ppc64le)))
        XCTAssertEqual(report.architecture, "ppc64le")
        for name in kernelFunctions {
            let f = try XCTUnwrap(report.functions.first { $0.name == name }, name)
            let site = try XCTUnwrap(f.sites.first { $0.kind == .mcountCall }, "\(name): mcount site")
            if let local = f.localEntry {
                let toc = try XCTUnwrap(f.sites.first { $0.kind == .tocSetup }, "\(name): toc addi")
                // Global entry pair, then mflr r0 at the local entry, then bl _mcount.
                XCTAssertEqual(local - f.address, 8, name)
                XCTAssertEqual(site.offset, 12, name)
                XCTAssertEqual(toc.offset, 4, name)
                XCTAssertTrue(toc.note.hasPrefix("addi r2,r2,"), "\(name): \(toc.note)")
                XCTAssertTrue(toc.note.contains("at site-8"), "\(name): \(toc.note)")
                XCTAssertTrue(f.prologue[1].text.hasPrefix("addi r2, r2"), "\(name): \(f.prologue[1].text)")
            } else {
                // No TOC: mflr r0 at offset 0, bl _mcount at 4, no odd-TOC mark needed.
                XCTAssertEqual(site.offset, 4, name)
                XCTAssertEqual(f.sites.map(\.kind), [.singleEntry, .mcountCall], name)
            }
            XCTAssertTrue(site.note.contains("bl _mcount"), "\(name): \(site.note)")
        }
        XCTAssertNotNil(report.functions.first { $0.name == "scaled" }?.localEntry)
        XCTAssertNil(report.functions.first { $0.name == "mix_loop" }?.localEntry)
    }

    func testX86_64FentrySitesAndEndbr() throws {
        let report = try Inspector.report(try ELFFile(contentsOf: samplePath(Samples.x86_64Fentry)))
        for name in kernelFunctions {
            let f = try XCTUnwrap(report.functions.first { $0.name == name }, name)
            let fentry = try XCTUnwrap(f.sites.first { $0.kind == .fentryCall }, "\(name): fentry site")
            XCTAssertEqual(fentry.offset, name == "checked_double" ? 4 : 0, name)
            XCTAssertEqual(f.sites.contains { $0.kind == .endbr }, name == "checked_double", name)
            XCTAssertTrue(f.prologue.first { $0.address == fentry.address }?.text.hasPrefix("call") ?? false, name)
        }
        // __mcount_loc (-mrecord-mcount) lists exactly the fentry call sites we find.
        let elf = try ELFFile(contentsOf: samplePath(Samples.x86_64Fentry))
        let loc = try XCTUnwrap(elf.section(named: "__mcount_loc"))
        let recorded = Set(stride(from: 0, to: loc.data.count, by: 8).map { o in
            (0..<8).reduce(UInt64(0)) { $0 | UInt64(loc.data[o + $1]) << (8 * UInt64($1)) }
        })
        let found = Set(report.functions.flatMap { $0.sites.filter { $0.kind == .fentryCall }.map(\.address) })
        XCTAssertEqual(found, recorded)
    }

    func testX86_64PlainImage() throws {
        let report = try Inspector.report(try ELFFile(contentsOf: samplePath(Samples.x86_64)))
        let identity = try XCTUnwrap(report.functions.first { $0.name == "identity" })
        XCTAssertLessThan(identity.size, 5, "a function too short for jmp rel32")
        XCTAssertEqual(report.functions.first { $0.name == "checked_double" }?.sites.map(\.kind), [.endbr])
        XCTAssertTrue(report.functions.filter { $0.name != "checked_double" }.allSatisfy { $0.sites.isEmpty })
    }
}
