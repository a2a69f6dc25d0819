import SpliceBytes
import SpliceELF
import SpliceMachine

/// Where in a function a redirect is written, as the arch backend decides it.
///
/// Like Linux's `struct dyn_ftrace { ip; flags; struct dyn_arch_ftrace arch; }`: what every
/// backend shares is here, and what only one backend reads travels in `archData`, which
/// common code carries and never looks into.
public struct PatchSite: Equatable, Sendable, Codable {
    /// What the site is, named by the backend that found it; each backend declares its own
    /// kinds next to its code (arch/<isa>). Common code knows only `entry`.
    public struct Kind: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The function's first instruction: the redirect overwrites the start of its body.
        public static let entry = Kind(rawValue: "entry")
    }

    /// The backend's own per-site values (addresses, offsets), by names it chooses.
    public struct ArchData: Hashable, Sendable, Codable {
        public var values: [String: UInt64]
        public init(_ values: [String: UInt64] = [:]) { self.values = values }
        public subscript(_ name: String) -> UInt64? {
            get { values[name] }
            set { values[name] = newValue }
        }
    }

    public var function: String
    public var functionAddress: UInt64
    public var functionSize: UInt64
    public var kind: Kind
    /// The first byte a redirect overwrites.
    public var address: UInt64
    /// How many bytes from `address` a redirect may overwrite.
    public var room: Int
    /// The site is a slot the compiler reserved for patching (a call to a tracing stub, or
    /// NOPs): the runtime owns its bytes, so a redirect replaces the slot and never the
    /// function's body, and a payload's expected bytes are compared there as in the file.
    public var isReservedSlot: Bool
    public var archData: ArchData
    public var note: String

    public init(function: String, functionAddress: UInt64, functionSize: UInt64, kind: Kind, address: UInt64,
                room: Int, isReservedSlot: Bool = false, archData: ArchData = ArchData(), note: String) {
        self.function = function
        self.functionAddress = functionAddress
        self.functionSize = functionSize
        self.kind = kind
        self.address = address
        self.room = room
        self.isReservedSlot = isReservedSlot
        self.archData = archData
        self.note = note
    }
}

/// One write a patch makes: `bytes` at `address`. The patcher saves what was there
/// (the undo buffer) and checks it against what it expects before writing.
public struct CodeWrite: Equatable, Sendable {
    /// Instructions, or data the runtime code reads (a table entry).
    public enum Kind: String, Sendable, Codable { case code, data }

    public var address: UInt64
    public var bytes: [UInt8]
    /// What the write is, for people ("jmp rel32 to scaled_v2").
    public var purpose: String
    public var kind: Kind

    public init(address: UInt64, bytes: [UInt8], purpose: String, kind: Kind = .code) {
        self.address = address
        self.bytes = bytes
        self.purpose = purpose
        self.kind = kind
    }
}

/// Everything one redirect writes, in order. Writes into freshly allocated code (far-jump
/// slots) come first, the write at the site last, so the site only ever points at
/// finished code; revert undoes them in reverse.
public struct PatchPlan: Equatable, Sendable {
    public var site: PatchSite
    public var writes: [CodeWrite]
    /// Code the plan allocated (far-jump slots), released on revert.
    public var allocations: [CodeAllocation]
    /// Extra guest instructions one call takes on its way to the target, when that is
    /// one number (on ppc64le it depends on the kind of call: see `splice bench redirect`).
    public var extraInstructions: Int?
    /// How the redirect reaches its target ("jmp rel32", "jmp [rip] absolute", ...).
    public var method: String

    public init(site: PatchSite, writes: [CodeWrite], allocations: [CodeAllocation] = [], extraInstructions: Int?,
                method: String) {
        self.site = site
        self.writes = writes
        self.allocations = allocations
        self.extraInstructions = extraInstructions
        self.method = method
    }
}

/// What a redirect is asked to do.
public enum RedirectTarget: Hashable, Sendable {
    /// Jump to new code at this address.
    case address(UInt64)
    /// `new_addr == 0`: make the function return at once, doing nothing.
    case returnImmediately
    /// `new_addr == 0` with a range: turn these whole instructions into NOPs, the rest
    /// of the function still runs. Offsets are from the function's start.
    case nopOut(offset: UInt64, length: Int)
}

