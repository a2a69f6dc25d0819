import SpliceBytes
import SpliceELF
import SpliceMachine
import SplicePatching

/// How a redirected *local* call gets the caller's TOC back. A local caller expects r2
/// unchanged across the call, but the new function computes its own TOC, so something
/// must restore r2 (and reach the real return address) when it returns.
public enum ReturnStrategy: String, Sendable, CaseIterable, Codable {
    /// The ppc64 RFC's design: ftrace_caller keeps the caller's TOC in the TOC save slot of the
    /// caller's frame (24(r1)) and the return address as a 32-bit TOC−LR delta in the
    /// reserved word (12(r1)); `klp_return_helper` restores both. No extra memory, but it
    /// writes into a frame that may not be the caller's after a sibling call.
    case frameless
    /// What Linux merged: a per-vCPU "livepatch stack" (r13 points at it) holding
    /// (TOC, LR) pairs; the helper pops one. Survives nesting and sibling calls.
    case shadowStack = "shadow-stack"
}

/// The ppc64le runtime in one machine: where ftrace_caller, the return helper, the
/// site table and the per-vCPU livepatch stacks are.
public final class PPC64LERuntime: PatchRuntime {
    public let strategy: ReturnStrategy
    public let returnHelper: UInt64
    public let ftraceCaller: UInt64
    public let codeSize: Int
    /// One 8-byte entry per instruction of the traced text: the new address for the
    /// mcount site at that instruction, or 0. Entry for ip: tableBase + 2*(ip − textBase).
    public let tableBase: UInt64
    public let textBase: UInt64
    public let textEnd: UInt64
    /// Per-vCPU livepatch stacks (shadow-stack strategy): vCPU i's r13.
    public let stackAreas: [UInt64]

    init(strategy: ReturnStrategy, returnHelper: UInt64, ftraceCaller: UInt64, codeSize: Int, tableBase: UInt64,
         textBase: UInt64, textEnd: UInt64, stackAreas: [UInt64]) {
        self.strategy = strategy
        self.returnHelper = returnHelper
        self.ftraceCaller = ftraceCaller
        self.codeSize = codeSize
        self.tableBase = tableBase
        self.textBase = textBase
        self.textEnd = textEnd
        self.stackAreas = stackAreas
    }

    public var summary: [String] {
        return ["strategy \(strategy.rawValue)",
                "ftrace_caller at \(hex(ftraceCaller)), return helper at \(hex(returnHelper)) (\(codeSize) bytes)",
                "site table at \(hex(tableBase)) for text \(hex(textBase))..<\(hex(textEnd))"]
            + (stackAreas.isEmpty ? [] : ["livepatch stacks (r13) at " + stackAreas.map(hex).joined(separator: ", ")])
    }

    public var symbols: [UInt64: String] {
        [ftraceCaller: "ftrace_caller", returnHelper: strategy == .frameless ? "klp_return_helper" : "livepatch_return_helper"]
    }

    /// The table entry for the site at `ip`, if the table covers it.
    public func tableEntry(for ip: UInt64) -> UInt64? {
        guard ip >= textBase, ip < textEnd, ip & 3 == 0 else { return nil }
        return tableBase + 2 * (ip - textBase)
    }

    /// Size of a livepatch stack: 16 bytes of header (stack pointer, limit) and 255 pairs.
    static let stackAreaSize: UInt64 = 4096

    /// Emits the helper and ftrace_caller at `base`. Registers on entry to ftrace_caller
    /// (from `bl` at the mcount site, right after `mflr r0`): LR = site + 4, r0 = the
    /// function's return address, r2 = TOC (odd if entered at the marked global entry),
    /// r1 = the caller's stack pointer, r3..r10 the arguments; r11, r12, CTR, CR0 and
    /// CR1 are free.
    static func emit(at base: UInt64, strategy: ReturnStrategy, tableBase: UInt64, textBase: UInt64,
                     siblingBailOut: Bool) throws -> (code: [UInt8], helper: UInt64, ftraceCaller: UInt64) {
        typealias P = PPC64LEEncoder
        let a = PPC64LEAssembler(base: base)
        let (r0, r1, r2, r11, r12, r13) = (0, 1, 2, 11, 12, 13)

        a.label("helper")
        switch strategy {
        case .frameless: // klp_return_helper
            a.emit([P.ld(r2, 24, r1),          // the caller's TOC, saved by ftrace_caller
                    P.lwa(r0, 12, r1),         // TOC − LR
                    P.subf(r0, r0, r2),        // LR = TOC − (TOC − LR)
                    P.mtlr(r0),
                    P.blr])
        case .shadowStack:
            a.emit([P.ld(r11, 0, r13),         // livepatch stack pointer
                    P.addi(r11, r11, -16),
                    P.ld(r2, 0, r11),          // the caller's TOC
                    P.ld(r0, 8, r11),          // the real return address
                    P.std(r11, 0, r13),
                    P.mtlr(r0),
                    P.blr])
        }
        let helper = base

        a.label("ftrace_caller")
        a.emit(P.andiDot(r11, r2, 1))          // CR0.eq: even TOC, a local call
        a.emit(P.xor(r2, r2, r11))             // clear the mark before anything uses r2
        a.emit(P.mflr(r12))                    // site + 4
        // &table[(site − text) / 4] = tableBase + 2*(r12 − 4 − textBase)
        a.emit(P.loadImmediate(r11, tableBase &- 2 &* textBase &- 8))
        a.emit(P.add(r11, r11, r12))
        a.emit(P.add(r11, r11, r12))
        a.emit(P.ld(r11, 0, r11))              // the new address, or 0
        a.emit(P.cmpdi(cr: 1, r11, 0))
        a.bc(.eq, cr: 1, "not_redirected")
        a.emit(P.mtctr(r11))
        a.bc(.ne, cr: 0, "global_call")        // odd TOC: the caller restores its own r2
        a.emit(P.loadImmediate(r12, helper))
        if siblingBailOut {
            // The RFC's emergency exit: already returning through the helper (a sibling
            // call from a redirected function), so the saved TOC and LR are the right ones.
            a.emit(P.cmpd(cr: 1, r0, r12))
            a.bc(.eq, cr: 1, "enter")
        }
        switch strategy {
        case .frameless:
            a.emit([P.subf(r0, r0, r2),        // TOC − LR, in the reserved word
                    P.stw(r0, 12, r1),
                    P.std(r2, 24, r1)])        // the caller's TOC, in its TOC save slot
        case .shadowStack:
            a.emit([P.ld(r11, 0, r13),
                    P.ld(r12, 8, r13),         // limit
                    P.cmpld(cr: 1, r11, r12)])
            a.bc(.ge, cr: 1, "overflow")
            a.emit([P.std(r2, 0, r11),
                    P.std(r0, 8, r11),
                    P.addi(r11, r11, 16),
                    P.std(r11, 0, r13)])
            a.emit(P.loadImmediate(r12, helper))
        }
        a.label("enter")
        a.emit([P.mtlr(r12),                   // return through the helper
                P.mfctr(r12),                  // r12 = entry, as the global-entry ABI wants
                P.bctr])
        a.label("global_call")
        a.emit([P.mtlr(r0),
                P.mr(r12, r11),
                P.bctr])
        a.label("not_redirected")              // return into the function as _mcount would
        a.emit([P.mtctr(r12),
                P.mtlr(r0),
                P.bctr])
        if strategy == .shadowStack {
            a.label("overflow")                // the livepatch stack is full: stop the vCPU
            a.emit(P.trap)
        }
        let code = try a.assemble()
        return (code, helper, a.address(of: "ftrace_caller")!)
    }
}
