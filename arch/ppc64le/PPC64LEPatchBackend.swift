import SpliceBytes
import SpliceELF
import SpliceMachine
import SplicePatching

/// ppc64le live patching, ftrace-style (the ppc64 livepatch RFC's frameless return helper): every `bl _mcount` is a `nop` while
/// nothing is patched; a redirect writes the new address into the site table, turns the
/// nop into `bl ftrace_caller` and marks the global entry with an odd TOC, so
/// ftrace_caller can tell global from local calls and send local ones back through a
/// return helper that restores r2.
public struct PPC64LEPatchBackend: PatchBackend {
    public var strategy: ReturnStrategy
    /// Where to put ftrace_caller; nil: within `bl` reach of the text when possible.
    public var runtimeAddress: UInt64?
    /// The RFC's "emergency exit" for sibling calls; off only to show what it prevents.
    public var siblingBailOut: Bool

    public init(strategy: ReturnStrategy = .shadowStack, runtimeAddress: UInt64? = nil, siblingBailOut: Bool = true) {
        self.strategy = strategy
        self.runtimeAddress = runtimeAddress
        self.siblingBailOut = siblingBailOut
    }

    public var architecture: any CPUArchitecture { PPC64LEArchitecture() }

    public var returnStrategies: [String] { ReturnStrategy.allCases.map(\.rawValue) }
    public var returnStrategy: String? { strategy.rawValue }
    public func using(returnStrategy name: String) throws -> any PatchBackend {
        guard let s = ReturnStrategy(rawValue: name) else {
            throw PatchError.noSuchReturnStrategy(name, architecture: architecture.name, offered: returnStrategies)
        }
        var copy = self
        copy.strategy = s
        return copy
    }
    /// A redirect saves the site word, the marked addi and the 8-byte table entry.
    public let undoBufferSize = 16
    static let branchReach: UInt64 = 1 << 25

    public let absoluteAddressRelocation = PPC64Relocation.addr64.rawValue
    /// The -mprofile-kernel tracing call every traced function makes.
    static let mcount = "_mcount"
    public var runtimeSymbols: Set<String> { [Self.mcount] }
    public var tocSymbol: String? { ".TOC." }
    public var fixtures: any CodeFixtures { PPC64LECodeFixtures() }

    public func patchSite(of function: ELFSymbol, in image: ELFFile) throws -> PatchSite {
        let code = try image.bytes(of: function)
        guard let site = PPC64LEPrologue.mcountSite(of: function, code: code, in: image) else {
            throw PatchError.unrecognisedSite(function: function.name, address: function.value,
                                              found: Array(code.prefix(16)),
                                              reason: "no -mprofile-kernel mcount site (mflr r0; bl _mcount) in its first instructions")
        }
        let address = function.value + UInt64(site.offset)
        var note = site.olderPrologue ? "mcount site (older prologue with std r0,16(r1))" : "mcount site"
        if let mark = site.markOffset { note += ", odd-TOC mark at site-\(site.offset - mark)" }
        if site.markSkippedNearBoundary { note += ", no mark: within 12 bytes of a 64 KiB boundary" }
        return PatchSite(function: function.name, functionAddress: function.value, functionSize: function.size,
                         kind: .mcountCall, address: address, room: 4, isReservedSlot: true,
                         archData: .init(site.markOffset.map { [PatchSite.globalEntryMarkKey: function.value + UInt64($0)] } ?? [:]),
                         note: note)
    }

    public func verifyUnpatched(_ current: [UInt8], at site: PatchSite, in image: ELFFile) throws {
        guard current == PPC64LEInstruction.bytes(PPC64LEInstruction.nop) else {
            throw PatchError.unrecognisedSite(function: site.function, address: site.address, found: current,
                                              reason: "expected the nop the machine start left at the mcount site")
        }
    }

    /// Machine start ("ftrace_make_nop"): every `bl _mcount` becomes `nop`, after
    /// checking that the instruction there really is that call.
    public func prepare(_ image: LoadedImage) throws -> [CodeWrite] {
        var writes: [CodeWrite] = []
        guard let mcount = image.elf.symbol(named: Self.mcount)?.value else { return [] }
        for f in image.elf.functions {
            guard let code = try? image.elf.bytes(of: f),
                  let site = PPC64LEPrologue.mcountSite(of: f, code: code, in: image.elf), !site.alreadyNop else { continue }
            let address = f.value + UInt64(site.offset)
            let current = try image.machine.memory.read(address, count: 4)
            guard PPC64LEInstruction.branchAndLinkTarget(PPC64LEInstruction.word(current, at: 0), at: address) == mcount else {
                throw PatchError.unrecognisedSite(function: f.name, address: address, found: current,
                                                  reason: "machine start expected bl _mcount here")
            }
            writes.append(CodeWrite(address: address, bytes: PPC64LEInstruction.bytes(PPC64LEInstruction.nop),
                                    purpose: "ftrace_make_nop: bl _mcount -> nop"))
        }
        return writes
    }

