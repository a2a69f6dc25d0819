import Foundation
@testable import SpliceELF
import Splice
import XCTest

/// Debian's own kernels (scripts/kernels.sh): what Splice reads, runs and patches in them.
final class RealKernelTests: XCTestCase {
    /// Functions of size 0 get the distance to the next symbol of their section (to the
    /// section's end for the last), aliases the same; other symbols and sized functions keep
    /// theirs.
    func testSizesAreInferredFromTheNextSymbol() {
        let null = ELFSection(index: 0, name: "", type: 0, flags: 0, address: 0, offset: 0, size: 0, link: 0, info: 0,
                              alignment: 0, entrySize: 0, data: [])
        var text = null
        (text.index, text.name, text.type, text.flags, text.address, text.size) =
            (1, ".text", 1, ELFSection.flagAlloc | ELFSection.flagExecInstr, 0x1000, 0x60)
        func symbol(_ name: String, _ value: UInt64, _ size: UInt64, _ kind: ELFSymbol.Kind = .function) -> ELFSymbol {
            ELFSymbol(index: 0, name: name, value: value, size: size, kind: kind, binding: .global, other: 0, sectionIndex: 1,
                      localEntryOffset: 0)
        }
        let symbols = [symbol("a", 0x1000, 0), symbol("b", 0x1010, 0x20), symbol("alias_of_b", 0x1010, 0),
                       symbol("data", 0x1040, 0, .object), symbol("last", 0x1050, 0)]
        let inferred = ELFFile.inferringFunctionSizes(symbols, sections: [null, text])
        XCTAssertEqual(inferred.map(\.size), [0x10, 0x20, 0x30, 0, 0x10])
        XCTAssertEqual(inferred.map(\.sizeIsInferred), [true, false, true, false, true])
    }

    /// An amd64 image rebuilt from kallsyms (every symbol of size 0) shows its functions and
    /// runs them: gcd, lcm and int_sqrt of both Debian kernels against Python's math module.
    func testKallsymsImagesShowAndRunTheirFunctions() throws {
        let cases: [(String, [Int64])] = [("gcd", [12, 18]), ("gcd", [1_071, 462]), ("gcd", [0, 7]), ("lcm", [4, 6]),
                                           ("lcm", [21, 6]), ("int_sqrt", [1_000_000]), ("int_sqrt", [99]), ("int_sqrt", [1 << 40])]
        let expected = try python(cases.map { "\($0.0 == "int_sqrt" ? "isqrt" : $0.0)(\($0.1.map(String.init).joined(separator: ",")))" })
        for name in ["debian12-amd64", "debian13-amd64"] {
            let image = try loadImage(path: try KernelCorpus.path(name))
            XCTAssertGreaterThan(image.elf.functions.count, 40_000, name)
            let gcd = try XCTUnwrap(image.elf.symbol(named: "gcd"), name)
            XCTAssertTrue(gcd.sizeIsInferred, name)
            XCTAssertGreaterThan(gcd.size, 0, name)
            for ((function, arguments), value) in zip(cases, expected) {
                XCTAssertEqual(try image.call(function, arguments).signedValue, value, "\(name) \(function)\(arguments)")
            }
        }
    }

    /// Each kernel's own ftrace table is read (entries between __start_mcount_loc and
    /// __stop_mcount_loc, zero entries apart) and set against discovery; every difference
    /// names where it is and why. Where discovery stands today: see docs/real-kernels.md.
    func testTheKernelsOwnSiteTableIsReadAndComparedWithDiscovery() throws {
        for name in KernelCorpus.names {
            let elf = try ELFFile(contentsOf: try KernelCorpus.path(name))
            let table = try XCTUnwrap(elf.tracingSiteTable, name)
            let start = try XCTUnwrap(elf.symbol(named: "__start_mcount_loc")).value
            let stop = try XCTUnwrap(elf.symbol(named: "__stop_mcount_loc")).value
            XCTAssertEqual(table.addresses.count + table.zeroEntries, Int(stop - start) / 8, name)
            XCTAssertGreaterThan(table.addresses.count, 30_000, name)
            // Every entry lies in executable text.
            let text = elf.sections.filter { $0.isExecutable && $0.isAllocated }
            XCTAssertTrue(table.addresses.allSatisfy { a in text.contains { $0.contains(address: a) } }, name)
            let report = try XCTUnwrap(try Inspector.report(elf, prologueInstructions: 0).siteTable, name)
            XCTAssertEqual(report.found + report.missing.count, report.entries, name)
            XCTAssertTrue((report.missing + report.undiscovered + report.extra).allSatisfy { !$0.reason.isEmpty }, name)
            do {
                // Every entry is a tracing slot (-mprofile-kernel, fentry and the
                // -fpatchable-function-entry=2 prologue alike).
                XCTAssertEqual(report.missing.count, 0, "\(name): \(report.missing.prefix(3))")
                // Named exceptions, which the table rightly omits (docs/real-kernels.md):
                // int80_emulation starts with five one-byte nops (an assembly alternatives
                // placeholder); 6.12's __stack_chk_fail is noinstr, so objtool leaves its nop
                // but not its entry; 6.12 ppc64le's write_ciabr keeps the compiler's two nops
                // with no entry, and do_uaccess_flush is assembly starting with nops the
                // kernel rewrites for its uaccess-flush mitigation.
                let expected = ["debian12-amd64": ["int80_emulation+0x0"],
                                "debian13-amd64": ["__stack_chk_fail+0x4", "int80_emulation+0x0"],
                                "debian13-ppc64le": ["do_uaccess_flush+0x0", "write_ciabr+0x8"]][name] ?? []
                XCTAssertEqual(report.extra.map { $0.location ?? "?" }, expected, name)
            }
        }
    }

    /// Python's math module, evaluated once for all `expressions`.
    func python(_ expressions: [String]) throws -> [Int64] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", "from math import *\nfor e in \(expressions): print(eval(e))"]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap { Int64($0) }
    }
}
