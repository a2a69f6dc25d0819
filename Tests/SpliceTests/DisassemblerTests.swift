import Splice
import XCTest

final class DisassemblerTests: XCTestCase {
    func testX86_64JumpsDecodeToAbsoluteTargets() throws {
        let d = try Disassembler(mode: .x86_64)
        let jmp = try XCTUnwrap(d.decodeOne([0xe9, 0xfb, 0x0f, 0x00, 0x00], address: 0x1000))
        XCTAssertEqual(jmp.text, "jmp 0x2000")
        XCTAssertEqual(jmp.size, 5)
        XCTAssertEqual(jmp.bytesHex, "e9 fb 0f 00 00")
        let far = try XCTUnwrap(d.decodeOne([0xff, 0x25, 0, 0, 0, 0], address: 0x1000))
        XCTAssertEqual(far.text, "jmp qword ptr [rip]")
        XCTAssertEqual(try XCTUnwrap(d.decodeOne([0xf3, 0x0f, 0x1e, 0xfa], address: 0)).mnemonic, "endbr64")
    }

    func testPPC64LEDecodesLittleEndianWords() throws {
        let d = try Disassembler(mode: .ppc64le)
        // The sample's add: mflr r0; bl _mcount (at 0x100001ac).
        let elf = try ELFFile(contentsOf: samplePath(Samples.ppc64le))
        let add = try XCTUnwrap(elf.symbol(named: "add"))
        let mcount = try XCTUnwrap(elf.symbol(named: "_mcount"))
        let insns = d.decode(try elf.bytes(of: add), address: add.value, count: 4)
        XCTAssertEqual(insns.map(\.text), ["mflr r0", "bl \(hex(mcount.value))", "add r3, r3, r4", "blr"])
        XCTAssertEqual(insns[0].bytes, [0xa6, 0x02, 0x08, 0x7c])
    }

    func testUndecodableWordsDoNotStopTheListing() throws {
        let ppc = try Disassembler(mode: .ppc64le)
        let listing = ppc.decode([0, 0, 0, 0] + PPC64LEInstruction.bytes(PPC64LEInstruction.nop), address: 0x100)
        XCTAssertEqual(listing.map(\.text), [".long 0x0", "nop"])
        XCTAssertFalse(listing[0].isValid)
        XCTAssertEqual(listing[1].address, 0x104)
        let x86 = try Disassembler(mode: .x86_64)
        let bytes = x86.decode([0x06, 0x90], address: 0) // 0x06 (push es) is invalid in 64-bit mode
        XCTAssertEqual(bytes.map(\.text), [".byte 0x6", "nop"])
    }

    func testDisassembleGuestMemory() throws {
        let loaded = try loadImage(path: samplePath(Samples.x86_64))
        let identity = try loaded.function(named: "identity")
        let insns = try loaded.machine.disassemble(at: identity.value, count: 2)
        XCTAssertEqual(insns.map(\.text), ["mov rax, rdi", "ret"])
        XCTAssertEqual(insns.map(\.size).reduce(0, +), 4, "identity is shorter than a 5-byte jmp")
    }
}

/// The instruction words Splice writes or matches by hand, refereed by Capstone.
final class InstructionConstantTests: XCTestCase {
    func testPPC64LEConstantsDecodeAsNamed() throws {
        let d = try Disassembler(mode: .ppc64le)
        let expected: [(UInt32, String)] = [
            (PPC64LEInstruction.nop, "nop"), (PPC64LEInstruction.trap, "trap"),
            (PPC64LEInstruction.mflrR0, "mflr r0"), (PPC64LEInstruction.stdR0_16R1, "std r0, 0x10(r1)"),
        ]
        for (word, text) in expected {
            XCTAssertEqual(d.decodeOne(PPC64LEInstruction.bytes(word), address: 0)?.text, text)
        }
    }

    /// Splice's own `bl` target decoding agrees with Capstone on every `bl` in the sample,
    /// including backward branches (negative displacements).
    func testBranchTargetsAgreeWithCapstone() throws {
        let elf = try ELFFile(contentsOf: samplePath(Samples.ppc64le))
        let text = try XCTUnwrap(elf.section(named: ".text"))
        let d = try Disassembler(mode: .ppc64le)
        var checked = 0, backward = 0
        for offset in stride(from: 0, to: text.data.count - 3, by: 4) {
            let address = text.address + UInt64(offset)
            let word = PPC64LEInstruction.word(text.data, at: offset)
            guard let target = PPC64LEInstruction.branchAndLinkTarget(word, at: address) else { continue }
            let insn = try XCTUnwrap(d.decodeOne(Array(text.data[offset..<offset + 4]), address: address))
            XCTAssertEqual(insn.text, "bl \(hex(target))")
            checked += 1
            if target < address { backward += 1 }
        }
        XCTAssertGreaterThan(checked, 20)
        XCTAssertGreaterThan(backward, 10, "the bl _mcount calls go backwards")
    }

    func testX86_64PrologueConstants() throws {
        let d = try Disassembler(mode: .x86_64)
        XCTAssertEqual(d.decodeOne([0xf3, 0x0f, 0x1e, 0xfa], address: 0)?.text, "endbr64")
        let nop = try XCTUnwrap(d.decodeOne([0x0f, 0x1f, 0x44, 0x00, 0x00], address: 0))
        XCTAssertEqual(nop.mnemonic, "nop")
        XCTAssertEqual(nop.size, 5)
    }

    func testSignedImmediateOfTheTOCAddi() {
        // addi r2,r2,-32000 and +32512: Capstone 4 prints SI unsigned, Splice sign-extends.
        XCTAssertEqual(PPC64LEInstruction.signedImmediate(0x3842_8300), -32000)
        XCTAssertEqual(PPC64LEInstruction.signedImmediate(0x3842_7f00), 32512)
    }
}
