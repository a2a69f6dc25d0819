import SpliceDisassembly
import SpliceELF

/// Which entry point of a function a call uses. On ppc64le ELFv2 a function that uses
/// the TOC has a global entry (computes r2 from r12; used through pointers and from
/// other modules) and a local entry a few instructions later (the caller's r2 is
/// already right). Functions with one entry, and every x86-64 function, have `.global`
/// only.
public enum EntryKind: String, Sendable, CaseIterable, Codable {
    case global, local
}

/// A concrete place to enter a function, with what the ABI requires there.
public struct CallEntry: Equatable, Sendable {
    public var kind: EntryKind
    public var address: UInt64
    /// The TOC pointer the caller must hold in r2 at a local entry (ppc64le only).
    public var tocPointer: UInt64?

    public init(kind: EntryKind, address: UInt64, tocPointer: UInt64? = nil) {
        self.kind = kind
        self.address = address
        self.tocPointer = tocPointer
    }
}

/// Something in a function's first instructions that live patching cares about: an
/// mcount / fentry call site, the TOC setup an odd-TOC mark goes into, an ENDBR.
public struct PrologueSite: Equatable, Sendable, Codable {
    /// What the site is, named by the architecture that found it (its own constants live
    /// with it in arch/<isa>); common code only shows it.
    public struct Kind: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }
    }

    public var kind: Kind
    public var address: UInt64
    /// Offset of `address` from the function's start (global entry).
    public var offset: UInt64
    /// The slot the compiler left for tracing (Linux's ftrace site: an fentry or mcount
    /// call, or patchable NOPs): what a kernel's own site table lists.
    public var isTracingSlot: Bool
    public var note: String

    public init(kind: Kind, address: UInt64, offset: UInt64, isTracingSlot: Bool = false, note: String) {
        self.kind = kind
        self.address = address
        self.offset = offset
        self.isTracingSlot = isTracingSlot
        self.note = note
    }
}

/// Where the runtime puts its own memory in a guest that has none of it yet.
public struct GuestLayout: Sendable {
    /// A page holding trap instructions whose first address is the return sentinel.
    public var sentinelBase: UInt64
    /// vCPU `i` gets the stack [stacksBase + i*stackSize, + stackSize).
    public var stacksBase: UInt64
    public var stackSize: UInt64
    /// Where code the patcher adds goes when no place is asked for.
    public var codeBase: UInt64

    public init(sentinelBase: UInt64, stacksBase: UInt64, stackSize: UInt64, codeBase: UInt64) {
        self.sentinelBase = sentinelBase
        self.stacksBase = stacksBase
        self.stackSize = stackSize
        self.codeBase = codeBase
    }
}

/// What the machine needs to know about one ISA: how to bring up a vCPU in Unicorn, the
/// calling convention, and how to read its prologues. One implementation per folder
/// under `arch/`; the machine never asks which ISA it runs.
public protocol CPUArchitecture: Sendable {
    /// The name users choose it by (the ELF machine's usual name: x86_64, ppc64le).
    var name: String { get }
    var elfMachine: UInt16 { get }
    var disassemblyMode: DisassemblyMode { get }
    var emulatorConfiguration: EmulatorConfiguration { get }
    var programCounter: CPURegister { get }
    var stackPointer: CPURegister { get }
    var returnValueRegister: CPURegister { get }
    /// Bytes that stop the guest if executed (filled into the sentinel page).
    var trapInstruction: [UInt8] { get }
    /// The integer argument registers of a call, in order.
    var argumentRegisters: [CPURegister] { get }
    /// A function return (x86-64 `ret`, ppc64le `blr`), as bytes.
    var returnInstruction: [UInt8] { get }
    var layout: GuestLayout { get }

    /// Makes a fresh emulator able to run this ISA's code (once per vCPU).
    func bringUp(_ emulator: Emulator) throws

    /// Sets registers and stack for a call to `entry` with integer `arguments`, returning
    /// to `returnAddress`, with the stack growing down from `stackTop`.
    func prepareCall(_ emulator: Emulator, memory: GuestMemory, entry: CallEntry, arguments: [UInt64],
                     stackTop: UInt64, returnAddress: UInt64) throws

    /// The entry points of a function symbol (global first).
    func entries(of symbol: ELFSymbol, in image: ELFFile) -> [CallEntry]

    /// Names an interrupt / exception number as the emulator reports it.
    func describeInterrupt(_ number: UInt32) -> String

    /// The address of the instruction that raised interrupt `number`, given the PC the
    /// hook saw (ppc64le reports the next instruction).
    func faultingInstruction(interrupt number: UInt32, reportedPC: UInt64) -> UInt64

    /// The live-patching landmarks in a function's first bytes.
    func prologueSites(of symbol: ELFSymbol, code: [UInt8], in image: ELFFile) -> [PrologueSite]

    /// The tracing slot at `address` if the bytes there are one (what an entry of a
    /// kernel's own site table must point at), whatever function holds it; nil otherwise.
    /// Its `offset` is from `address` (0): the function may have no symbol.
    func tracingSlot(at address: UInt64, in image: ELFFile) -> PrologueSite?

    /// Code addresses live on a stopped vCPU: its PC first, then the return addresses on
    /// its stack, innermost first (`stackTop`: where the vCPU's stack starts; `functions`:
    /// where the running code's functions are, for ISAs whose walk reads prologues).
    func liveCodeAddresses(_ emulator: Emulator, memory: GuestMemory, stackTop: UInt64,
                           functions: FunctionMap?) throws -> [UInt64]
}

extension CPUArchitecture {
    public func tracingSlot(at address: UInt64, in image: ELFFile) -> PrologueSite? { nil }
}