    public func installRuntime(for image: LoadedImage, space: CodeSpace) throws -> (any PatchRuntime)? {
        let machine = image.machine
        let text = image.elf.segments.filter { $0.isLoad && $0.flags & ELFSegment.flagExecute != 0 }
        guard let textBase = text.map(\.virtualAddress).min(),
              let textEnd = text.map({ $0.virtualAddress + $0.memorySize }).max() else { return nil }
        let table = try space.mapFree(name: "ftrace-table", size: 2 * (textEnd - textBase), near: textEnd,
                                      permissions: [.read])
        var areas: [UInt64] = []
        if strategy == .shadowStack {
            let size = PPC64LERuntime.stackAreaSize
            let stacks = try space.mapFree(name: "livepatch-stacks", size: size * UInt64(machine.vcpus.count),
                                           near: table.end, permissions: [.read, .write])
            for (i, cpu) in machine.vcpus.enumerated() {
                let area = stacks.base + UInt64(i) * size
                try machine.memory.writeUInt64(area, area + 16)       // stack pointer
                try machine.memory.writeUInt64(area + 8, area + size) // limit
                try cpu.write(PPC64LERegisters.gpr(13), area)
                areas.append(area)
            }
        }
        let reserve = 256
        let allocation = try runtimeAddress.map { try space.allocate(size: reserve, at: $0) }
            ?? space.allocate(size: reserve, near: textBase, reach: Self.branchReach - UInt64(reserve))
        let (code, helper, caller) = try PPC64LERuntime.emit(at: allocation.address, strategy: strategy,
                                                              tableBase: table.base, textBase: textBase,
                                                              siblingBailOut: siblingBailOut)
        precondition(code.count <= reserve, "ppc64le runtime outgrew its reservation")
        try machine.memory.write(allocation.address, code)
        try machine.codeChanged(at: allocation.address, length: code.count)
        return PPC64LERuntime(strategy: strategy, returnHelper: helper, ftraceCaller: caller, codeSize: code.count,
                              tableBase: table.base, textBase: textBase, textEnd: textEnd, stackAreas: areas)
    }

