/// Power ISA instruction encoders for the code Splice emits on ppc64le (ftrace_caller,
/// the return helpers, stubs, site patches). Hand-written because no assembler library
/// is available here; every form is decoded back by Capstone in PPC64LEEncoderTests.
/// Words are built in the ISA's big-endian bit numbering and stored little-endian.
public enum PPC64LEEncoder {
    public typealias Word = UInt32

    static func d(_ op: UInt32, _ rt: Int, _ ra: Int, _ imm: UInt16) -> Word {
        op << 26 | UInt32(rt) << 21 | UInt32(ra) << 16 | UInt32(imm)
    }

    static func x(_ rs: Int, _ ra: Int, _ rb: Int, _ xo: UInt32, rc: Bool = false) -> Word {
        31 << 26 | UInt32(rs) << 21 | UInt32(ra) << 16 | UInt32(rb) << 11 | xo << 1 | (rc ? 1 : 0)
    }

    static func ds(_ op: UInt32, _ rt: Int, _ offset: Int16, _ ra: Int, _ xo: UInt32) -> Word {
        precondition(offset & 3 == 0, "DS-form offsets are multiples of 4")
        return op << 26 | UInt32(rt) << 21 | UInt32(ra) << 16 | UInt32(UInt16(bitPattern: offset)) & 0xfffc | xo
    }

    // D-form arithmetic and logic.
    public static func addi(_ rt: Int, _ ra: Int, _ si: Int16) -> Word { d(14, rt, ra, UInt16(bitPattern: si)) }
    public static func addis(_ rt: Int, _ ra: Int, _ si: Int16) -> Word { d(15, rt, ra, UInt16(bitPattern: si)) }
    public static func li(_ rt: Int, _ si: Int16) -> Word { addi(rt, 0, si) }
    public static func lis(_ rt: Int, _ si: Int16) -> Word { addis(rt, 0, si) }
    public static func ori(_ ra: Int, _ rs: Int, _ ui: UInt16) -> Word { d(24, rs, ra, ui) }
    public static func oris(_ ra: Int, _ rs: Int, _ ui: UInt16) -> Word { d(25, rs, ra, ui) }
    /// `andi. ra,rs,ui` (always sets CR0).
    public static func andiDot(_ ra: Int, _ rs: Int, _ ui: UInt16) -> Word { d(28, rs, ra, ui) }
    public static func cmpdi(cr: Int, _ ra: Int, _ si: Int16) -> Word {
        11 << 26 | UInt32(cr) << 23 | 1 << 21 | UInt32(ra) << 16 | UInt32(UInt16(bitPattern: si))
    }

    // Loads and stores.
    public static func ld(_ rt: Int, _ offset: Int16, _ ra: Int) -> Word { ds(58, rt, offset, ra, 0) }
    public static func lwa(_ rt: Int, _ offset: Int16, _ ra: Int) -> Word { ds(58, rt, offset, ra, 2) }
    public static func std(_ rs: Int, _ offset: Int16, _ ra: Int) -> Word { ds(62, rs, offset, ra, 0) }
    public static func stw(_ rs: Int, _ offset: Int16, _ ra: Int) -> Word { d(36, rs, ra, UInt16(bitPattern: offset)) }

    // X-form.
    public static func add(_ rt: Int, _ ra: Int, _ rb: Int) -> Word { x(rt, ra, rb, 266) }
    public static func mulld(_ rt: Int, _ ra: Int, _ rb: Int) -> Word { x(rt, ra, rb, 233) }
    /// `subf rt,ra,rb`: rt = rb − ra.
    public static func subf(_ rt: Int, _ ra: Int, _ rb: Int) -> Word { x(rt, ra, rb, 40) }
    public static func xor(_ ra: Int, _ rs: Int, _ rb: Int) -> Word { x(rs, ra, rb, 316) }
    public static func or(_ ra: Int, _ rs: Int, _ rb: Int) -> Word { x(rs, ra, rb, 444) }
    public static func mr(_ ra: Int, _ rs: Int) -> Word { or(ra, rs, rs) }
    public static func cmpd(cr: Int, _ ra: Int, _ rb: Int) -> Word { x(cr << 2 | 1, ra, rb, 0) }
    public static func cmpld(cr: Int, _ ra: Int, _ rb: Int) -> Word { x(cr << 2 | 1, ra, rb, 32) }

    // Special-purpose registers: the SPR number's halves are swapped in the field.
    static func spr(_ n: Int) -> Int { (n & 0x1f) << 5 | n >> 5 }
    static func mfspr(_ rt: Int, _ n: Int) -> Word { 31 << 26 | UInt32(rt) << 21 | UInt32(spr(n)) << 11 | 339 << 1 }
    static func mtspr(_ n: Int, _ rs: Int) -> Word { 31 << 26 | UInt32(rs) << 21 | UInt32(spr(n)) << 11 | 467 << 1 }
    public static func mflr(_ rt: Int) -> Word { mfspr(rt, 8) }
    public static func mtlr(_ rs: Int) -> Word { mtspr(8, rs) }
    public static func mfctr(_ rt: Int) -> Word { mfspr(rt, 9) }
    public static func mtctr(_ rs: Int) -> Word { mtspr(9, rs) }

