import CCapstone
import CUnicorn
import SpliceBytes
import SpliceDisassembly
import SpliceELF
import SpliceMachine

/// x86-64: SysV calling convention, no bring-up quirks in Unicorn.
public struct X86_64Architecture: CPUArchitecture {
    public init() {}

    public let name = "x86_64"
    public let elfMachine = ELFMachine.x86_64
    public let disassemblyMode = DisassemblyMode.x86_64
    public let emulatorConfiguration = EmulatorConfiguration(arch: UC_ARCH_X86, mode: UC_MODE_64)
    public let programCounter = CPURegister(UC_X86_REG_RIP.rawValue, "rip")
    public let stackPointer = CPURegister(UC_X86_REG_RSP.rawValue, "rsp")
    public let returnValueRegister = CPURegister(UC_X86_REG_RAX.rawValue, "rax")
    /// `int3`.
    public let trapInstruction: [UInt8] = [0xcc]
    public let layout = GuestLayout(sentinelBase: 0x6fff_0000, stacksBase: 0x7000_0000, stackSize: 0x10_0000,
                                    codeBase: 0x6000_0000)

    /// SysV: the first six integer arguments in registers, the rest on the stack.
    static let argumentRegisters: [CPURegister] = [
        CPURegister(UC_X86_REG_RDI.rawValue, "rdi"), CPURegister(UC_X86_REG_RSI.rawValue, "rsi"),
        CPURegister(UC_X86_REG_RDX.rawValue, "rdx"), CPURegister(UC_X86_REG_RCX.rawValue, "rcx"),
        CPURegister(UC_X86_REG_R8.rawValue, "r8"), CPURegister(UC_X86_REG_R9.rawValue, "r9"),
    ]
    static let maximumArguments = 16
    public var argumentRegisters: [CPURegister] { Self.argumentRegisters }
    public let returnInstruction: [UInt8] = [0xc3]

    public func bringUp(_ emulator: Emulator) throws {}

    public func prepareCall(_ emulator: Emulator, memory: GuestMemory, entry: CallEntry, arguments: [UInt64],
                            stackTop: UInt64, returnAddress: UInt64) throws {
        guard arguments.count <= Self.maximumArguments else {
            throw MachineError.tooManyArguments(count: arguments.count, maximum: Self.maximumArguments)
        }
        for (register, value) in zip(Self.argumentRegisters, arguments) { try emulator.write(register, value) }
        let stackArguments = Array(arguments.dropFirst(Self.argumentRegisters.count))
        // At the call instruction rsp is 16-byte aligned; the call pushes the return
        // address, so the callee starts with rsp % 16 == 8.
        var sp = stackTop & ~0xf
        if stackArguments.count % 2 == 1 { sp -= 8 }
        for value in stackArguments.reversed() {
            sp -= 8
            try memory.writeUInt64(sp, value)
        }
        sp -= 8
        try memory.writeUInt64(sp, returnAddress)
        try emulator.write(stackPointer, sp)
        try emulator.write(CPURegister(UC_X86_REG_RBP.rawValue, "rbp"), 0)
        try emulator.write(returnValueRegister, 0)
    }

    public func entries(of symbol: ELFSymbol, in image: ELFFile) -> [CallEntry] {
        [CallEntry(kind: .global, address: symbol.value)]
    }

    public func describeInterrupt(_ number: UInt32) -> String {
        switch number {
        case 0: return "#DE divide error"
        case 1: return "#DB debug"
        case 3: return "#BP breakpoint (int3)"
        case 4: return "#OF overflow"
        case 6: return "#UD invalid opcode"
        case 13: return "#GP general protection"
        case 14: return "#PF page fault"
        default: return "vector \(number)"
        }
    }

    /// `int3` is a trap: the reported rip is the next byte.
    public func faultingInstruction(interrupt number: UInt32, reportedPC: UInt64) -> UInt64 {
        number == 3 ? reportedPC &- 1 : reportedPC
    }

    public func tracingSlot(at address: UInt64, in image: ELFFile) -> PrologueSite? {
        guard let code = image.bytes(at: address, count: X86_64Prologue.slotSize + 1) ?? image.bytes(at: address, count: X86_64Prologue.slotSize),
              let (kind, note) = X86_64Prologue.patchableSlot(code, at: address, in: image) else { return nil }
        return PrologueSite(kind: kind, address: address, offset: 0, isTracingSlot: true, note: note)
    }

    public func prologueSites(of symbol: ELFSymbol, code: [UInt8], in image: ELFFile) -> [PrologueSite] {
        X86_64Prologue.sites(of: symbol, code: code, in: image)
    }