/// The per-ISA side of live patching, in the spirit of Xen's `arch_livepatch_*` hooks:
/// small and data-shaped. The common patcher asks where to patch, what to write and
/// how big the undo buffer is; it does the writing, checking and bookkeeping itself and
/// never asks which ISA it runs.
public protocol PatchBackend: Sendable {
    /// The CPU side of the same ISA (bring-up, ABI).
    var architecture: any CPUArchitecture { get }
    /// The most bytes one patch overwrites at a site (Xen's undo buffer size).
    var undoBufferSize: Int { get }
    /// The relocation type that stores a symbol's 64-bit address (payload records).
    var absoluteAddressRelocation: UInt32 { get }

    /// The image's own functions that this ISA's tracing calls into (`_mcount`,
    /// `__fentry__`): no payload may patch them (like Xen's `arch_livepatch_symbol_deny`).
    var runtimeSymbols: Set<String> { get }
    /// The symbol a payload's relocations name for the payload's own TOC (ELFv2's
    /// `.TOC.`), resolved to `payloadTOC`; nil for an ISA without a TOC.
    var tocSymbol: String? { get }

    /// Small functions written with this ISA's encoder, for benchmarks and tests.
    var fixtures: any CodeFixtures { get }

    /// The ways a redirected call can return that this backend offers, by name (how a
    /// caller gets its own state back when the new function differs in it); empty when
    /// there is only one way.
    var returnStrategies: [String] { get }
    /// The one of `returnStrategies` this backend uses; nil when it offers no choice.
    var returnStrategy: String? { get }
    /// This backend using `returnStrategy`; throws for a name it does not offer.
    func using(returnStrategy: String) throws -> any PatchBackend

    /// Where a redirect of `function` goes, from its bytes in the image.
    func patchSite(of function: ELFSymbol, in image: ELFFile) throws -> PatchSite

    /// Checks that `current`, read at the site before the first patch, is an unpatched
    /// form this backend knows (an fentry call, patchable NOPs, a TOC setup ...).
    func verifyUnpatched(_ current: [UInt8], at site: PatchSite, in image: ELFFile) throws

    /// Encodes what to write for `target`. May allocate code within reach of the site
    /// from `space` (far-jump slots). `image` gives the function's original bytes;
    /// `runtime` is what `installRuntime` returned for this machine.
    func encode(_ target: RedirectTarget, at site: PatchSite, in image: ELFFile, runtime: (any PatchRuntime)?,
                space: CodeSpace) throws -> PatchPlan

    /// Applies one relocation of a payload: patches `bytes[offset...]`, which will live
    /// at guest address `place`, for a symbol whose value is `symbol`.
    func relocate(type: UInt32, addend: Int64, symbol: UInt64, place: UInt64, bytes: inout [UInt8], offset: Int,
                  context: RelocationContext) throws

    /// Puts the ISA's runtime code into the machine (ppc64le ftrace_caller and friends)
    /// and returns what `encode` needs to know about it.
    func installRuntime(for image: LoadedImage, space: CodeSpace) throws -> (any PatchRuntime)?

    /// Brings a freshly loaded image into its patchable state (ppc64le: `bl _mcount`
    /// becomes `nop`). Returns the writes it made.
    func prepare(_ image: LoadedImage) throws -> [CodeWrite]

    /// Whether the call that relocation `type` at `offset` of `code` patches can only
    /// reach a function sharing the caller's TOC (ppc64le: a `bl` with no `nop` after it
    /// to restore r2). The payload builder then carries the callee into the payload.
    func callNeedsSameTOC(type: UInt32, code: [UInt8], offset: Int) -> Bool

    /// Where in its target section relocation `type` at `offset` of `code` (a function's
    /// whole section) points, given its addend: the addend itself for absolute and
    /// TOC-relative types; for a PC-relative one the addend plus the distance from the
    /// field to the end of its instruction (x86-64 `lea .LC0(%rip)` has addend -4). The
    /// payload builder compares string literals by what they say through this.
    func relocationTargetOffset(type: UInt32, addend: Int64, code: [UInt8], offset: Int) -> Int64

    /// Bytes of a call stub that reaches `target` in another module from `address`, or
    /// nil when relocation `type` to an external symbol needs none.
    func callStub(type: UInt32, symbol: String, to target: UInt64, at address: UInt64) -> [UInt8]?
    /// The size of one call stub (0: the ISA needs none).
    var callStubSize: Int { get }

    /// The payload's TOC pointer given where its sections landed (nil: no TOC).
    func payloadTOC(sections: [(name: String, address: UInt64)]) -> UInt64?

    /// How to make `writes` without stopping the machine: stores each vCPU can only see
    /// whole, separated by syncs (every vCPU drops its translated code for what changed
    /// before it runs on), in an order where no intermediate state is unsafe to execute.
    func nonStopSteps(for writes: [CodeWrite]) -> [NonStopStep]