    // MD-form rotates.
    static func md(_ ra: Int, _ rs: Int, _ sh: Int, _ mbe: Int, _ xo: UInt32) -> Word {
        let field = (mbe & 0x1f) << 1 | mbe >> 5
        return 30 << 26 | UInt32(rs) << 21 | UInt32(ra) << 16 | UInt32(sh & 0x1f) << 11 | UInt32(field) << 5
            | xo << 2 | UInt32(sh >> 5) << 1
    }
    public static func rldicl(_ ra: Int, _ rs: Int, _ sh: Int, _ mb: Int) -> Word { md(ra, rs, sh, mb, 0) }
    public static func rldicr(_ ra: Int, _ rs: Int, _ sh: Int, _ me: Int) -> Word { md(ra, rs, sh, me, 1) }
    /// `sldi ra,rs,n` = rldicr ra,rs,n,63−n.
    public static func sldi(_ ra: Int, _ rs: Int, _ n: Int) -> Word { rldicr(ra, rs, n, 63 - n) }

    // Branches.
    public static let blr: Word = 0x4e80_0020
    public static let bctr: Word = 0x4e80_0420
    public static let bctrl: Word = 0x4e80_0421
    public static let nop: Word = PPC64LEInstruction.nop
    public static let trap: Word = PPC64LEInstruction.trap

    /// `b`/`bl` from `from` to `to`, or nil beyond ±32 MB.
    public static func branch(from: UInt64, to: UInt64, link: Bool) -> Word? {
        let offset = Int64(bitPattern: to &- from)
        guard offset & 3 == 0, offset >= -(1 << 25), offset < (1 << 25) else { return nil }
        return 18 << 26 | UInt32(truncatingIfNeeded: offset) & 0x03ff_fffc | (link ? 1 : 0)
    }

    /// Condition codes for `bc` on a CR field.
    public enum Condition { case eq, ne, lt, ge }

    /// `beq`/`bne`/`blt`/`bge cr,target`, or nil beyond ±32 KB.
    public static func branchConditional(_ c: Condition, cr: Int, from: UInt64, to: UInt64) -> Word? {
        let offset = Int64(bitPattern: to &- from)
        guard offset & 3 == 0, offset >= -(1 << 15), offset < (1 << 15) else { return nil }
        let (bo, bit): (UInt32, Int) = {
            switch c {
            case .eq: return (12, 2)
            case .ne: return (4, 2)
            case .lt: return (12, 0)
            case .ge: return (4, 0)
            }
        }()
        return 16 << 26 | bo << 21 | UInt32(cr * 4 + bit) << 16 | UInt32(truncatingIfNeeded: offset) & 0xfffc
    }

    /// The shortest sequence that puts a 64-bit constant in `rt` (1, 2 or 5 words).
    public static func loadImmediate(_ rt: Int, _ value: UInt64) -> [Word] {
        let v = Int64(bitPattern: value)
        if let small = Int16(exactly: v) { return [li(rt, small)] }
        if Int32(exactly: v) != nil {
            let high = lis(rt, Int16(truncatingIfNeeded: v >> 16))
            let low = UInt16(truncatingIfNeeded: v)
            return low == 0 ? [high] : [high, ori(rt, rt, low)]
        }
        return [lis(rt, Int16(truncatingIfNeeded: v >> 48)), ori(rt, rt, UInt16(truncatingIfNeeded: v >> 32)),
                sldi(rt, rt, 32), oris(rt, rt, UInt16(truncatingIfNeeded: v >> 16)), ori(rt, rt, UInt16(truncatingIfNeeded: v))]
    }
}

/// Builds a block of ppc64le code at a known address, with forward labels.
public final class PPC64LEAssembler {
    public let base: UInt64
    public private(set) var words: [PPC64LEEncoder.Word] = []
    private var labels: [String: UInt64] = [:]
    private enum Fixup { case branch(link: Bool), conditional(PPC64LEEncoder.Condition, cr: Int) }
    private var fixups: [(index: Int, label: String, kind: Fixup)] = []


    public init(base: UInt64) { self.base = base }

    public var address: UInt64 { base + UInt64(4 * words.count) }
    public func emit(_ w: PPC64LEEncoder.Word) { words.append(w) }
    public func emit(_ ws: [PPC64LEEncoder.Word]) { words += ws }
    public func label(_ name: String) { labels[name] = address }
    public func address(of label: String) -> UInt64? { labels[label] }

    public func b(_ label: String, link: Bool = false) {
        fixups.append((words.count, label, .branch(link: link)))
        emit(0)
    }

    public func bc(_ c: PPC64LEEncoder.Condition, cr: Int = 0, _ label: String) {
        fixups.append((words.count, label, .conditional(c, cr: cr)))
        emit(0)
    }

    /// The finished bytes, little-endian.
    public func assemble() throws -> [UInt8] {
        for f in fixups {
            guard let target = labels[f.label] else { throw PPC64LEEncodingError(description: "undefined label \(f.label)") }
            let from = base + UInt64(4 * f.index)
            let word: PPC64LEEncoder.Word?
            switch f.kind {
            case let .branch(link): word = PPC64LEEncoder.branch(from: from, to: target, link: link)
            case let .conditional(c, cr): word = PPC64LEEncoder.branchConditional(c, cr: cr, from: from, to: target)
            }
            guard let w = word else { throw PPC64LEEncodingError(description: "branch to \(f.label) out of range") }
            words[f.index] = w
        }
        return words.flatMap(PPC64LEInstruction.bytes)
    }
}

public struct PPC64LEEncodingError: Error, CustomStringConvertible {
    public let description: String
}
