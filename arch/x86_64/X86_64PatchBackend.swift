import SpliceBytes
import SpliceDisassembly
import SpliceELF
import SpliceMachine
import SplicePatching

/// x86-64 live patching as in xSplice (Xen's livepatch): the first bytes of the old
/// function become a jump to the new one; revert puts the saved bytes back.
public struct X86_64PatchBackend: PatchBackend {
    public init() {}

    public var architecture: any CPUArchitecture { X86_64Architecture() }
    /// The longest sequence written at a site: `jmp [rip]` + abs64.
    public let undoBufferSize = X86_64TrampolineEncoder.absoluteJumpSize

    public let absoluteAddressRelocation = X86_64Relocation.r64.rawValue
    /// The -mfentry tracing call.
    public var runtimeSymbols: Set<String> { ["__fentry__"] }
    public var fixtures: any CodeFixtures { X86_64CodeFixtures() }

    /// The site is the function's first byte, or the byte after its endbr64 (indirect
    /// calls must still land on an ENDBR). A compiler-reserved slot there (fentry call,
    /// patchable NOPs) is the whole room: the body is never touched.
    public func patchSite(of function: ELFSymbol, in image: ELFFile) throws -> PatchSite {
        let code = try image.bytes(of: function)
        let offset = X86_64Prologue.landingPadLength(code)
        let address = function.value + UInt64(offset)
        if let (_, note) = X86_64Prologue.patchableSlot(Array(code.dropFirst(offset)), at: address, in: image) {
            return PatchSite(function: function.name, functionAddress: function.value, functionSize: function.size,
                             kind: .patchableEntry, address: address, room: X86_64Prologue.slotSize, isReservedSlot: true,
                             note: note)
        }
        return PatchSite(function: function.name, functionAddress: function.value, functionSize: function.size,
                         kind: offset > 0 ? .afterLandingPad : .entry, address: address, room: code.count - offset,
                         note: offset > 0 ? "after endbr64" : "function entry")
    }

    public func verifyUnpatched(_ current: [UInt8], at site: PatchSite, in image: ELFFile) throws {
        guard site.kind == .patchableEntry else { return }
        // The slot must still be one of the forms the compiler leaves.
        if X86_64Prologue.patchableSlot(current, at: site.address, in: image) == nil {
            throw PatchError.unrecognisedSite(function: site.function, address: site.address, found: current,
                                              reason: "the patchable entry holds neither call __fentry__ nor NOPs")
        }
    }

    public func encode(_ target: RedirectTarget, at site: PatchSite, in image: ELFFile, runtime: (any PatchRuntime)?,
                       space: CodeSpace) throws -> PatchPlan {
        typealias E = X86_64TrampolineEncoder
        switch target {
        case let .address(to):
            guard site.room >= E.nearJumpSize else {
                throw PatchError.functionTooShort(function: site.function, room: site.room, needed: E.nearJumpSize,
                                                  method: "jmp rel32")
            }
            if let jump = E.nearJump(from: site.address, to: to) {
                return PatchPlan(site: site, writes: [CodeWrite(address: site.address, bytes: jump, purpose: "jmp rel32")],
                                 extraInstructions: 1, method: "jmp rel32")
            }
            if site.room >= E.absoluteJumpSize {
                return PatchPlan(site: site, writes: [CodeWrite(address: site.address, bytes: E.absoluteJump(to: to),
                                                                purpose: "jmp [rip] + abs64")],
                                 extraInstructions: 1, method: "jmp [rip] absolute (target beyond ±2 GB)")
            }
            // Too short for the absolute form: a slot within rel32 reach holds it.
            let reach = UInt64(Int32.max) - UInt64(E.absoluteJumpSize)
            let slot = try space.allocate(size: E.absoluteJumpSize, near: site.address + UInt64(E.nearJumpSize),
                                          reach: reach)
            guard let hop = E.nearJump(from: site.address, to: slot.address) else {
                space.release(slot)
                throw PatchError.noCodeSpaceInReach(near: site.address, reach: reach, size: E.absoluteJumpSize)
            }
            return PatchPlan(
                site: site,
                writes: [CodeWrite(address: slot.address, bytes: E.absoluteJump(to: to), purpose: "far-jump slot: jmp [rip] + abs64"),
                         CodeWrite(address: site.address, bytes: hop, purpose: "jmp rel32 to the far-jump slot")],
                allocations: [slot], extraInstructions: 2,
                method: "jmp rel32 to slot \(hex(slot.address)), jmp [rip] absolute")
        case .returnImmediately:
            // A patchable slot is filled completely so it still decodes cleanly.
            let length = site.kind == .patchableEntry ? site.room : 1
            return PatchPlan(site: site, writes: [CodeWrite(address: site.address, bytes: [E.ret] + E.nopFill(length - 1),
                                                            purpose: "ret (new_addr 0)")],
                             extraInstructions: 0, method: "ret: the function returns at once")
        case let .nopOut(offset, length):
            try checkNopRange(site: site, offset: offset, length: length, image: image)
            return PatchPlan(site: site, writes: [CodeWrite(address: site.functionAddress + offset, bytes: E.nopFill(length),
                                                            purpose: "nop \(length) bytes (new_addr 0)")],
                             extraInstructions: 0, method: "nop fill")
        }
    }