    /// A vCPU stopped by the trap a non-stop sequence put at `address` while the write of
    /// `final` is in flight: where it should continue (the new code), or nil to retry.
    func trapRedirect(at address: UInt64, final: [UInt8]) -> UInt64?
}

/// One step of a non-stop write sequence.
public enum NonStopStep: Equatable, Sendable {
    /// A store every vCPU sees whole (the caller makes it as one host store).
    case write(UInt64, [UInt8], purpose: String)
    /// Every vCPU serialises: drops translated code for the changed range before running on.
    case sync
    /// From here until the next sync a vCPU may trap at this address (x86 int3): the
    /// engine sends it to where `trapRedirect` says.
    case trapArmed(UInt64, final: [UInt8])
    /// Every vCPU passes a quiescent point (its return-to-guest safe point, where it is in
    /// no patchable function) before the next step.
    case quiesce
}

/// Per-machine state of a backend's runtime code (addresses of what it emitted). Only
/// the backend that made it looks inside.
public protocol PatchRuntime: AnyObject {
    /// Lines for people: what was emitted where.
    var summary: [String] { get }
    /// Names of the emitted entry points, for labelling disassembly.
    var symbols: [UInt64: String] { get }
}

extension PatchBackend {
    public var runtimeSymbols: Set<String> { [] }
    public var tocSymbol: String? { nil }
    public var returnStrategies: [String] { [] }
    public var returnStrategy: String? { nil }
    public func using(returnStrategy name: String) throws -> any PatchBackend {
        throw PatchError.noSuchReturnStrategy(name, architecture: architecture.name, offered: returnStrategies)
    }
    public func installRuntime(for image: LoadedImage, space: CodeSpace) throws -> (any PatchRuntime)? { nil }
    public func callNeedsSameTOC(type: UInt32, code: [UInt8], offset: Int) -> Bool { false }
    public func relocationTargetOffset(type: UInt32, addend: Int64, code: [UInt8], offset: Int) -> Int64 { addend }
    public func callStub(type: UInt32, symbol: String, to target: UInt64, at address: UInt64) -> [UInt8]? { nil }
    public var callStubSize: Int { 0 }
    public func payloadTOC(sections: [(name: String, address: UInt64)]) -> UInt64? { nil }
    /// Default: each write is one store the ISA makes atomically, then a sync.
    public func nonStopSteps(for writes: [CodeWrite]) -> [NonStopStep] {
        writes.flatMap { [NonStopStep.write($0.address, $0.bytes, purpose: $0.purpose), .sync] }
    }
    public func trapRedirect(at address: UInt64, final: [UInt8]) -> UInt64? { nil }
    public func prepare(_ image: LoadedImage) throws -> [CodeWrite] { [] }
}

/// What a relocation may need besides the symbol: names for messages, and for ISAs with
/// a TOC, the payload's TOC and how to reach a symbol in another module.
public struct RelocationContext: Sendable {
    public var section: String
    public var index: Int
    public var symbolName: String
    /// The payload's TOC pointer (ppc64le), if it has one.
    public var toc: UInt64?
    /// The symbol lives outside the payload (the target or another payload): on ppc64le
    /// it has another TOC, so calls go through `stub`.
    public var external: Bool
    /// ppc64le: the symbol's local entry offset (calls within one TOC enter there).
    public var localEntryOffset: UInt64
    /// A call stub for this symbol, placed by the loader where the backend asked.
    public var stub: UInt64?

    public init(section: String, index: Int, symbolName: String, toc: UInt64? = nil, external: Bool = false,
                localEntryOffset: UInt64 = 0, stub: UInt64? = nil) {
        self.section = section
        self.index = index
        self.symbolName = symbolName
        self.toc = toc
        self.external = external
        self.localEntryOffset = localEntryOffset
        self.stub = stub
    }

    /// The error for a value that does not fit relocation type `type`.
    public func overflow(_ type: String, _ value: Int64) -> PatchError {
        .relocationOverflow(section: section, index: index, symbol: symbolName, type: type, value: value)
    }

    /// Stores the low `width` bytes of `value`, little-endian, at `offset`; refuses a
    /// field that lies outside `bytes`.
    public func store(_ value: UInt64, width: Int, into bytes: inout [UInt8], at offset: Int) throws {
        guard offset >= 0, offset + width <= bytes.count else { throw overflow("field outside its section", Int64(offset)) }
        bytes.replaceSubrange(offset..<offset + width, with: value.littleEndianBytes(count: width))
    }
}
