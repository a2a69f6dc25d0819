import CUnicorn
@testable import SpliceMachine
import Splice
import XCTest

/// The Unicorn 2.0.1 MSR[HV] workaround (arch/ppc64le/UnicornPPC64LEBringUp.swift).
/// If a Unicorn update changes the CPU state layout, these fail with the reason.
final class PPC64LEBringUpTests: XCTestCase {
    /// li r3,5; rldicr r3,r3,40,23; addi r3,r3,7; ld r4,0x100(r5); nop
    static let probeCode: [UInt32] = [0x3860_0005, 0x7863_45c6, 0x3863_0007, 0xe885_0100, 0x6000_0000]

    func runProbe(on architecture: any CPUArchitecture) throws -> (r3: UInt64, r4: UInt64) {
        let machine = try Machine(architecture: architecture)
        let code = try machine.map(name: "code", at: 0x10_0000, size: machine.memory.pageSize, permissions: .all)
        try machine.memory.write(code.base, Self.probeCode.flatMap(PPC64LEInstruction.bytes))
        try machine.memory.write(code.base + 0x200, [1, 2, 3, 4, 5, 6, 7, 8])
        let cpu = machine.vcpus[0]
        try cpu.write(PPC64LERegisters.gpr(5), code.base + 0x100)
        _ = try cpu.run(from: code.base, until: code.base + 16)
        return (try cpu.read(PPC64LERegisters.r3), try cpu.read(PPC64LERegisters.gpr(4)))
    }

    func testWorkaroundFindsBothMSRCopiesAndSetsTheWantedMSR() throws {
        let emulator = try Emulator(PPC64LEArchitecture().emulatorConfiguration)
        let offsets = try UnicornPPC64LEBringUp.setMachineStateRegister(emulator, to: UnicornPPC64LEBringUp.compiledCodeMSR)
        XCTAssertEqual(offsets.count, 2, "env->msr and env->hflags")
        XCTAssertEqual(try emulator.read(PPC64LERegisters.msr), 0x9000_0000_0280_3001)
    }

    func testLittleEndian64BitCodeRunsAfterTheWorkaround() throws {
        let (r3, r4) = try runProbe(on: PPC64LEArchitecture())
        XCTAssertEqual(r3, 0x500_0000_0007, "64-bit arithmetic")
        XCTAssertEqual(r4, 0x0807_0605_0403_0201, "little-endian ld of bytes 01..08")
    }

    /// Without the workaround the same code does not run: every fetch raises HISI (70).
    /// If this starts passing code, Unicorn changed and the workaround may be removable.
    func testWithoutTheWorkaroundFetchesFault() throws {
        XCTAssertThrowsError(try runProbe(on: PPC64LEWithoutBringUp())) { error in
            guard let fault = error as? GuestFault, case let .interrupt(number, _) = fault.kind else {
                return XCTFail("expected an interrupt, got \(error)")
            }
            XCTAssertEqual(number, 70, "hypervisor instruction storage interrupt")
        }
    }

    /// Compiled code needs FP and VSX on: the MSR the workaround sets has them.
    func testCompiledCodeMSRBits() {
        let msr = UnicornPPC64LEBringUp.compiledCodeMSR
        for (bit, name) in [(63, "SF"), (60, "HV"), (25, "VEC"), (23, "VSX"), (13, "FP"), (12, "ME"), (0, "LE")] {
            XCTAssertNotEqual(msr & (1 << UInt64(bit)), 0, name)
        }
        XCTAssertEqual(msr & (1 << 14), 0, "PR stays 0: problem state faults every fetch in Unicorn")
    }
}

/// ppc64le exactly as shipped, minus the bring-up.
struct PPC64LEWithoutBringUp: CPUArchitecture {
    let base = PPC64LEArchitecture()
    var name: String { base.name }
    var elfMachine: UInt16 { base.elfMachine }
    var disassemblyMode: DisassemblyMode { base.disassemblyMode }
    var emulatorConfiguration: EmulatorConfiguration { base.emulatorConfiguration }
    var programCounter: CPURegister { base.programCounter }
    var stackPointer: CPURegister { base.stackPointer }
    var returnValueRegister: CPURegister { base.returnValueRegister }
    var trapInstruction: [UInt8] { base.trapInstruction }
    var argumentRegisters: [CPURegister] { base.argumentRegisters }
    var returnInstruction: [UInt8] { base.returnInstruction }
    var layout: GuestLayout { base.layout }
    func bringUp(_ emulator: Emulator) throws {}
    func prepareCall(_ emulator: Emulator, memory: GuestMemory, entry: CallEntry, arguments: [UInt64],
                     stackTop: UInt64, returnAddress: UInt64) throws {
        try base.prepareCall(emulator, memory: memory, entry: entry, arguments: arguments, stackTop: stackTop,
                             returnAddress: returnAddress)
    }
    func entries(of symbol: ELFSymbol, in image: ELFFile) -> [CallEntry] { base.entries(of: symbol, in: image) }
    func describeInterrupt(_ number: UInt32) -> String { base.describeInterrupt(number) }
    func faultingInstruction(interrupt number: UInt32, reportedPC: UInt64) -> UInt64 {
        base.faultingInstruction(interrupt: number, reportedPC: reportedPC)
    }
    func prologueSites(of symbol: ELFSymbol, code: [UInt8], in image: ELFFile) -> [PrologueSite] {
        base.prologueSites(of: symbol, code: code, in: image)
    }
    func liveCodeAddresses(_ emulator: Emulator, memory: GuestMemory, stackTop: UInt64, functions: FunctionMap?) throws -> [UInt64] {
        try base.liveCodeAddresses(emulator, memory: memory, stackTop: stackTop, functions: functions)
    }
}