    /// The PC, then the return addresses. With `functions` the walk follows the rbp
    /// chain (code built with frame pointers): where the PC stands in its function's
    /// prologue or epilogue says where the return address is (`X86_64Frame`). Code built
    /// without frame pointers leaves no chain: from the first frame the walk cannot read,
    /// every 8-byte word up to the stack top that points into executable memory is taken
    /// (conservative: it may name a stale return address but never misses a live one).
    public func liveCodeAddresses(_ emulator: Emulator, memory: GuestMemory, stackTop: UInt64,
                                  functions: FunctionMap?) throws -> [UInt64] {
        try stackWalk(emulator, memory: memory, stackTop: stackTop, functions: functions).addresses
    }

    /// `liveCodeAddresses`, how many of them were read frame by frame (the rest come from
    /// the conservative scan), and the stack address the scan started at (nil: none).
    public func stackWalk(_ emulator: Emulator, memory: GuestMemory, stackTop: UInt64,
                          functions: FunctionMap?) throws -> (addresses: [UInt64], framesRead: Int, scannedFrom: UInt64?) {
        var pc = try emulator.read(programCounter)
        var rsp = try emulator.read(stackPointer)
        var rbp = try emulator.read(X86_64Frame.rbp)
        var out = [pc]
        func scan(from sp: UInt64) throws -> [UInt64] {
            var words: [UInt64] = [], sp = sp
            while sp + 8 <= stackTop {
                let word = try memory.readUInt64(sp)
                if let r = memory.region(containing: word), r.permissions.contains(.execute) { words.append(word) }
                sp += 8
            }
            return words
        }
        guard let functions else { return (out + (try scan(from: rsp)), out.count, rsp) }
        while out.count < 4096 {
            // Code the map does not know (a payload, the caller's sentinel): scan on from here.
            guard let f = functions.function(containing: pc),
                  let frame = try X86_64Frame.state(of: f, at: pc, memory: memory) else {
                return (out + (try scan(from: rsp)), out.count, rsp)
            }
            let (slot, callerRSP, callerRBP): (UInt64, UInt64, UInt64)
            switch frame {
            case .returnAddressAtSP: (slot, callerRSP, callerRBP) = (rsp, rsp &+ 8, rbp)
            case .rbpPushed: (slot, callerRSP, callerRBP) = (rsp &+ 8, rsp &+ 16, try memory.readUInt64(rsp))
            case .framed: (slot, callerRSP, callerRBP) = (rbp &+ 8, rbp &+ 16, try memory.readUInt64(rbp))
            }
            // A chain goes up the stack; anything else is not a frame we can read.
            guard callerRSP > rsp, callerRSP <= stackTop else { return (out + (try scan(from: rsp)), out.count, rsp) }
            let ra = try memory.readUInt64(slot)
            // A return address outside executable memory ends the chain (nothing called this).
            guard let r = memory.region(containing: ra), r.permissions.contains(.execute) else { return (out, out.count, nil) }
            out.append(ra)
            (pc, rsp, rbp) = (ra, callerRSP, callerRBP)
        }
        return (out, out.count, nil)
    }
}

/// Where an x86-64 frame keeps its return address at a given PC, for code built with
/// frame pointers (`push rbp; mov rbp, rsp` after the landing pad and patch slot, no
/// shrink-wrapping).
enum X86_64Frame: Equatable {
    /// Before `push rbp`, after `pop rbp` / `leave`, or in a frameless function that has not
    /// moved rsp: the return address is at rsp, rbp is the caller's.
    case returnAddressAtSP
    /// After `push rbp`, up to `mov rbp, rsp`: at rsp + 8, the caller's rbp at rsp.
    case rbpPushed
    /// In the body: at rbp + 8, the caller's rbp at rbp.
    case framed

    static let rbp = CPURegister(UC_X86_REG_RBP.rawValue, "rbp")