    /// The int3 protocol (Linux's text_poke_bp): int3 over the first byte, sync,
    /// the rest, sync, the first byte, sync. A vCPU reaching the site meanwhile traps and
    /// is sent to the new code (`trapRedirect`). Data writes and single bytes go as they are.
    public func nonStopSteps(for writes: [CodeWrite]) -> [NonStopStep] {
        writes.flatMap { w -> [NonStopStep] in
            guard w.kind == .code, w.bytes.count > 1 else { return [.write(w.address, w.bytes, purpose: w.purpose), .sync] }
            return [.trapArmed(w.address, final: w.bytes),
                    .write(w.address, [0xcc], purpose: "int3 over the first byte"), .sync,
                    .write(w.address + 1, Array(w.bytes.dropFirst()), purpose: "bytes 1..\(w.bytes.count - 1)"), .sync,
                    .write(w.address, [w.bytes[0]], purpose: "the first byte: \(w.purpose)"), .sync]
        }
    }

    /// A vCPU trapped on the int3 of an in-flight write goes where the finished write would
    /// take it: where a `jmp rel32` or `jmp [rip]` + abs64 goes, or past a NOP fill. A `ret`
    /// has no such place (nil: the non-stop emulator refuses it before writing).
    public func trapRedirect(at address: UInt64, final: [UInt8]) -> UInt64? {
        typealias E = X86_64TrampolineEncoder
        if final.count == E.nearJumpSize, final[0] == 0xe9 {
            let rel = Int32(bitPattern: UInt32(final[1]) | UInt32(final[2]) << 8 | UInt32(final[3]) << 16 | UInt32(final[4]) << 24)
            return UInt64(bitPattern: Int64(bitPattern: address + 5) &+ Int64(rel))
        }
        if final.count == E.absoluteJumpSize, final.prefix(6) == E.absoluteJump(to: 0).prefix(6) {
            return final.suffix(8).reversed().reduce(0) { $0 << 8 | UInt64($1) }
        }
        if final == E.nopFill(final.count) { return address + UInt64(final.count) }
        return nil
    }

    /// A NOP range must cover whole instructions inside the function, keep the endbr64,
    /// and remove no return (the function must still return).
    func checkNopRange(site: PatchSite, offset: UInt64, length: Int, image: ELFFile) throws {
        func refuse(_ reason: String) -> PatchError {
            .badNopRange(function: site.function, offset: offset, length: length, reason: reason)
        }
        guard length > 0, offset + UInt64(length) <= site.functionSize else { throw refuse("outside the function") }
        if site.kind == .afterLandingPad && offset < 4 { throw refuse("would remove the endbr64 landing pad") }
        guard let symbol = image.symbol(named: site.function) else { throw PatchError.noSuchFunction(site.function) }
        let code = try image.bytes(of: symbol)
        let insns = try Disassembler(mode: .x86_64).decode(code, address: symbol.value)
        let starts = Set(insns.map { $0.address - symbol.value }) .union([UInt64(code.count)])
        guard starts.contains(offset) else { throw refuse("does not start on an instruction boundary") }
        guard starts.contains(offset + UInt64(length)) else { throw refuse("does not end on an instruction boundary") }
        let covered = insns.filter { $0.address - symbol.value >= offset && $0.address - symbol.value < offset + UInt64(length) }
        if let r = covered.first(where: { $0.mnemonic == "ret" }) {
            throw refuse("would remove the ret at \(hex(r.address)); use makeNoOp to make the whole function return")
        }
    }

    /// PC-relative fields count from the end of their instruction, which may carry an
    /// immediate after the field: the instruction holding `offset` is decoded (Capstone,
    /// from the function's start) to find that end.
    public func relocationTargetOffset(type: UInt32, addend: Int64, code: [UInt8], offset: Int) -> Int64 {
        guard X86_64Relocation(rawValue: type)?.isPCRelative == true, let d = try? Disassembler(mode: .x86_64) else { return addend }
        var at = 0
        while at < code.count, let insn = d.decodeOne(code, offset: at, address: UInt64(at)) {
            if at + insn.size > offset { return addend + Int64(at + insn.size - offset) }
            at += max(insn.size, 1)
        }
        return addend + 4
    }

    /// x86-64 psABI relocations a payload uses: S + A (64, 32, 32S), S + A - P (PC32,
    /// PLT32 with the PLT entry being the symbol itself, PC64).
    public func relocate(type: UInt32, addend: Int64, symbol: UInt64, place: UInt64, bytes: inout [UInt8], offset: Int,
                         context: RelocationContext) throws {
        let s = Int64(bitPattern: symbol), p = Int64(bitPattern: place)
        let overflow = context.overflow
        func put(_ v: UInt64, _ n: Int) throws { try context.store(v, width: n, into: &bytes, at: offset) }
        guard let r = X86_64Relocation(rawValue: type) else {
            throw PatchError.unsupportedRelocation(section: context.section, index: context.index, type: type)
        }
        switch r {
        case .r64:
            try put(UInt64(bitPattern: s &+ addend), 8)
        case .pc32, .plt32:
            let v = s &+ addend &- p
            guard let v32 = Int32(exactly: v) else { throw overflow(r.name, v) }
            try put(UInt64(UInt32(bitPattern: v32)), 4)
        case .r32:
            let v = s &+ addend
            guard v >= 0, v <= Int64(UInt32.max) else { throw overflow(r.name, v) }
            try put(UInt64(v), 4)
        case .r32S:
            let v = s &+ addend
            guard let v32 = Int32(exactly: v) else { throw overflow(r.name, v) }
            try put(UInt64(UInt32(bitPattern: v32)), 4)
        case .pc64:
            try put(UInt64(bitPattern: s &+ addend &- p), 8)
        }
    }
}

extension PatchSite.Kind {
    /// Right after an endbr64 landing pad, which indirect branches must still hit.
    public static let afterLandingPad = Self(rawValue: "after-landing-pad")
    /// A compiler-reserved slot (`call __fentry__` or 5 bytes of NOPs): the redirect
    /// replaces only the slot, never the body.
    public static let patchableEntry = Self(rawValue: "patchable-entry")
}
