import Splice
import XCTest

/// Every sequence the x86-64 backend emits, decoded back by Capstone: the encoders are
/// hand-written, Capstone is the referee.
final class X86_64EncoderTests: XCTestCase {
    typealias E = X86_64TrampolineEncoder
    let capstone = try! Disassembler(mode: .x86_64)

    func testNearJumpRoundTrip() throws {
        let sites: [UInt64] = [0x40_1000, 0x7fff_0000, 0x1_0000_0000]
        let displacements: [Int64] = [0, 1, -5, -6, 127, 128, -129, 0x7fff_ffff, -0x8000_0000, 0x1234_5678, -0x1234_5678]
        for site in sites {
            for d in displacements {
                let target = UInt64(bitPattern: Int64(bitPattern: site + 5) + d)
                let bytes = try XCTUnwrap(E.nearJump(from: site, to: target), "d=\(d)")
                let insn = try XCTUnwrap(capstone.decodeOne(bytes, address: site))
                XCTAssertEqual(insn.size, 5, "d=\(d): always the e9 form, never a short jmp")
                XCTAssertEqual(insn.text, "jmp \(hex(target))", "d=\(d)")
            }
            // One byte beyond the reach either way: no rel32 encoding.
            XCTAssertNil(E.nearJump(from: site, to: site + 5 + 0x8000_0000))
            XCTAssertNil(E.nearJump(from: site + 0x1_0000_0000, to: site + 0x1_0000_0000 + 5 - 0x8000_0001))
        }
    }

    func testAbsoluteJumpRoundTrip() throws {
        for target: UInt64 in [0, 0x2_0000_0000, 0x7fff_ffff_f000, 0xffff_ffff_ffff_fff0] {
            let bytes = E.absoluteJump(to: target)
            XCTAssertEqual(bytes.count, E.absoluteJumpSize)
            let insn = try XCTUnwrap(capstone.decodeOne(bytes, address: 0x1000))
            XCTAssertEqual(insn.text, "jmp qword ptr [rip]")
            XCTAssertEqual(insn.size, 6)
            // [rip] is the end of the instruction: the 8 bytes that follow are the target.
            let stored = bytes[6...].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            XCTAssertEqual(stored, target)
        }
    }

    func testNopFillIsOnlyNopsOfExactLength() throws {
        for length in 1...40 {
            let bytes = E.nopFill(length)
            XCTAssertEqual(bytes.count, length)
            let insns = capstone.decode(bytes, address: 0x1000)
            XCTAssertTrue(insns.allSatisfy { $0.isValid && $0.mnemonic == "nop" }, "\(length): \(insns.map(\.text))")
            XCTAssertEqual(insns.map(\.size).reduce(0, +), length)
            XCTAssertEqual(insns.count, (length + 8) / 9, "\(length): fewest instructions")
        }
        XCTAssertEqual(capstone.decodeOne([E.ret], address: 0)?.text, "ret")
    }

    /// Splice's relocator applied to the sample's object file, with the addresses the
    /// linker chose, reproduces the bytes the linker wrote into the executable.
    func testRelocationsReproduceTheLinker() throws {
        let obj = try ELFFile(contentsOf: samplePath("kernel-x86_64.o"))
        let exe = try ELFFile(contentsOf: samplePath(Samples.x86_64))
        let backend = X86_64PatchBackend()
        // Where each object section landed: from any named symbol it defines.
        func base(_ section: Int) -> UInt64? {
            guard let s = obj.symbols.first(where: { Int($0.sectionIndex) == section && !$0.name.isEmpty
                && ($0.kind == .function || $0.kind == .object) }),
                  let linked = exe.symbol(named: s.name) else { return nil }
            return linked.value - s.value
        }
        var checked: [UInt32: Int] = [:], skipped = 0
        for rs in obj.relocationSections {
            guard let placeBase = base(rs.targetSectionIndex) else { continue }
            var bytes = obj.sections[rs.targetSectionIndex].data
            for (i, r) in rs.entries.enumerated() {
                let sym = obj.symbols[Int(r.symbolIndex)]
                let value: UInt64
                if sym.kind == .section {
                    guard obj.sections[Int(sym.sectionIndex)].flags & 0x10 == 0, let b = base(Int(sym.sectionIndex)) else {
                        skipped += 1 // merged strings: the linker moves them
                        continue
                    }
                    value = b
                } else {
                    value = try XCTUnwrap(exe.symbol(named: sym.name), sym.name).value
                }
                let place = placeBase + r.offset
                try backend.relocate(type: r.type, addend: r.addend ?? 0, symbol: value, place: place, bytes: &bytes,
                                     offset: Int(r.offset), context: RelocationContext(section: rs.name, index: i, symbolName: sym.name))
                let width = r.type == 1 ? 8 : 4
                XCTAssertEqual(Array(bytes[Int(r.offset)..<Int(r.offset) + width]), exe.bytes(at: place, count: width),
                               "\(rs.name)[\(i)] type \(r.type) against \(sym.name)")
                checked[r.type, default: 0] += 1
            }
        }
        XCTAssertEqual(Set(checked.keys), [1, 2, 4, 11], "R_X86_64_64, PC32, PLT32, 32S all exercised")
        XCTAssertGreaterThan(checked.values.reduce(0, +), 25)
        XCTAssertLessThan(skipped, 6)
    }

    func testRelocationOverflowNamesTheRelocation() {
        var bytes = [UInt8](repeating: 0, count: 8)
        let context = RelocationContext(section: ".rela.text", index: 3, symbolName: "far_away")
        assertThrows(PatchError.relocationOverflow(section: ".rela.text", index: 3, symbol: "far_away",
                                                   type: "R_X86_64_PC32", value: 0x1_0000_0000 - 0x1000)) {
            try X86_64PatchBackend().relocate(type: 2, addend: 0, symbol: 0x1_0000_0000, place: 0x1000, bytes: &bytes,
                                              offset: 0, context: context)
        }
        XCTAssertEqual(bytes, [UInt8](repeating: 0, count: 8), "nothing written on overflow")
        assertThrows(PatchError.unsupportedRelocation(section: ".rela.text", index: 3, type: 37)) {
            try X86_64PatchBackend().relocate(type: 37, addend: 0, symbol: 0, place: 0, bytes: &bytes, offset: 0, context: context)
        }
    }
}
