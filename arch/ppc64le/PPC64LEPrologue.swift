import SpliceBytes
import SpliceELF
import SpliceMachine

/// Power ISA instruction words Splice reads or writes, and their fields.
public enum PPC64LEInstruction {
    public static let nop: UInt32 = 0x6000_0000          // ori r0,r0,0
    public static let trap: UInt32 = 0x7fe0_0008         // tw 31,r0,r0
    public static let mflrR0: UInt32 = 0x7c08_02a6       // mflr r0
    public static let stdR0_16R1: UInt32 = 0xf801_0010   // std r0,16(r1)

    public static func bytes(_ word: UInt32) -> [UInt8] { word.littleEndianBytes }
    public static func word(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        bytes.littleEndian(UInt32.self, at: offset)
    }

    static func primaryOpcode(_ w: UInt32) -> UInt32 { w >> 26 }
    static func rt(_ w: UInt32) -> UInt32 { (w >> 21) & 31 }
    static func ra(_ w: UInt32) -> UInt32 { (w >> 16) & 31 }
    /// The signed 16-bit immediate of a D-form instruction (Capstone 4 prints it unsigned).
    public static func signedImmediate(_ w: UInt32) -> Int16 { Int16(bitPattern: UInt16(w & 0xffff)) }

    /// `bl target` (I-form, AA=0, LK=1) at `address`: the branch target, if it is one.
    public static func branchAndLinkTarget(_ w: UInt32, at address: UInt64) -> UInt64? {
        guard primaryOpcode(w) == 18, w & 3 == 1 else { return nil }
        // LI is 24 bits shifted left by 2: sign-extend the 26-bit field.
        let li = Int64(Int32(bitPattern: (w & 0x03ff_fffc) << 6) >> 6)
        return UInt64(bitPattern: Int64(bitPattern: address) &+ li)
    }

    /// `addis r2,r12,hi` (position-independent global entry) or `lis r2,hi` (the form ld
    /// relaxes it to in a non-PIC executable).
    static func isTOCHigh(_ w: UInt32) -> Bool {
        primaryOpcode(w) == 15 && rt(w) == 2 && (ra(w) == 12 || ra(w) == 0)
    }

    /// `addi r2,r2,lo`: the instruction whose immediate the odd-TOC mark changes.
    static func isTOCLow(_ w: UInt32) -> Bool { primaryOpcode(w) == 14 && rt(w) == 2 && ra(w) == 2 }
}

/// Reads a -mprofile-kernel function's prologue:
///
///     f:     addis r2,r12,hi  (or lis r2,hi)   global entry, only if f uses the TOC
///            addi  r2,r2,lo                   <- odd-TOC mark goes in this immediate
///     f+8:   mflr  r0                          local entry
///           [std   r0,16(r1)]                  older gcc only
///            bl    _mcount                     <- the mcount site
///
/// Shared by `splice inspect` and the patch backend.
enum PPC64LEPrologue {
    struct McountSite {
        /// Offset of the `bl _mcount` (or the nop that replaced it) from the function.
        var offset: Int
        var olderPrologue: Bool
        var alreadyNop: Bool
        /// Offset of the global entry's `addi r2,r2,imm`, if the function has one and the
        /// RFC's rule finds it (at site-8, else site-12, never when the site lies within
        /// 12 bytes of a 64 KiB boundary).
        var markOffset: Int?
        var markSkippedNearBoundary: Bool
    }

    static func mcountSite(of symbol: ELFSymbol, code: [UInt8], in image: ELFFile) -> McountSite? {
        let words = (0..<(min(code.count, 32) / 4)).map { PPC64LEInstruction.word(code, at: 4 * $0) }
        let mcount = image.symbol(named: "_mcount")?.value
        let start = Int(symbol.localEntryOffset / 4)
        for i in start..<min(start + 4, words.count) where words[i] == PPC64LEInstruction.mflrR0 {
            var j = i + 1
            if j < words.count && words[j] == PPC64LEInstruction.stdR0_16R1 { j += 1 }
            guard j < words.count else { return nil }
            let address = symbol.value + UInt64(4 * j)
            let isCall = PPC64LEInstruction.branchAndLinkTarget(words[j], at: address).map { $0 == mcount } ?? false
            guard isCall || words[j] == PPC64LEInstruction.nop else { return nil }
            var site = McountSite(offset: 4 * j, olderPrologue: j == i + 2, alreadyNop: !isCall, markOffset: nil,
                                  markSkippedNearBoundary: false)
            if address & 0xffff < 12 {
                // The RFC's guard: too close to the start of a 64 KiB page to look before
                // it; such a function has no global entry to mark anyway.
                site.markSkippedNearBoundary = true
            } else {
                for back in [2, 3] where j - back >= 1 {
                    if PPC64LEInstruction.isTOCLow(words[j - back]) && PPC64LEInstruction.isTOCHigh(words[j - back - 1]) {
                        site.markOffset = 4 * (j - back)
                        break
                    }
                }
            }
            return site
        }
        return nil
    }

