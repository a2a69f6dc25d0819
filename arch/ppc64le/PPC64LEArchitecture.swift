import CCapstone
import CUnicorn
import SpliceDisassembly
import SpliceELF
import SpliceMachine

/// ppc64le, ELFv2 ABI, run in Unicorn 2.0.1's PPC64 emulator (see `UnicornPPC64LEBringUp`
/// for why that needs care).
extension DisassemblyMode {
    public static let ppc64le = DisassemblyMode(
        arch: CS_ARCH_PPC, mode: cs_mode(CS_MODE_64.rawValue | CS_MODE_LITTLE_ENDIAN.rawValue),
        undecodableUnit: 4, description: "ppc64le")
}

public struct PPC64LEArchitecture: CPUArchitecture {
    public init() {}

    public let name = "ppc64le"
    public let elfMachine = ELFMachine.ppc64
    public let disassemblyMode = DisassemblyMode.ppc64le
    // Unicorn has no little-endian PPC mode: open big-endian, then set MSR[LE].
    public let emulatorConfiguration = EmulatorConfiguration(
        arch: UC_ARCH_PPC, mode: uc_mode(UC_MODE_PPC64.rawValue | UC_MODE_BIG_ENDIAN.rawValue))
    public let programCounter = CPURegister(UC_PPC_REG_PC.rawValue, "pc")
    public let stackPointer = PPC64LERegisters.r1
    public let returnValueRegister = PPC64LERegisters.r3
    /// `trap` (tw 31,0,0), little-endian.
    public let trapInstruction: [UInt8] = PPC64LEInstruction.bytes(PPC64LEInstruction.trap)
    public let layout = GuestLayout(sentinelBase: 0x6fff_0000, stacksBase: 0x7000_0000, stackSize: 0x10_0000,
                                    codeBase: 0x6000_0000)

    /// A value no real TOC has (odd, unmapped): r2 holds it when a function is entered at
    /// its global entry, which must compute r2 itself from r12. A function that wrongly
    /// relies on the caller's r2 there faults instead of silently working.
    public static let poisonedTOC: UInt64 = 0x0bad_70c0_0bad_70c1

    public func bringUp(_ emulator: Emulator) throws {
        try UnicornPPC64LEBringUp.setMachineStateRegister(emulator, to: UnicornPPC64LEBringUp.compiledCodeMSR)
    }

    static let maximumArguments = 16
    public let argumentRegisters: [CPURegister] = (3...10).map { PPC64LERegisters.gpr($0) }
    public let returnInstruction: [UInt8] = PPC64LEInstruction.bytes(PPC64LEEncoder.blr)

    /// ELFv2: arguments in r3..r10, the rest in the caller's parameter save area at
    /// 32(r1)+8*i; the caller's frame has a null back chain; LR is the return address;
    /// r12 is the entry address; r2 is the TOC at a local entry.
    public func prepareCall(_ emulator: Emulator, memory: GuestMemory, entry: CallEntry, arguments: [UInt64],
                            stackTop: UInt64, returnAddress: UInt64) throws {
        guard arguments.count <= Self.maximumArguments else {
            throw MachineError.tooManyArguments(count: arguments.count, maximum: Self.maximumArguments)
        }
        for (i, value) in arguments.prefix(8).enumerated() { try emulator.write(PPC64LERegisters.gpr(3 + i), value) }
        // Header (back chain, CR, LR, TOC save: 32 bytes) plus a full parameter save area
        // when any argument goes to memory.
        let saveArea = arguments.count > 8 ? 8 * arguments.count : 0
        let frameSize = UInt64((32 + saveArea + 15) & ~15)
        let sp = (stackTop & ~0xf) - frameSize
        try memory.write(sp, [UInt8](repeating: 0, count: Int(frameSize)))
        for (i, value) in arguments.enumerated() where i >= 8 {
            try memory.writeUInt64(sp + 32 + UInt64(8 * i), value)
        }
        try emulator.write(PPC64LERegisters.r1, sp)
        try emulator.write(PPC64LERegisters.lr, returnAddress)
        try emulator.write(PPC64LERegisters.r12, entry.address)
        try emulator.write(PPC64LERegisters.r2, entry.kind == .local ? (entry.tocPointer ?? 0) : Self.poisonedTOC)
    }