    public func encode(_ target: RedirectTarget, at site: PatchSite, in image: ELFFile, runtime: (any PatchRuntime)?,
                       space: CodeSpace) throws -> PatchPlan {
        typealias P = PPC64LEEncoder
        switch target {
        case let .address(to):
            guard let rt = runtime as? PPC64LERuntime else { throw PatchError.noBackend("ppc64le: runtime not installed") }
            guard let entry = rt.tableEntry(for: site.address) else {
                throw PatchError.unrecognisedSite(function: site.function, address: site.address, found: [],
                                                  reason: "outside the text the site table covers")
            }
            var writes: [CodeWrite] = []
            var allocations: [CodeAllocation] = []
            var method = "bl ftrace_caller"
            var call = P.branch(from: site.address, to: rt.ftraceCaller, link: true)
            if call == nil {
                // ftrace_caller is beyond ±32 MB: a stub within reach jumps there via CTR
                // (LR still holds site + 4, which ftrace_caller needs).
                let stubCode = P.loadImmediate(12, rt.ftraceCaller) + [P.mtctr(12), P.bctr]
                let stub = try space.allocate(size: 4 * stubCode.count, near: site.address,
                                              reach: Self.branchReach - 64)
                allocations.append(stub)
                writes.append(CodeWrite(address: stub.address, bytes: stubCode.flatMap(PPC64LEInstruction.bytes),
                                        purpose: "stub: load ftrace_caller's address, bctr"))
                call = P.branch(from: site.address, to: stub.address, link: true)
                method = "bl stub at \(hex(stub.address)) -> ftrace_caller"
            }
            writes.append(CodeWrite(address: entry, bytes: to.littleEndianBytes,
                                    purpose: "site table: the new address", kind: .data))
            writes.append(CodeWrite(address: site.address, bytes: PPC64LEInstruction.bytes(call!), purpose: method))
            if let mark = site.globalEntryMark {
                // After the branch: the mark must never be set while the site is a nop.
                guard let original = image.bytes(at: mark, count: 4) else { throw PatchError.noSuchFunction(site.function) }
                let word = PPC64LEInstruction.word(original, at: 0) | 1
                writes.append(CodeWrite(address: mark, bytes: PPC64LEInstruction.bytes(word),
                                        purpose: "odd-TOC mark: addi r2,r2,imm|1"))
                method += " + odd-TOC mark"
            }
            return PatchPlan(site: site, writes: writes, allocations: allocations, extraInstructions: nil,
                             method: method + " (\(rt.strategy.rawValue))")
        case .returnImmediately:
            // LR still holds the function's return address at the site (mflr only copied it).
            return PatchPlan(site: site, writes: [CodeWrite(address: site.address, bytes: PPC64LEInstruction.bytes(P.blr),
                                                            purpose: "blr at the mcount site (new_addr 0)")],
                             extraInstructions: 0, method: "blr at the mcount site: returns before the body runs")
        case let .nopOut(offset, length):
            guard let symbol = image.symbol(named: site.function) else { throw PatchError.noSuchFunction(site.function) }
            let code = try image.bytes(of: symbol)
            func refuse(_ why: String) -> PatchError {
                .badNopRange(function: site.function, offset: offset, length: length, reason: why)
            }
            guard offset % 4 == 0, length > 0, length % 4 == 0 else { throw refuse("not whole 4-byte instructions") }
            guard offset + UInt64(length) <= UInt64(code.count) else { throw refuse("outside the function") }
            guard symbol.value + offset > site.address else { throw refuse("would touch the entry or the mcount site") }
            for o in stride(from: Int(offset), to: Int(offset) + length, by: 4)
            where PPC64LEInstruction.word(code, at: o) == P.blr {
                throw refuse("would remove the blr at +\(o); use makeNoOp to make the whole function return")
            }
            return PatchPlan(site: site, writes: [CodeWrite(
                address: symbol.value + offset,
                bytes: Array(repeating: PPC64LEInstruction.bytes(P.nop), count: length / 4).flatMap { $0 },
                purpose: "nop \(length / 4) instructions (new_addr 0)")], extraInstructions: 0, method: "nop fill")
        }
    }

    /// A REL24 branch whose next word is not the `nop` a cross-TOC call needs for
    /// `ld r2,24(r1)` (a local call, or a sibling `b`).
    public func callNeedsSameTOC(type: UInt32, code: [UInt8], offset: Int) -> Bool {
        guard type == PPC64Relocation.rel24.rawValue else { return false }
        return offset + 8 > code.count || PPC64LEInstruction.word(code, at: offset + 4) != PPC64LEInstruction.nop
    }

    /// A cross-module call: save our TOC in the caller's TOC slot, load the target's
    /// global entry into r12, jump (the `nop` after the `bl` becomes `ld r2,24(r1)`).
    /// `bl _mcount` in payload code needs none: it becomes a nop, as at machine start.
    public func callStub(type: UInt32, symbol: String, to target: UInt64, at address: UInt64) -> [UInt8]? {
        guard type == PPC64Relocation.rel24.rawValue, symbol != Self.mcount else { return nil }
        typealias P = PPC64LEEncoder
        var words = [P.std(2, 24, 1)] + P.loadImmediate(12, target) + [P.mtctr(12), P.bctr]
        while words.count < callStubSize / 4 { words.append(P.trap) }
        return words.flatMap(PPC64LEInstruction.bytes)
    }

    public var callStubSize: Int { 32 }

    /// ELFv2: the TOC is the .toc (or .got) section + 0x8000; a payload with neither still
    /// gets one, 0x8000 into its first data section, for its REL16 / TOC16 references.
    public func payloadTOC(sections: [(name: String, address: UInt64)]) -> UInt64? {
        let base = sections.first { $0.name == ".got" } ?? sections.first { $0.name == ".toc" }
            ?? sections.first { $0.name.hasPrefix(".data") || $0.name.hasPrefix(".bss") || $0.name.hasPrefix(".rodata") }
            ?? sections.first
        return base.map { $0.address + 0x8000 }
    }

