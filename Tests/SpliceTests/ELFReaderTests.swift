import Splice
import XCTest

final class ELFReaderTests: XCTestCase {
    func testEverySampleImageParses() throws {
        let expectedMachine: [String: UInt16] = [
            Samples.x86_64: ELFMachine.x86_64, Samples.x86_64Fentry: ELFMachine.x86_64, Samples.ppc64le: ELFMachine.ppc64,
            "kernel-x86_64.o": ELFMachine.x86_64, "kernel-ppc64le.o": ELFMachine.ppc64,
        ]
        for (name, machine) in expectedMachine {
            let elf = try ELFFile(contentsOf: samplePath(name))
            XCTAssertEqual(elf.header.machine, machine, name)
            XCTAssertNotNil(elf.section(named: ".text"), name)
            XCTAssertNotNil(elf.section(named: ".symtab"), name)
            for f in ["add", "fib", "scaled", "apply_op", "mix_loop", "kernel_main"] {
                XCTAssertNotNil(elf.symbol(named: f), "\(name): \(f)")
            }
            if name.hasSuffix(".elf") {
                XCTAssertEqual(elf.header.type, .executable, name)
                XCTAssertEqual(elf.buildID?.count, 20, "\(name): sha1 build id")
                let text = try XCTUnwrap(elf.section(named: ".text"))
                let loads = elf.segments.filter(\.isLoad)
                XCTAssertFalse(loads.isEmpty, name)
                // .text lies in an executable PT_LOAD whose bytes match the section's.
                let seg = try XCTUnwrap(loads.first { $0.virtualAddress <= text.address
                    && text.address + text.size <= $0.virtualAddress + $0.fileSize }, name)
                XCTAssertNotEqual(seg.flags & ELFSegment.flagExecute, 0, name)
                let start = Int(text.address - seg.virtualAddress)
                XCTAssertEqual(Array(seg.data[start..<start + Int(text.size)]), text.data, name)
            } else {
                XCTAssertEqual(elf.header.type, .relocatable, name)
            }
        }
    }

    func testBuildIDMatchesReadelf() throws {
        // Values printed by `readelf -n` for the committed images; the build script
        // makes them reproducible, so a change here means the samples changed.
        for name in [Samples.x86_64, Samples.ppc64le] {
            let elf = try ELFFile(contentsOf: samplePath(name))
            let note = try XCTUnwrap(elf.notes.first { $0.owner == "GNU" && $0.type == ELFNote.gnuBuildID })
            XCTAssertEqual(note.sectionName, ".note.gnu.build-id")
            XCTAssertEqual(elf.buildIDHex?.count, 40)
        }
    }

    func testPPC64LocalEntriesFromStOther() throws {
        let elf = try ELFFile(contentsOf: samplePath(Samples.ppc64le))
        XCTAssertEqual(elf.header.abiVersion, 2, "ELFv2")
        // TOC users: global entry computes r2, local entry 8 bytes later.
        for name in ["scaled", "scaled_twice", "fib", "apply_op", "counter_add", "greeting_sum"] {
            let s = try XCTUnwrap(elf.symbol(named: name))
            XCTAssertEqual(s.localEntryOffset, 8, name)
            XCTAssertEqual(s.other >> 5, 3, "\(name): st_other local-entry field 3 means 8 bytes")
        }
        // No TOC use: one entry.
        for name in ["add", "identity", "mix_loop", "gcd", "checked_double"] {
            XCTAssertEqual(try XCTUnwrap(elf.symbol(named: name)).localEntryOffset, 0, name)
        }
        // x86-64 has no such field.
        let x86 = try ELFFile(contentsOf: samplePath(Samples.x86_64))
        XCTAssertTrue(x86.functions.allSatisfy { $0.localEntryOffset == 0 })
    }

    func testRELARelocationsOfBothISAs() throws {
        let x86 = try ELFFile(contentsOf: samplePath("kernel-x86_64.o"))
        let rx = try XCTUnwrap(x86.relocationSections.first { $0.name == ".rela.text" })
        XCTAssertTrue(rx.hasAddends)
        XCTAssertEqual(x86.sections[rx.targetSectionIndex].name, ".text")
        let symtab = x86.symbols
        // scaled reads scale_factor rip-relative: R_X86_64_PC32 (2) against scale_factor, addend -4 or less.
        let scaleRelocs = rx.entries.filter { symtab[Int($0.symbolIndex)].name == "scale_factor" }
        XCTAssertFalse(scaleRelocs.isEmpty)
        XCTAssertTrue(scaleRelocs.allSatisfy { $0.type == 2 && ($0.addend ?? 0) <= -4 })

        let ppc = try ELFFile(contentsOf: samplePath("kernel-ppc64le.o"))
        let rp = try XCTUnwrap(ppc.relocationSections.first { $0.name == ".rela.text" })
        // Every -mprofile-kernel function calls _mcount: R_PPC64_REL24 (10).
        let mcount = rp.entries.filter { ppc.symbols[Int($0.symbolIndex)].name == "_mcount" }
        XCTAssertGreaterThanOrEqual(mcount.count, 15)
        XCTAssertTrue(mcount.allSatisfy { $0.type == 10 && $0.addend == 0 })
        // The global entry's TOC setup: R_PPC64_REL16_HA (252) / REL16_LO (250) against .TOC. (+4 for the addi)
        let toc = rp.entries.filter { ppc.symbols[Int($0.symbolIndex)].name == ".TOC." }
        XCTAssertTrue(toc.contains { $0.type == 252 && $0.addend == 0 } && toc.contains { $0.type == 250 && $0.addend == 4 })
    }

    func testRELRelocationsWithoutAddends() throws {
        var b = TestELFBuilder()
        let strtab: [UInt8] = [0] + Array("target".utf8) + [0]
        b.sections = [
            .init(name: ".text", type: ELFSection.typeProgBits, data: [0xe8, 0, 0, 0, 0, 0xc3], flags: 6),
            .init(name: ".symtab", type: ELFSection.typeSymTab,
                  data: TestELFBuilder.symbol(name: 0, info: 0, section: 0, value: 0, size: 0)
                      + TestELFBuilder.symbol(name: 1, info: 0x12, section: 1, value: 0, size: 6),
                  link: 3, info: 1, entrySize: 24),
            .init(name: ".strtab", type: ELFSection.typeStrTab, data: strtab),
            .init(name: ".rel.text", type: ELFSection.typeRel,
                  data: TestELFBuilder.rel(offset: 1, symbol: 1, type: 2) + TestELFBuilder.rel(offset: 5, symbol: 0, type: 0),
                  link: 2, info: 1, entrySize: 16),
        ]
        let elf = try ELFFile(bytes: b.build(), name: "rel.o")
        let rel = try XCTUnwrap(elf.relocationSections.first)
        XCTAssertEqual(rel.name, ".rel.text")
        XCTAssertFalse(rel.hasAddends)
        XCTAssertEqual(rel.entries, [ELFRelocation(offset: 1, type: 2, symbolIndex: 1, addend: nil),
                                     ELFRelocation(offset: 5, type: 0, symbolIndex: 0, addend: nil)])
        XCTAssertEqual(elf.symbols[1].name, "target")
        XCTAssertEqual(elf.symbols[1].binding, .global)
        XCTAssertEqual(elf.symbols[1].kind, .function)
    }
}