    /// The image's TOC pointer: the `.TOC.` symbol, else .got + 0x8000 (ELFv2).
    public static func tocPointer(in image: ELFFile) -> UInt64? {
        if let toc = image.symbol(named: ".TOC.") { return toc.value }
        if let got = image.section(named: ".got") { return got.address + 0x8000 }
        return nil
    }

    public func entries(of symbol: ELFSymbol, in image: ELFFile) -> [CallEntry] {
        var result = [CallEntry(kind: .global, address: symbol.value)]
        if symbol.localEntryOffset > 0 {
            result.append(CallEntry(kind: .local, address: symbol.value + symbol.localEntryOffset,
                                    tocPointer: Self.tocPointer(in: image)))
        }
        return result
    }

    public func describeInterrupt(_ number: UInt32) -> String {
        switch number {
        case 1: return "machine check"
        case 2: return "data storage (DSI)"
        case 3: return "instruction storage (ISI)"
        case 5: return "alignment"
        case 6: return "program check (trap or privileged instruction)"
        case 7: return "floating-point unavailable"
        case 8: return "system call (sc)"
        case 70: return "hypervisor instruction storage (HISI)"
        case 94: return "VSX unavailable"
        case 96: return "illegal instruction"
        default: return "exception \(number)"
        }
    }

    /// Unicorn's interrupt hook sees the PC after the instruction that raised it.
    public func faultingInstruction(interrupt number: UInt32, reportedPC: UInt64) -> UInt64 { reportedPC &- 4 }

    public func tracingSlot(at address: UInt64, in image: ELFFile) -> PrologueSite? {
        PPC64LEPrologue.mcountSlot(at: address, in: image) ?? PPC64LEPrologue.patchableEntrySlot(at: address, in: image)
    }

    public func prologueSites(of symbol: ELFSymbol, code: [UInt8], in image: ELFFile) -> [PrologueSite] {
        PPC64LEPrologue.sites(of: symbol, code: code, in: image)
    }

    /// The PC, LR (a function that has not saved it yet is still live through it), then
    /// the ELFv2 back chain: each frame's LR save slot (16 bytes into the caller's frame)
    /// holds a return address.
    public func liveCodeAddresses(_ emulator: Emulator, memory: GuestMemory, stackTop: UInt64,
                                  functions: FunctionMap?) throws -> [UInt64] {
        var out = [try emulator.read(programCounter), try emulator.read(PPC64LERegisters.lr)]
        var frame = try emulator.read(stackPointer)
        var seen = 0
        while frame != 0, frame < stackTop, seen < 4096 {
            let next = try memory.readUInt64(frame)
            guard next == 0 || next > frame else { break } // a chain goes up the stack
            if next != 0, next + 24 <= stackTop { out.append(try memory.readUInt64(next + 16)) }
            frame = next
            seen += 1
        }
        return out
    }
}

public enum PPC64LERegisters {
    public static func gpr(_ n: Int) -> CPURegister {
        CPURegister(UC_PPC_REG_0.rawValue + UInt32(n), "r\(n)")
    }
    public static let r0 = gpr(0), r1 = gpr(1), r2 = gpr(2), r3 = gpr(3), r12 = gpr(12)
    public static let lr = CPURegister(UC_PPC_REG_LR.rawValue, "lr")
    public static let ctr = CPURegister(UC_PPC_REG_CTR.rawValue, "ctr")
    public static let msr = CPURegister(UC_PPC_REG_MSR.rawValue, "msr")
}
