import Splice
import XCTest

/// Every ppc64le encoder, decoded back by Capstone (the referee). Expected texts are
/// written from the Power ISA, in Capstone 4's spelling (hex immediates; it prints some
/// negative immediates as unsigned 16-bit values, as noted where it matters).
final class PPC64LEEncoderTests: XCTestCase {
    typealias P = PPC64LEEncoder
    let capstone = try! Disassembler(mode: .ppc64le)

    func text(_ w: UInt32, at address: UInt64 = 0x1000) -> String? {
        capstone.decodeOne(PPC64LEInstruction.bytes(w), address: address)?.text
    }

    func testEveryFormDecodesAsWritten() {
        let cases: [(UInt32, String)] = [
            (P.addi(2, 2, 0x7f00), "addi r2, r2, 0x7f00"),
            (P.addi(11, 11, -16), "addi r11, r11, 0xfff0"), // Capstone 4 prints SI unsigned
            (P.addis(2, 12, 4), "addis r2, r12, 4"),
            (P.li(3, 5), "li r3, 5"),
            (P.lis(12, 0x1234), "lis r12, 0x1234"),
            (P.ori(12, 12, 0xbeef), "ori r12, r12, 0xbeef"),
            (P.oris(12, 12, 0x6000), "oris r12, r12, 0x6000"),
            (P.andiDot(11, 2, 1), "andi. r11, r2, 1"),
            (P.cmpdi(cr: 1, 11, 0), "cmpdi cr1, r11, 0"),
            (P.ld(2, 24, 1), "ld r2, 0x18(r1)"),
            (P.ld(11, 0, 13), "ld r11, 0(r13)"),
            (P.lwa(0, 12, 1), "lwa r0, 0xc(r1)"),
            (P.std(2, 24, 1), "std r2, 0x18(r1)"),
            (P.std(0, 8, 11), "std r0, 8(r11)"),
            (P.stw(0, 12, 1), "stw r0, 0xc(r1)"),
            (P.add(11, 11, 12), "add r11, r11, r12"),
            (P.subf(0, 0, 2), "subf r0, r0, r2"),
            (P.xor(2, 2, 11), "xor r2, r2, r11"),
            (P.mr(12, 11), "mr r12, r11"),
            (P.cmpd(cr: 1, 0, 12), "cmpd cr1, r0, r12"),
            (P.cmpld(cr: 1, 11, 12), "cmpld cr1, r11, r12"),
            (P.mflr(12), "mflr r12"),
            (P.mtlr(0), "mtlr r0"),
            (P.mfctr(12), "mfctr r12"),
            (P.mtctr(11), "mtctr r11"),
            (P.sldi(12, 12, 32), "sldi r12, r12, 0x20"),
            (P.rldicr(3, 3, 40, 23), "sldi r3, r3, 0x28"), // me = 63 − sh is the sldi alias
            (P.rldicl(11, 12, 62, 50), "rldicl r11, r12, 0x3e, 0x32"),
            (P.blr, "blr"), (P.bctr, "bctr"), (P.bctrl, "bctrl"), (P.nop, "nop"), (P.trap, "trap"),
        ]
        for (word, expected) in cases {
            XCTAssertEqual(text(word), expected, String(word, radix: 16))
        }
        XCTAssertEqual(P.rldicr(3, 3, 40, 23), 0x7863_45c6, "the probe's rldicr, bit for bit")
    }

    func testBranchesReachExactlyTheirRange() throws {
        let from: UInt64 = 0x1000_0000
        for offset: Int64 in [4, -4, 0x100, -0x1000, (1 << 25) - 4, -(1 << 25)] {
            let to = UInt64(bitPattern: Int64(from) + offset)
            XCTAssertEqual(text(try XCTUnwrap(P.branch(from: from, to: to, link: true)), at: from), "bl \(hex(to))")
            XCTAssertEqual(text(try XCTUnwrap(P.branch(from: from, to: to, link: false)), at: from), "b \(hex(to))")
        }
        XCTAssertNil(P.branch(from: from, to: from + (1 << 25), link: true), "one word past +32 MB")
        XCTAssertNil(P.branch(from: from, to: from - (1 << 25) - 4, link: true))
        XCTAssertNil(P.branch(from: from, to: from + 2, link: true), "unaligned")
        for (c, mnemonic) in [(P.Condition.eq, "beq"), (.ne, "bne"), (.lt, "blt"), (.ge, "bge")] {
            for cr in [0, 1] {
                let w = try XCTUnwrap(P.branchConditional(c, cr: cr, from: from, to: from + 0x40))
                let crText = cr == 0 ? "" : "cr1, "
                XCTAssertEqual(text(w, at: from), "\(mnemonic) \(crText)\(hex(from + 0x40))")
            }
        }
        XCTAssertNil(P.branchConditional(.eq, cr: 0, from: from, to: from + 0x8000))
    }

    /// Each constant-load sequence, run in the emulated CPU, leaves the constant.
    func testLoadImmediateRunsToTheValue() throws {
        let machine = try Machine(architecture: PPC64LEArchitecture())
        let code = try machine.map(name: "code", at: 0x10_0000, size: machine.memory.pageSize, permissions: .all)
        for value: UInt64 in [0, 5, 0xffff_ffff_ffff_fff0, 0x7fff, 0x8000, 0x6000_0000, 0x7fff_ffff, 0x8000_0000,
                              0x1_0000_0000, 0x3fff_fff8, 0x0bad_70c0_0bad_70c1, 0xffff_ffff_8000_0000] {
            let words = P.loadImmediate(12, value)
            XCTAssertLessThanOrEqual(words.count, 5)
            try machine.memory.write(code.base, words.flatMap(PPC64LEInstruction.bytes) + PPC64LEInstruction.bytes(P.nop))
            try machine.codeChanged(at: code.base, length: 4 * words.count + 4)
            _ = try machine.vcpus[0].run(from: code.base, until: code.base + UInt64(4 * words.count))
            XCTAssertEqual(try machine.vcpus[0].read(PPC64LERegisters.r12), value, String(value, radix: 16))
        }
    }

    func testAssemblerResolvesLabels() throws {
        let a = PPC64LEAssembler(base: 0x2000)
        a.bc(.eq, cr: 1, "out")
        a.b("out", link: true)
        a.emit(P.nop)
        a.label("out")
        a.emit(P.blr)
        let listing = capstone.decode(try a.assemble(), address: 0x2000).map(\.text)
        XCTAssertEqual(listing, ["beq cr1, 0x200c", "bl 0x200c", "nop", "blr"])
        let bad = PPC64LEAssembler(base: 0)
        bad.b("nowhere")
        XCTAssertThrowsError(try bad.assemble())
    }
}
