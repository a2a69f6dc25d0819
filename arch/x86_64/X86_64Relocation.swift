/// The x86-64 psABI relocation types a payload may carry (the rest are refused by name).
public enum X86_64Relocation: UInt32, CaseIterable, Sendable {
    /// S + A, 64 bits.
    case r64 = 1
    /// S + A - P, 32 bits signed.
    case pc32 = 2
    /// L + A - P: the payload's calls, the PLT entry being the symbol itself.
    case plt32 = 4
    /// S + A, 32 bits zero-extended.
    case r32 = 10
    /// S + A, 32 bits sign-extended.
    case r32S = 11
    /// S + A - P, 64 bits.
    case pc64 = 24

    /// The psABI's name, for messages.
    public var name: String {
        switch self {
        case .r64: return "R_X86_64_64"
        case .pc32: return "R_X86_64_PC32"
        case .plt32: return "R_X86_64_PLT32"
        case .r32: return "R_X86_64_32"
        case .r32S: return "R_X86_64_32S"
        case .pc64: return "R_X86_64_PC64"
        }
    }

    /// Relative to the field's own place (its target lies past the instruction's end).
    public var isPCRelative: Bool { [.pc32, .plt32, .pc64].contains(self) }
}
