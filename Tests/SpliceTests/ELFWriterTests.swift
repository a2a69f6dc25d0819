import Foundation
import Splice
import XCTest

final class ELFWriterTests: XCTestCase {
    func sampleObject() throws -> [UInt8] {
        var w = ELFWriter(machine: ELFMachine.x86_64)
        let text = w.add(.init(name: ".text.f", flags: ELFSection.flagAlloc | ELFSection.flagExecInstr,
                               data: [0xe8, 0, 0, 0, 0, 0xc3], alignment: 16))
        let bss = w.add(.init(name: ".bss.n", type: ELFSection.typeNoBits, flags: ELFSection.flagAlloc | ELFSection.flagWrite,
                              size: 64, alignment: 8))
        let note = w.add(.init(name: ".note.gnu.build-id", type: ELFSection.typeNote, flags: ELFSection.flagAlloc,
                               data: ELFWriter.note(owner: "GNU", type: 3, descriptor: Array(0..<20)), alignment: 4))
        let g = w.add(.init(name: "g", type: ELFWriter.Symbol.function, binding: ELFWriter.Symbol.global, section: nil))
        _ = w.add(.init(name: "f", value: 0, size: 6, type: ELFWriter.Symbol.function, binding: ELFWriter.Symbol.global, section: text))
        let sec = w.add(.init(name: "", type: ELFWriter.Symbol.sectionType, binding: ELFWriter.Symbol.local, section: bss))
        w.relocate(section: text, .init(offset: 1, type: 4, symbol: g, addend: -4))
        w.relocate(section: text, .init(offset: 1, type: 2, symbol: sec, addend: 8))
        _ = note
        return try w.write()
    }

    func testRoundTripThroughTheReader() throws {
        let elf = try ELFFile(bytes: try sampleObject(), name: "written.o")
        XCTAssertEqual(elf.header.type, .relocatable)
        XCTAssertEqual(elf.header.machine, ELFMachine.x86_64)
        XCTAssertEqual(elf.section(named: ".text.f")?.data, [0xe8, 0, 0, 0, 0, 0xc3])
        XCTAssertEqual(elf.section(named: ".bss.n")?.size, 64)
        XCTAssertEqual(elf.buildID, Array(0..<20))
        // Locals come first in the written table; relocations follow their symbols.
        XCTAssertEqual(elf.symbols.map(\.name), ["", "", "g", "f"])
        let rela = try XCTUnwrap(elf.relocationSections.first)
        XCTAssertEqual(rela.name, ".rela.text.f")
        XCTAssertEqual(elf.sections[rela.targetSectionIndex].name, ".text.f")
        XCTAssertEqual(rela.entries.map { elf.symbols[Int($0.symbolIndex)].name }, ["g", ""])
        XCTAssertEqual(rela.entries.map(\.addend), [-4, 8])
        XCTAssertEqual(elf.symbols[1].kind, .section)
        XCTAssertEqual(elf.sections[Int(elf.symbols[1].sectionIndex)].name, ".bss.n")
    }

    /// binutils' readelf reads the file without a warning.
    func testReadelfAcceptsIt() throws {
        guard let readelf = which("readelf") else { throw XCTSkip("readelf not installed") }
        let path = NSTemporaryDirectory() + "splice-writer-test.o"
        try Data(try sampleObject()).write(to: URL(fileURLWithPath: path))
        defer { unlink(path) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: readelf)
        p.arguments = ["-a", "-W", path]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        XCTAssertEqual(e, "", "readelf warnings")
        XCTAssertTrue(o.contains("R_X86_64_PLT32") && o.contains("g - 4"), o)
    }
}
