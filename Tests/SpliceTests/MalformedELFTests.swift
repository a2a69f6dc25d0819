import Splice
import XCTest

/// Each malformed input fails with the specific error that names what is wrong.
final class MalformedELFTests: XCTestCase {
    func testTruncatedHeader() throws {
        let bytes = Array(try sampleBytes(Samples.x86_64).prefix(40))
        assertThrows(ELFError.truncatedHeader(fileSize: 40, needed: 64)) { _ = try ELFFile(bytes: bytes) }
    }

    func testNotELF() {
        assertThrows(ELFError.notELF) { _ = try ELFFile(bytes: Array("#!/bin/sh\necho hello, this is not ELF at all\n".utf8) + [UInt8](repeating: 0, count: 64)) }
    }

    func testSectionHeaderTableBeyondFile() throws {
        var bytes = try sampleBytes(Samples.x86_64)
        let count = Int(bytes.get16(60))
        bytes.put64(40, UInt64(bytes.count - 100)) // e_shoff: the table would run past the end
        assertThrows(ELFError.sectionHeaderTableOutOfBounds(offset: UInt64(bytes.count - 100), count: count,
                                                            entrySize: 64, fileSize: bytes.count)) {
            _ = try ELFFile(bytes: bytes)
        }
    }

    func testSectionContentsBeyondFile() throws {
        var bytes = try sampleBytes(Samples.ppc64le)
        let elf = try ELFFile(bytes: bytes)
        let text = try XCTUnwrap(elf.section(named: ".text"))
        let header = Int(bytes.get64(40)) + 64 * text.index
        bytes.put64(header + 24, UInt64(bytes.count - 16)) // sh_offset near the end, sh_size unchanged
        assertThrows(ELFError.sectionOutOfBounds(index: text.index, name: ".text",
                                                 offset: UInt64(bytes.count - 16), size: text.size, fileSize: bytes.count)) {
            _ = try ELFFile(bytes: bytes)
        }
    }

    func testHugeSegmentIsRefusedByTheLoader() throws {
        // p_memsz that asks for too much memory; a segment that would wrap the address space.
        for (vaddr, memsz, expectWrap) in [(nil, UInt64(8) << 30, false), (UInt64.max - 0x1000, UInt64(0x10000), true)] {
            var bytes = try sampleBytes(Samples.x86_64)
            let phoff = Int(bytes.get64(32))
            let elf0 = try ELFFile(bytes: bytes)
            let data = try XCTUnwrap(elf0.segments.last { $0.isLoad })
            bytes.put64(phoff + 56 * data.index + 40, memsz)
            if let v = vaddr { bytes.put64(phoff + 56 * data.index + 16, v) }
            if expectWrap {
                // Refused already by the ELF reader (a fuzzer finding: such ranges trapped).
                assertThrows(ELFError.addressRangeWraps(what: "segment [\(data.index)]", address: vaddr!, size: memsz)) {
                    _ = try ELFFile(bytes: bytes, name: "huge.elf")
                }
                continue
            }
            let elf = try ELFFile(bytes: bytes, name: "huge.elf")
            let machine = try Machine(architecture: X86_64Architecture())
            let before = machine.memory.regions.map(\.name)
            XCTAssertThrowsError(try machine.load(elf)) { error in
                guard let e = error as? MachineError else { return XCTFail("\(error)") }
                XCTAssertEqual(e, .imageTooLarge(image: "huge.elf", bytes: memsz, limit: Machine.maximumImageBytes))
            }
            XCTAssertEqual(machine.memory.regions.map(\.name), before, "nothing stays mapped")
        }
    }

    func testSymbolOutsideItsSectionIsRefusedByTheInspector() throws {
        var bytes = try sampleBytes(Samples.x86_64)
        let elf0 = try ELFFile(bytes: bytes)
        let symtab = try XCTUnwrap(elf0.section(named: ".symtab"))
        let add = try XCTUnwrap(elf0.symbol(named: "add"))
        bytes.put64(Int(symtab.offset) + 24 * add.index + 16, UInt64.max) // st_size
        let elf = try ELFFile(bytes: bytes)
        XCTAssertThrowsError(try Inspector.report(elf)) { error in
            XCTAssertTrue("\(error)".contains("add at \(hex(add.value)) size 18446744073709551615 lies outside its section .text"),
                          "\(error)")
        }
    }

    func testProgramHeaderTableBeyondFile() throws {
        var bytes = try sampleBytes(Samples.x86_64)
        let count = Int(bytes.get16(56))
        bytes.put64(32, UInt64(bytes.count)) // e_phoff at the end of the file
        assertThrows(ELFError.programHeaderTableOutOfBounds(offset: UInt64(bytes.count), count: count,
                                                            entrySize: 56, fileSize: bytes.count)) {
            _ = try ELFFile(bytes: bytes)
        }
    }

    func testWrongMachine() throws {
        let bytes = try sampleBytes(Samples.ppc64le)
        assertThrows(ELFError.wrongMachine(expected: ELFMachine.x86_64, found: ELFMachine.ppc64)) {
            _ = try ELFFile(bytes: bytes, expectedMachine: ELFMachine.x86_64)
        }
        // A machine of one ISA refuses an image of the other.
        let machine = try Machine(architecture: X86_64Architecture())
        let elf = try ELFFile(bytes: bytes, name: "ppc.elf")
        assertThrows(MachineError.wrongArchitecture(image: "ppc.elf", machine: ELFMachine.ppc64, architecture: "x86_64")) {
            _ = try machine.load(elf)
        }
        XCTAssertEqual(machine.memory.regions.map(\.name).filter { $0.hasPrefix("ppc") }, [], "nothing mapped")
        // An unknown e_machine is named in the error.
        var arm = bytes
        arm.put16(18, 183)
        XCTAssertThrowsError(try Architectures.forELF(ELFFile(bytes: arm, name: "arm.elf"))) { error in
            XCTAssertTrue("\(error)".contains("e_machine 183 (AArch64) is not supported"), "\(error)")
        }
    }

