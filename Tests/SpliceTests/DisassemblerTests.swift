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
        let insns = d.decode(try Inspector.bytes(of: add, in: elf), address: add.value, count: 4)
        XCTAssertEqual(insns.map(\.text), ["mflr r0", "bl 0x\(String(mcount.value, radix: 16))", "add r3, r3, r4", "blr"])
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
