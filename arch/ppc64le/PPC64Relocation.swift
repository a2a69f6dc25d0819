/// The ELFv2 ppc64 relocation types a payload may carry (the rest are refused by name).
public enum PPC64Relocation: UInt32, CaseIterable, Sendable {
    case addr32 = 1
    /// A `bl`/`b` target: 24 bits, word-aligned, ±32 MiB.
    case rel24 = 10
    case rel32 = 26
    case addr64 = 38
    case rel64 = 44
    /// Against the payload's TOC: the whole offset, and its low, high and adjusted-high halves.
    case toc16 = 47
    case toc16LO = 48
    case toc16HI = 49
    case toc16HA = 50
    /// As toc16 / toc16LO for a DS-form field (ld/std: the low 2 bits are the opcode's).
    case toc16DS = 63
    case toc16LODS = 64
    /// PC-relative halves: the global entry's `addis r2,r12` / `addi r2,r2` against `.TOC.`.
    case rel16LO = 250
    case rel16HI = 251
    case rel16HA = 252

    /// The ABI's name, for messages.
    public var name: String {
        switch self {
        case .addr32: return "R_PPC64_ADDR32"
        case .rel24: return "R_PPC64_REL24"
        case .rel32: return "R_PPC64_REL32"
        case .addr64: return "R_PPC64_ADDR64"
        case .rel64: return "R_PPC64_REL64"
        case .toc16: return "R_PPC64_TOC16"
        case .toc16LO: return "R_PPC64_TOC16_LO"
        case .toc16HI: return "R_PPC64_TOC16_HI"
        case .toc16HA: return "R_PPC64_TOC16_HA"
        case .toc16DS: return "R_PPC64_TOC16_DS"
        case .toc16LODS: return "R_PPC64_TOC16_LO_DS"
        case .rel16LO: return "R_PPC64_REL16_LO"
        case .rel16HI: return "R_PPC64_REL16_HI"
        case .rel16HA: return "R_PPC64_REL16_HA"
        }
    }
}