    /// The two nops `-fpatchable-function-entry=2` leaves at a function's local entry (what
    /// Linux ≥ 6.6 built with GCC ≥ 13.1 uses instead of `-mprofile-kernel`'s mcount call;
    /// ftrace turns them into `mflr r0; bl ftrace_caller`). Its address is the first nop,
    /// as the kernel's table records it.
    static func patchableEntrySlot(at address: UInt64, in image: ELFFile) -> PrologueSite? {
        guard let code = image.bytes(at: address, count: 8) else { return nil }
        let words = (0..<2).map { PPC64LEInstruction.word(code, at: 4 * $0) }
        let nops = words == [PPC64LEInstruction.nop, PPC64LEInstruction.nop]
        let enabled = words[0] == PPC64LEInstruction.mflrR0 && PPC64LEInstruction.branchAndLinkTarget(words[1], at: address + 4) != nil
        guard nops || enabled else { return nil }
        return PrologueSite(kind: .patchableEntry, address: address, offset: 0, isTracingSlot: true,
                            note: nops ? "two nops (-fpatchable-function-entry=2): become mflr r0; bl ftrace_caller"
                                : "mflr r0; bl (an enabled -fpatchable-function-entry=2 slot)")
    }

    /// An mcount site at `address` whatever function holds it: `bl _mcount` (or its nop)
    /// right after `mflr r0`, or after `mflr r0; std r0,16(r1)` (older gcc).
    static func mcountSlot(at address: UInt64, in image: ELFFile) -> PrologueSite? {
        guard address >= 8, let before = image.bytes(at: address - 8, count: 12) else { return nil }
        let words = (0..<3).map { PPC64LEInstruction.word(before, at: 4 * $0) }
        let mcount = image.symbol(named: "_mcount")?.value
        let isCall = PPC64LEInstruction.branchAndLinkTarget(words[2], at: address).map { $0 == mcount } ?? false
        guard isCall || words[2] == PPC64LEInstruction.nop else { return nil }
        let older = words[1] == PPC64LEInstruction.stdR0_16R1 && words[0] == PPC64LEInstruction.mflrR0
        guard words[1] == PPC64LEInstruction.mflrR0 || older else { return nil }
        return PrologueSite(kind: .mcountCall, address: address, offset: 0, isTracingSlot: true,
                            note: older ? "mflr r0; std r0,16(r1); bl _mcount (older gcc)" : isCall ? "mflr r0; bl _mcount" : "mcount site already nop")
    }

    static func sites(of symbol: ELFSymbol, code: [UInt8], in image: ELFFile) -> [PrologueSite] {
        guard let site = mcountSite(of: symbol, code: code, in: image) else {
            // No mcount call: the newer prologue, two nops at the local entry.
            let entry = symbol.value + symbol.localEntryOffset
            guard image.symbol(named: "_mcount") == nil, symbol.size >= symbol.localEntryOffset + 8,
                  var slot = patchableEntrySlot(at: entry, in: image) else { return [] }
            slot.offset = symbol.localEntryOffset
            return [slot]
        }
        let address = symbol.value + UInt64(site.offset)
        var sites = [PrologueSite(
            kind: .mcountCall, address: address, offset: UInt64(site.offset), isTracingSlot: true,
            note: site.alreadyNop ? "mcount site already nop"
                : site.olderPrologue ? "mflr r0; std r0,16(r1); bl _mcount (older gcc)" : "mflr r0; bl _mcount")]
        if let mark = site.markOffset {
            let word = PPC64LEInstruction.word(code, at: mark)
            sites.append(PrologueSite(
                kind: .tocSetup, address: symbol.value + UInt64(mark), offset: UInt64(mark),
                note: "addi r2,r2,\(PPC64LEInstruction.signedImmediate(word)) at site-\(site.offset - mark): the odd-TOC mark sets bit 0 of this immediate"))
        } else {
            sites.append(PrologueSite(
                kind: .singleEntry, address: symbol.value, offset: 0,
                note: site.markSkippedNearBoundary
                    ? "site within 12 bytes of a 64 KiB boundary: no global-entry pair to mark (the RFC's guard)"
                    : "no global-entry pair: no TOC use, needs no odd-TOC mark"))
        }
        return sites.sorted { $0.offset < $1.offset }
    }
}

extension PrologueSite.Kind {
    /// `bl _mcount` after `mflr r0` (-mprofile-kernel).
    public static let mcountCall = Self(rawValue: "mcount-call")
    /// Two nops at the local entry (-fpatchable-function-entry=2).
    public static let patchableEntry = Self(rawValue: "patchable-entry")
    /// The global entry's `addi r2,r2,imm`: where the odd-TOC mark goes.
    public static let tocSetup = Self(rawValue: "toc-addi")
    /// A function without a global-entry pair: it does not use the TOC, so a redirect
    /// needs no odd-TOC mark (the address is its one entry).
    public static let singleEntry = Self(rawValue: "single-entry")
}
