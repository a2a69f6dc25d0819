import SpliceBytes
/// Why an ELF file was refused. Every case says what is wrong and where, so that a
/// porting engineer can find the offending byte without a debugger.
public enum ELFError: Error, Equatable, CustomStringConvertible {
    /// The file is shorter than the ELF header it claims to have.
    case truncatedHeader(fileSize: Int, needed: Int)
    /// The first bytes are not `\x7fELF`.
    case notELF
    /// Only 64-bit little-endian ELF is supported (both Splice ISAs are).
    case unsupportedClass(String)
    /// The file is for another machine than the caller asked for.
    case wrongMachine(expected: UInt16, found: UInt16)
    /// The section header table does not fit in the file.
    case sectionHeaderTableOutOfBounds(offset: UInt64, count: Int, entrySize: Int, fileSize: Int)
    /// The program header table does not fit in the file.
    case programHeaderTableOutOfBounds(offset: UInt64, count: Int, entrySize: Int, fileSize: Int)
    /// A section's contents lie (partly) outside the file.
    case sectionOutOfBounds(index: Int, name: String, offset: UInt64, size: UInt64, fileSize: Int)
    /// A segment's file contents lie (partly) outside the file, or memsz < filesz.
    case segmentOutOfBounds(index: Int, offset: UInt64, fileSize: UInt64, imageSize: Int)
    case segmentMemorySmallerThanFile(index: Int, fileSize: UInt64, memorySize: UInt64)
    /// A section's or segment's address range runs past the top of the 64-bit address space.
    case addressRangeWraps(what: String, address: UInt64, size: UInt64)
    /// `e_shstrndx` names no section, or not a string table.
    case badStringTableIndex(index: Int, sectionCount: Int)
    /// A name offset points outside its string table.
    case badNameOffset(table: String, offset: UInt32, tableSize: Int)
    /// A section's sh_link names no section or the wrong kind of section.
    case badLink(section: String, link: UInt32, reason: String)
    /// A symbol or relocation table entry is malformed.
    case badSymbol(table: String, index: Int, reason: String)
    case badRelocation(section: String, index: Int, reason: String)
    case badEntrySize(section: String, entrySize: UInt64, expected: Int)
    /// A note section's records run past its end.
    case badNote(section: String, reason: String)
    /// libelf itself refused; `message` is libelf's own text.
    case libelf(operation: String, message: String)
    /// The file could not be read at all.
    case io(path: String, message: String)

    public var description: String {
        switch self {
        case let .truncatedHeader(size, needed):
            return "truncated ELF header: file has \(size) bytes, the header needs \(needed)"
        case .notELF:
            return "not an ELF file (no \\x7fELF magic at offset 0)"
        case let .unsupportedClass(what):
            return "unsupported ELF: \(what) (Splice reads 64-bit little-endian ELF)"
        case let .wrongMachine(expected, found):
            return "wrong machine: expected e_machine \(expected) (\(ELFMachine.name(expected))), "
                + "found \(found) (\(ELFMachine.name(found)))"
        case let .sectionHeaderTableOutOfBounds(offset, count, entrySize, fileSize):
            return "bad section header offset: \(count) headers of \(entrySize) bytes at offset "
                + "\(hex(offset)) run past the end of the file (\(fileSize) bytes)"
        case let .programHeaderTableOutOfBounds(offset, count, entrySize, fileSize):
            return "bad program header offset: \(count) headers of \(entrySize) bytes at offset "
                + "\(hex(offset)) run past the end of the file (\(fileSize) bytes)"
        case let .sectionOutOfBounds(index, name, offset, size, fileSize):
            return "section [\(index)] \(name): contents at offset \(hex(offset)) size \(hex(size)) "
                + "run past the end of the file (\(fileSize) bytes)"
        case let .segmentOutOfBounds(index, offset, fileSize, imageSize):
            return "segment [\(index)]: file contents at offset \(hex(offset)) size \(hex(fileSize)) "
                + "run past the end of the file (\(imageSize) bytes)"
        case let .segmentMemorySmallerThanFile(index, fileSize, memorySize):
            return "segment [\(index)]: p_memsz \(hex(memorySize)) is smaller than p_filesz \(hex(fileSize))"
        case let .addressRangeWraps(what, address, size):
            return "\(what): address \(hex(address)) + size \(hex(size)) runs past the top of the 64-bit address space"
        case let .badStringTableIndex(index, count):
            return "bad string table index: e_shstrndx is \(index) but the file has \(count) sections"
        case let .badNameOffset(table, offset, size):
            return "bad name offset \(offset) into string table \(table) of \(size) bytes"
        case let .badLink(section, link, reason):
            return "section \(section): sh_link \(link) \(reason)"
        case let .badSymbol(table, index, reason):
            return "symbol \(index) of \(table): \(reason)"
        case let .badRelocation(section, index, reason):
            return "relocation \(index) of \(section): \(reason)"
        case let .badEntrySize(section, entrySize, expected):
            return "section \(section): sh_entsize \(entrySize), expected \(expected)"
        case let .badNote(section, reason):
            return "note section \(section): \(reason)"
        case let .libelf(operation, message):
            return "libelf \(operation) failed: \(message)"
        case let .io(path, message):
            return "cannot read \(path): \(message)"
        }
    }
}

