/// ELF machine numbers Splice knows by name (e_machine).
public enum ELFMachine {
    public static let x86_64: UInt16 = 62
    public static let ppc64: UInt16 = 21

    public static func name(_ machine: UInt16) -> String {
        switch machine {
        case x86_64: return "x86-64"
        case ppc64: return "PowerPC64"
        case 3: return "i386"
        case 40: return "ARM"
        case 183: return "AArch64"
        case 243: return "RISC-V"
        default: return "unknown"
        }
    }
}

/// e_type.
public enum ELFFileType: Equatable, Sendable, CustomStringConvertible {
    case relocatable, executable, sharedObject, core, other(UInt16)

    public var description: String {
        switch self {
        case .relocatable: return "ET_REL (relocatable object)"
        case .executable: return "ET_EXEC (executable)"
        case .sharedObject: return "ET_DYN (shared object or position-independent executable)"
        case .core: return "ET_CORE (core dump)"
        case let .other(v): return "e_type \(v)"
        }
    }

    init(_ raw: UInt16) {
        switch raw {
        case 1: self = .relocatable
        case 2: self = .executable
        case 3: self = .sharedObject
        case 4: self = .core
        default: self = .other(raw)
        }
    }
}

public struct ELFHeader: Equatable, Sendable {
    public var type: ELFFileType
    public var machine: UInt16
    public var entry: UInt64
    public var flags: UInt32
    /// ELFv2 (ppc64le) is `e_flags & 3 == 2`.
    public var abiVersion: UInt32 { flags & 3 }
}

public struct ELFSection: Equatable, Sendable {
    public static let typeProgBits: UInt32 = 1
    public static let typeSymTab: UInt32 = 2
    public static let typeStrTab: UInt32 = 3
    public static let typeRela: UInt32 = 4
    public static let typeNote: UInt32 = 7
    public static let typeNoBits: UInt32 = 8
    public static let typeRel: UInt32 = 9
    public static let typeDynSym: UInt32 = 11

    public static let flagWrite: UInt64 = 0x1
    public static let flagAlloc: UInt64 = 0x2
    public static let flagExecInstr: UInt64 = 0x4

    public var index: Int
    public var name: String
    public var type: UInt32
    public var flags: UInt64
    public var address: UInt64
    public var offset: UInt64
    public var size: UInt64
    public var link: UInt32
    public var info: UInt32
    public var alignment: UInt64
    public var entrySize: UInt64
    /// The section's bytes as stored in the file (empty for SHT_NOBITS).
    public var data: [UInt8]

    public var isAllocated: Bool { flags & Self.flagAlloc != 0 }
    public var isExecutable: Bool { flags & Self.flagExecInstr != 0 }
    public var isWritable: Bool { flags & Self.flagWrite != 0 }
    public func contains(address a: UInt64) -> Bool { isAllocated && a >= address && a < address + size }
}

public struct ELFSegment: Equatable, Sendable {
    public static let typeLoad: UInt32 = 1
    public static let flagExecute: UInt32 = 1
    public static let flagWrite: UInt32 = 2
    public static let flagRead: UInt32 = 4

    public var index: Int
    public var type: UInt32
    public var flags: UInt32
    public var offset: UInt64
    public var virtualAddress: UInt64
    public var fileSize: UInt64
    public var memorySize: UInt64
    public var alignment: UInt64
    /// The segment's p_filesz bytes from the file.
    public var data: [UInt8]

    public var isLoad: Bool { type == Self.typeLoad }
}

public struct ELFSymbol: Equatable, Sendable {
    public enum Kind: Equatable, Sendable { case none, object, function, section, file, tls, other(UInt8) }
    public enum Binding: Equatable, Sendable { case local, global, weak, other(UInt8) }

    public static let undefinedSection: UInt16 = 0
    public static let absoluteSection: UInt16 = 0xfff1
    public static let commonSection: UInt16 = 0xfff2

    /// Index in its symbol table.
    public var index: Int
    public var name: String
    public var value: UInt64
    public var size: UInt64
    public var kind: Kind
    public var binding: Binding
    public var other: UInt8
    public var sectionIndex: UInt16
    /// ppc64 ELFv2: how far the local entry point lies after the global one, decoded
    /// from the top three bits of st_other (0 when the function has a single entry, or
    /// on other machines). The local entry is where callers sharing the TOC enter.
    public var localEntryOffset: UInt64
    /// The file gave the function size 0 (a kernel image rebuilt from kallsyms, assembly
    /// without `.size`) and `size` is the distance to the next symbol of its section, as
    /// perf and gdb infer it.
    public var sizeIsInferred = false

    public var isDefined: Bool { sectionIndex != Self.undefinedSection }
    public var isFunction: Bool { kind == .function }
}

/// One relocation entry (REL entries have no explicit addend: `addend` is nil).
public struct ELFRelocation: Equatable, Sendable {
    public var offset: UInt64
    public var type: UInt32
    public var symbolIndex: UInt32
    public var addend: Int64?

    public init(offset: UInt64, type: UInt32, symbolIndex: UInt32, addend: Int64?) {
        self.offset = offset
        self.type = type
        self.symbolIndex = symbolIndex
        self.addend = addend
    }
}

public struct ELFRelocationSection: Equatable, Sendable {
    /// Index of the SHT_REL/SHT_RELA section itself.
    public var sectionIndex: Int
    public var name: String
    /// The section the relocations apply to (sh_info).
    public var targetSectionIndex: Int
    /// The symbol table they refer to (sh_link).
    public var symbolTableIndex: Int
    public var hasAddends: Bool
    public var entries: [ELFRelocation]
}

public struct ELFNote: Equatable, Sendable {
    public static let gnuBuildID: UInt32 = 3
    public var sectionName: String
    public var owner: String
    public var type: UInt32
    public var descriptor: [UInt8]
}