    /// ppc64 relocations: ADDR64, ADDR32, REL64, REL32, REL24 (within one TOC: to the local
    /// entry; to another module: through the stub, with `nop` -> `ld r2,24(r1)`; to
    /// `_mcount`: the call becomes `nop`), REL16_HA/HI/LO (against .TOC. in the global
    /// entry), TOC16, TOC16_LO/HI/HA, TOC16_DS/LO_DS against the payload's TOC.
    public func relocate(type: UInt32, addend: Int64, symbol: UInt64, place: UInt64, bytes: inout [UInt8], offset: Int,
                         context: RelocationContext) throws {
        let s = Int64(bitPattern: symbol), p = Int64(bitPattern: place)
        let overflow = context.overflow
        func put(_ v: UInt64, _ n: Int) throws { try context.store(v, width: n, into: &bytes, at: offset) }
        func word(_ at: Int) throws -> UInt32 {
            guard at >= 0, at + 4 <= bytes.count else { throw overflow("field outside its section", Int64(at)) }
            return PPC64LEInstruction.word(bytes, at: at)
        }
        func half(_ v: Int64, keepLow2: Bool = false) throws {
            var h = UInt64(UInt16(truncatingIfNeeded: v))
            if keepLow2 {
                guard v & 3 == 0 else { throw overflow("DS field not a multiple of 4", v) }
                guard offset >= 0, offset + 2 <= bytes.count else { throw overflow("field outside its section", Int64(offset)) }
                h |= UInt64(bytes[offset] & 3)
            }
            try put(h, 2)
        }
        func toc() throws -> Int64 {
            guard let t = context.toc else { throw overflow("TOC-relative relocation in a payload without a TOC", 0) }
            return Int64(bitPattern: t)
        }
        func ha(_ v: Int64) -> Int64 { ((v &+ 0x8000) >> 16) & 0xffff }
        guard let r = PPC64Relocation(rawValue: type) else {
            throw PatchError.unsupportedRelocation(section: context.section, index: context.index, type: type)
        }
        switch r {
        case .addr64: try put(UInt64(bitPattern: s &+ addend), 8)
        case .rel64: try put(UInt64(bitPattern: s &+ addend &- p), 8)
        case .addr32:
            let v = s &+ addend
            guard let v32 = Int32(exactly: v) else { throw overflow(r.name, v) }
            try put(UInt64(UInt32(bitPattern: v32)), 4)
        case .rel32:
            let v = s &+ addend &- p
            guard let v32 = Int32(exactly: v) else { throw overflow(r.name, v) }
            try put(UInt64(UInt32(bitPattern: v32)), 4)
        case .rel24:
            let insn = try word(offset)
            if context.symbolName == Self.mcount {
                try put(UInt64(PPC64LEInstruction.nop), 4)
                return
            }
            var destination = s &+ addend
            if context.external {
                guard let stub = context.stub else { throw overflow("R_PPC64_REL24 to another module without a stub", 0) }
                guard try word(offset + 4) == PPC64LEInstruction.nop else {
                    throw overflow("R_PPC64_REL24: call to \(context.symbolName) in another TOC has no nop after it", 0)
                }
                try context.store(UInt64(PPC64LEEncoder.ld(2, 24, 1)), width: 4, into: &bytes, at: offset + 4)
                destination = Int64(bitPattern: stub)
            } else {
                destination = destination &+ Int64(context.localEntryOffset)
            }
            let v = destination &- p
            guard v & 3 == 0, v >= -(1 << 25), v < (1 << 25) else { throw overflow(r.name, v) }
            try put(UInt64(insn & ~0x03ff_fffc | UInt32(truncatingIfNeeded: v) & 0x03ff_fffc), 4)
        case .rel16HA: try half(ha(s &+ addend &- p))
        case .rel16HI: try half((s &+ addend &- p) >> 16)
        case .rel16LO: try half(s &+ addend &- p)
        case .toc16, .toc16DS:
            let v = s &+ addend &- (try toc())
            guard Int16(exactly: v) != nil else { throw overflow(r.name, v) }
            try half(v, keepLow2: r == .toc16DS)
        case .toc16LO: try half(s &+ addend &- (try toc()))
        case .toc16LODS: try half(s &+ addend &- (try toc()), keepLow2: true)
        case .toc16HI: try half((s &+ addend &- (try toc())) >> 16)
        case .toc16HA:
            let v = s &+ addend &- (try toc())
            guard Int32(exactly: v) != nil else { throw overflow(r.name, v) }
            try half(ha(v))
        }
    }
}

extension PatchSite.Kind {
    /// `bl _mcount` / the nop machine start leaves after `mflr r0` (-mprofile-kernel).
    public static let mcountCall = Self(rawValue: "mcount-call")
}

extension PatchSite {
    static let globalEntryMarkKey = "global-entry-mark"

    /// The `addi r2,r2,imm` of the global entry whose immediate gets bit 0 set while the
    /// site is redirected (the odd-TOC mark); nil when there is none.
    public var globalEntryMark: UInt64? { archData[Self.globalEntryMarkKey] }
}