    /// The frame state of function `f` at `pc`, from its instructions up to `pc` (decoded in
    /// address order); nil when it cannot be told (no instruction starts at `pc`, a
    /// frameless function that moved rsp).
    static func state(of f: ELFSymbol, at pc: UInt64, memory: GuestMemory) throws -> X86_64Frame? {
        let length = min(f.size, max(pc - f.value, 48) + 16) // the whole prologue, even at its start
        let code = try memory.read(f.value, count: Int(length))
        let insns = try Disassembler(mode: .x86_64).decode(code, address: f.value)
        guard let here = insns.firstIndex(where: { $0.address == pc }) else { return nil }
        // The prologue: only the landing pad and a patch slot (nops, a call to __fentry__)
        // may come before `push rbp`.
        var i = 0
        while i < insns.count, ["endbr64", "nop", "call"].contains(insns[i].mnemonic) { i += 1 }
        // The compiler may schedule other instructions between the two (none touching rsp
        // or rbp: `mov rax, rdi`).
        var set: Int?
        if i < insns.count, insns[i].text == "push rbp" {
            var j = i + 1
            while j < insns.count, j <= i + 4, insns[j].text != "mov rbp, rsp",
                  !insns[j].operands.contains("rsp"), !insns[j].operands.contains("rbp"),
                  !["push", "pop", "call", "ret", "jmp", "leave", "enter"].contains(insns[j].mnemonic),
                  !insns[j].mnemonic.hasPrefix("j") { j += 1 }
            if j < insns.count, insns[j].text == "mov rbp, rsp" { set = j }
        }
        guard let set else {
            let movesSP = insns[..<here].contains {
                ["push", "pop", "leave", "enter"].contains($0.mnemonic) || $0.operands.hasPrefix("rsp,")
            }
            return movesSP ? nil : .returnAddressAtSP
        }
        if here <= i { return .returnAddressAtSP }
        if here <= set { return .rbpPushed }
        var state = X86_64Frame.framed
        for insn in insns[(set + 1)..<here] {
            switch (state, insn.mnemonic) {
            case (.framed, "leave"):
                state = .returnAddressAtSP
            case (.framed, "pop") where insn.text == "pop rbp":
                state = .returnAddressAtSP
            case (.returnAddressAtSP, "ret"), (.returnAddressAtSP, "jmp"):
                state = .framed // code after an early epilogue is still the framed body
            default: break
            }
        }
        return state
    }
}

/// What an x86-64 function's first bytes say about how it can be patched. Shared by
/// `splice inspect` (prologue landmarks) and the patch backend (where to write).
enum X86_64Prologue {
    static let endbr64: [UInt8] = [0xf3, 0x0f, 0x1e, 0xfa]
    static let nop5: [UInt8] = [0x0f, 0x1f, 0x44, 0x00, 0x00]
    static let fiveOneByteNops: [UInt8] = [0x90, 0x90, 0x90, 0x90, 0x90]
    static let slotSize = 5

    /// Bytes to skip before the patch site: the endbr64 landing pad, if any.
    static func landingPadLength(_ code: [UInt8]) -> Int { code.starts(with: endbr64) ? 4 : 0 }

    /// A compiler-reserved 5-byte slot at `address` (`code` starts there): its kind and
    /// description, or nil.
    static func patchableSlot(_ code: [UInt8], at address: UInt64, in image: ELFFile) -> (PrologueSite.Kind, String)? {
        guard code.count >= slotSize else { return nil }
        if code[0] == 0xe8 {
            let rel = Int32(bitPattern: UInt32(code[1]) | UInt32(code[2]) << 8 | UInt32(code[3]) << 16 | UInt32(code[4]) << 24)
            let target = UInt64(bitPattern: Int64(bitPattern: address + 5) &+ Int64(rel))
            if let fentry = image.symbol(named: "__fentry__"), fentry.value == target {
                return (.fentryCall, "call __fentry__ (\(hex(target))): 5 bytes a redirect can replace")
            }
        } else if code.starts(with: nop5) {
            return (.patchableNop, "5-byte nop: room for a jmp rel32")
        } else if code.starts(with: fiveOneByteNops) && !(code.count > slotSize && code[slotSize] == 0x90) {
            // Exactly five: a longer run is alignment padding (Linux's __pfx_ symbols,
            // 16 one-byte nops before each function), not a slot.
            return (.patchableNop, "5 one-byte nops (-fpatchable-function-entry=5): room for a jmp rel32")
        }
        return nil
    }

    static func sites(of symbol: ELFSymbol, code: [UInt8], in image: ELFFile) -> [PrologueSite] {
        var sites: [PrologueSite] = []
        let offset = landingPadLength(code)
        if offset > 0 {
            sites.append(PrologueSite(kind: .endbr, address: symbol.value, offset: 0,
                                      note: "indirect-branch landing pad; a patch goes after it"))
        }
        let address = symbol.value + UInt64(offset)
        if let (kind, note) = patchableSlot(Array(code.dropFirst(offset)), at: address, in: image) {
            sites.append(PrologueSite(kind: kind, address: address, offset: UInt64(offset), isTracingSlot: true, note: note))
        }
        return sites
    }
}

extension DisassemblyMode {
    public static let x86_64 = DisassemblyMode(arch: CS_ARCH_X86, mode: CS_MODE_64, undecodableUnit: 1, description: "x86-64")
}

extension PrologueSite.Kind {
    /// `call __fentry__` (from -pg -mfentry).
    public static let fentryCall = Self(rawValue: "fentry-call")
    /// A 5-byte NOP (or five 1-byte NOPs) left by -fpatchable-function-entry or ftrace.
    public static let patchableNop = Self(rawValue: "patchable-nop")
    /// `endbr64`: indirect calls must still land on it after patching.
    public static let endbr = Self(rawValue: "endbr64")
}
