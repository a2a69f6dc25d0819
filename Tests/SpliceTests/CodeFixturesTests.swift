import Splice
import XCTest

/// Each backend's code fixtures, run in its machine: the functions compute what they say,
/// and the hand-encoded instructions read back from Capstone as written.
final class CodeFixturesTests: XCTestCase {
    func testEachBackendsFixturesComputeWhatTheySay() throws {
        for backend in Architectures.backends {
            let isa = backend.architecture.name
            let image = try loadImage(path: samplePath("kernel-\(isa).elf"))
            let patcher = try LivePatcher(image: image, backend: backend)
            try patcher.redirect("scaled", toCode: backend.fixtures.addConstant(-7))
            XCTAssertEqual(try image.call("scaled", [100]).signedValue, 93, "\(isa) addConstant(-7)")
            try patcher.revert("scaled")
            try patcher.redirect("scaled", toCode: backend.fixtures.double(), at: 0x2_0000_0000)
            XCTAssertEqual(try image.call("scaled", [21]).signedValue, 42, "\(isa) double, far away")
            try patcher.revert("scaled")
            XCTAssertEqual(try image.call("scaled", [10]).signedValue, 31, "\(isa) scaled after both reverts")

            // The relocated fixture, through a payload: scaled(x) becomes x * scale_factor.
            let bytes = try PayloadBenchmark.generate(target: image.elf, count: 3)
            let loader = try PayloadLoader(patcher: patcher)
            let loaded = try loader.load(try Payload(bytes: bytes, name: "fixture-\(isa)"))
            try loader.apply(loaded)
            let scale = try image.machine.memory.readUInt64(try XCTUnwrap(image.elf.symbol(named: "scale_factor")).value)
            XCTAssertEqual(try image.call("scaled", [10]).signedValue, 10 * Int64(bitPattern: scale), "\(isa) multiplyByGlobal")
            try loader.revert(loaded)
            try loader.unload(loaded)
        }
    }

    func testTheHandEncodedInstructionsDecodeAsWritten() throws {
        let x86 = try Disassembler(mode: .x86_64)
        func text(_ d: Disassembler, _ bytes: [UInt8]) -> [String] { d.decode(bytes, address: 0x1000).map(\.text) }
        XCTAssertEqual(text(x86, X86_64CodeFixtures().addConstant(1000)), ["lea rax, [rdi + 0x3e8]", "ret"])
        XCTAssertEqual(text(x86, X86_64CodeFixtures().double()), ["mov rax, rdi", "add rax, rax", "ret"])
        XCTAssertEqual(text(x86, X86_64CodeFixtures().multiplyByGlobal("g").code),
                       ["mov rax, qword ptr [rip]", "imul rax, rdi", "ret"])
        let ppc = try Disassembler(mode: .ppc64le)
        // Capstone 4 shows addi's 16-bit immediate unsigned.
        XCTAssertEqual(text(ppc, PPC64LECodeFixtures().addConstant(-3)), ["addi r3, r3, 0xfffd", "blr"])
        XCTAssertEqual(text(ppc, PPC64LECodeFixtures().double()), ["add r3, r3, r3", "blr"])
        XCTAssertEqual(text(ppc, PPC64LECodeFixtures().multiplyByGlobal("g").code),
                       ["addis r2, r12, 0", "addi r2, r2, 0", "addis r9, r2, 0", "ld r9, 0(r9)", "mulld r3, r3, r9", "blr"])
    }
}