    func testBadStringTableIndex() throws {
        var bytes = try sampleBytes(Samples.x86_64)
        let count = Int(bytes.get16(60))
        bytes.put16(62, 200)
        assertThrows(ELFError.badStringTableIndex(index: 200, sectionCount: count)) { _ = try ELFFile(bytes: bytes) }
        // An index in range that names a section that is no string table.
        bytes.put16(62, 1)
        assertThrows(ELFError.badStringTableIndex(index: 1, sectionCount: count)) { _ = try ELFFile(bytes: bytes) }
    }

    func testUnsupportedClassAndEncoding() throws {
        var bytes = try sampleBytes(Samples.x86_64)
        bytes[4] = 1
        assertThrows(ELFError.unsupportedClass("EI_CLASS 1 is not ELFCLASS64")) { _ = try ELFFile(bytes: bytes) }
        bytes[4] = 2; bytes[5] = 2
        assertThrows(ELFError.unsupportedClass("EI_DATA 2 is not little-endian")) { _ = try ELFFile(bytes: bytes) }
    }

    func testBadSymbolNameAndRelocationSymbol() throws {
        func build(symbolName: UInt32, relocSymbol: UInt32) -> [UInt8] {
            var b = TestELFBuilder()
            b.sections = [
                .init(name: ".text", type: ELFSection.typeProgBits, data: [0xc3], flags: 6),
                .init(name: ".symtab", type: ELFSection.typeSymTab,
                      data: TestELFBuilder.symbol(name: 0, info: 0, section: 0, value: 0, size: 0)
                          + TestELFBuilder.symbol(name: symbolName, info: 0x12, section: 1, value: 0, size: 1),
                      link: 3, info: 1, entrySize: 24),
                .init(name: ".strtab", type: ELFSection.typeStrTab, data: [0, 0x66, 0]),
                .init(name: ".rel.text", type: ELFSection.typeRel,
                      data: TestELFBuilder.rel(offset: 0, symbol: relocSymbol, type: 1), link: 2, info: 1, entrySize: 16),
            ]
            return b.build()
        }
        XCTAssertNoThrow(try ELFFile(bytes: build(symbolName: 1, relocSymbol: 1)))
        assertThrows(ELFError.badSymbol(table: ".symtab", index: 1,
                                        reason: "bad name offset 99 into string table string table of .symtab of 3 bytes")) {
            _ = try ELFFile(bytes: build(symbolName: 99, relocSymbol: 1))
        }
        assertThrows(ELFError.badRelocation(section: ".rel.text", index: 0, reason: "symbol index 7 beyond 2 symbols")) {
            _ = try ELFFile(bytes: build(symbolName: 1, relocSymbol: 7))
        }
    }

    func testErrorMessagesSayWhatAndWhere() {
        XCTAssertEqual(ELFError.badStringTableIndex(index: 200, sectionCount: 12).description,
                       "bad string table index: e_shstrndx is 200 but the file has 12 sections")
        XCTAssertEqual(ELFError.sectionOutOfBounds(index: 2, name: ".text", offset: 0x1000, size: 0x20, fileSize: 100).description,
                       "section [2] .text: contents at offset 0x1000 size 0x20 run past the end of the file (100 bytes)")
    }

    /// Thousands of corrupted copies of each sample: every one is either read or refused
    /// with an ELFError; none crashes the process (which would end the test run).
    func testCorruptedImagesNeverCrash() throws {
        var rng = SplitMix64(seed: 0x5eed)
        var refused = 0, accepted = 0
        for name in [Samples.x86_64, Samples.ppc64le, "kernel-ppc64le.o"] {
            let original = try sampleBytes(name)
            // Corrupt the places that steer the reader: header, section headers, symbols.
            let shoff = Int(original.get64(40))
            for trial in 0..<700 {
                var bytes = original
                for _ in 0..<(1 + trial % 4) {
                    let zone = Int(rng.next() % 3)
                    let offset: Int
                    switch zone {
                    case 0: offset = Int(rng.next() % 64)
                    case 1: offset = shoff + Int(rng.next() % UInt64(original.count - shoff))
                    default: offset = Int(rng.next() % UInt64(original.count))
                    }
                    bytes[offset] = UInt8(truncatingIfNeeded: rng.next())
                }
                if trial % 50 == 0 { bytes = Array(bytes.prefix(Int(rng.next() % UInt64(bytes.count)))) }
                do {
                    let elf = try ELFFile(bytes: bytes)
                    accepted += 1
                    // What reads an accepted file must also refuse cleanly, never trap.
                    _ = try? Inspector.report(elf)
                    if let arch = try? Architectures.forELF(elf), let machine = try? Machine(architecture: arch) {
                        if let image = try? machine.load(elf) { _ = try? image.call("add", [1, 2], limits: .init(instructions: 10_000)) }
                    }
                } catch is ELFError {
                    refused += 1
                }
            }
        }
        XCTAssertGreaterThan(refused, 100, "the corruptions should be caught")
        XCTAssertGreaterThan(accepted, 0, "harmless corruptions (padding, code bytes) still read")
    }
}
