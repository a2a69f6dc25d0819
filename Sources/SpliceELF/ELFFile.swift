import CLibelf
import Foundation
import SpliceBytes

/// A 64-bit little-endian ELF file read with libelf: header, sections, segments, symbols,
/// relocations and notes, all copied into Swift values and checked for consistency when
/// the file is opened, so that a malformed file fails there with an `ELFError` naming
/// what is wrong and where, and every later access is a plain lookup.
public struct ELFFile: Sendable {
    public let name: String
    public let size: Int
    public let header: ELFHeader
    public let sections: [ELFSection]
    public let segments: [ELFSegment]
    /// The static symbol table (.symtab), or the dynamic one if there is no .symtab.
    public let symbols: [ELFSymbol]
    public let relocationSections: [ELFRelocationSection]
    public let notes: [ELFNote]

    /// The GNU build id (NT_GNU_BUILD_ID), if the file has one.
    public var buildID: [UInt8]? {
        notes.first { $0.owner == "GNU" && $0.type == ELFNote.gnuBuildID }?.descriptor
    }

    public var buildIDHex: String? {
        buildID.map { $0.hexDigits }
    }

    public func section(named name: String) -> ELFSection? { sections.first { $0.name == name } }

    /// The defined symbol with this name, preferring global over local bindings.
    public func symbol(named name: String) -> ELFSymbol? {
        symbolsByName[name].map { symbols[$0] }
    }

    /// Name → index of the symbol `symbol(named:)` returns (built once).
    private let symbolsByName: [String: Int]

    /// Defined function symbols with a size, sorted by address.
    public var functions: [ELFSymbol] {
        symbols.filter { $0.isFunction && $0.isDefined && $0.size > 0 }
            .sorted { ($0.value, $0.name) < ($1.value, $1.name) }
    }

    /// A symbol's bytes from the section that holds it (a function's code). Throws when
    /// the symbol does not lie inside a section with contents.
    public func bytes(of symbol: ELFSymbol) throws -> [UInt8] {
        let index = Int(symbol.sectionIndex)
        guard sections.indices.contains(index) else {
            throw ELFError.badSymbol(table: ".symtab", index: symbol.index, reason: "\(symbol.name) is in no section")
        }
        let section = sections[index]
        let symbolEnd = symbol.value.addingReportingOverflow(symbol.size)
        let sectionEnd = section.address.addingReportingOverflow(section.size)
        guard symbol.value >= section.address, !symbolEnd.overflow, !sectionEnd.overflow,
              symbolEnd.partialValue <= sectionEnd.partialValue, section.type != ELFSection.typeNoBits,
              Int(symbol.value - section.address) + Int(symbol.size) <= section.data.count else {
            throw ELFError.badSymbol(table: ".symtab", index: symbol.index,
                                     reason: "\(symbol.name) at \(hex(symbol.value)) size \(symbol.size) lies outside its section \(section.name)")
        }
        let start = Int(symbol.value - section.address)
        return Array(section.data[start..<start + Int(symbol.size)])
    }

    /// The bytes the file puts at guest address [address, address + count), if one
    /// allocated section with contents holds them all.
    public func bytes(at address: UInt64, count: Int) -> [UInt8]? {
        // Plain ranges, not section values: the patcher asks this for every write it checks.
        guard let (s, start) = content(at: address, count: count) else { return nil }
        return Array(s.data[start..<start + count])
    }

    /// Copies the contents at [address, address + count) into `bytes`, reusing its
    /// storage; false (and `bytes` untouched) when no section holds all of it.
    public func copyContents(at address: UInt64, count: Int, into bytes: inout [UInt8]) -> Bool {
        guard let (s, start) = content(at: address, count: count) else { return false }
        bytes.removeAll(keepingCapacity: true)
        bytes.append(contentsOf: s.data[start..<start + count])
        return true
    }

    private func content(at address: UInt64, count: Int) -> (ELFSection, Int)? {
        guard let span = contentSpans.first(where: { $0.start <= address && address < $0.end }),
              address + UInt64(count) <= span.end else { return nil }
        let s = sections[span.index]
        return (s, Int(address - s.address))
    }

    /// Allocated sections with contents: [start, end) in the address space, and the index.
    private let contentSpans: [(start: UInt64, end: UInt64, index: Int)]

    /// Reads the file at `path`.
    public init(contentsOf path: String, expectedMachine: UInt16? = nil) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ELFError.io(path: path, message: "no such file or not readable")
        }
        try self.init(bytes: [UInt8](data), name: path, expectedMachine: expectedMachine)
    }

    /// An image's functions of size 0 get the distance to the next symbol at a higher address
    /// in their section, or to the section's end (a relocatable object keeps its sizes: its
    /// functions start at offset 0 of sections of their own).
    static func inferringFunctionSizes(_ symbols: [ELFSymbol], sections: [ELFSection]) -> [ELFSymbol] {
        guard symbols.contains(where: { $0.isFunction && $0.size == 0 && $0.isDefined }) else { return symbols }
        var starts: [UInt16: [UInt64]] = [:]
        for s in symbols where s.isDefined && Int(s.sectionIndex) < sections.count && s.kind != .section && s.kind != .file {
            starts[s.sectionIndex, default: []].append(s.value)
        }
        for key in starts.keys { starts[key] = Array(Set(starts[key]!)).sorted() }
        var out = symbols
        for (i, s) in symbols.enumerated() where s.isFunction && s.size == 0 && s.isDefined && Int(s.sectionIndex) < sections.count {
            let section = sections[Int(s.sectionIndex)]
            let end = section.address &+ section.size
            guard let list = starts[s.sectionIndex], s.value >= section.address, s.value < end else { continue }
            // The first start above this one (binary search).
            var low = 0, high = list.count
            while low < high {
                let mid = (low + high) / 2
                if list[mid] <= s.value { low = mid + 1 } else { high = mid }
            }
            let next = low < list.count ? min(list[low], end) : end
            out[i].size = next - s.value
            out[i].sizeIsInferred = true
        }
        return out
    }

    /// Parses `bytes`. `name` is only used in messages.
    public init(bytes: [UInt8], name: String = "<memory>", expectedMachine: UInt16? = nil) throws {
        let raw = try RawHeader(bytes)
        if let expected = expectedMachine, raw.machine != expected {
            throw ELFError.wrongMachine(expected: expected, found: raw.machine)
        }
        let parsed = try LibelfReader.parse(bytes, name: name, raw: raw)
        self.name = name
        self.size = bytes.count
        self.header = parsed.header
        self.sections = parsed.sections
        self.segments = parsed.segments
        self.symbols = parsed.header.type == .relocatable ? parsed.symbols
            : Self.inferringFunctionSizes(parsed.symbols, sections: parsed.sections)
        var byName: [String: Int] = [:]
        for (i, s) in parsed.symbols.enumerated() where s.isDefined && !s.name.isEmpty {
            if let j = byName[s.name], parsed.symbols[j].binding != .local || s.binding == .local { continue }
            byName[s.name] = i
        }
        self.symbolsByName = byName
        self.contentSpans = parsed.sections.enumerated().compactMap { i, s in
            s.isAllocated && s.type != ELFSection.typeNoBits && !s.data.isEmpty
                ? (s.address, s.address + UInt64(min(UInt64(s.data.count), s.size)), i) : nil
        }
        self.relocationSections = parsed.relocations
        self.notes = parsed.notes
    }
}

/// The fixed part of the ELF64 header, read before libelf sees the file so that a file
/// whose tables point outside it is refused with the exact field at fault. libelf would
/// otherwise either refuse it with a generic message or read what it can.
struct RawHeader {
    static let size = 64
    let machine: UInt16
    let phoff: UInt64, phentsize: Int, phnum: Int
    let shoff: UInt64, shentsize: Int, shnum: Int

    init(_ b: [UInt8]) throws {
        if b.count >= 4, b[0..<4] != [0x7f, 0x45, 0x4c, 0x46] { throw ELFError.notELF }
        guard b.count >= Self.size else { throw ELFError.truncatedHeader(fileSize: b.count, needed: Self.size) }
        guard b[4] == 2 else { throw ELFError.unsupportedClass("EI_CLASS \(b[4]) is not ELFCLASS64") }
        guard b[5] == 1 else { throw ELFError.unsupportedClass("EI_DATA \(b[5]) is not little-endian") }
        func u16(_ o: Int) -> Int { Int(b[o]) | Int(b[o + 1]) << 8 }
        func u64(_ o: Int) -> UInt64 { b.littleEndian(UInt64.self, at: o) }
        machine = UInt16(u16(18))
        phoff = u64(32); shoff = u64(40)
        phentsize = u16(54); phnum = u16(56)
        shentsize = u16(58); shnum = u16(60)
        let fileSize = UInt64(b.count)
        if shnum > 0 || shoff != 0 {
            // shnum 0 with a nonzero offset is extended numbering: one header must exist.
            let count = max(shnum, 1)
            let end = shoff.addingReportingOverflow(UInt64(count * shentsize))
            if shentsize != 64 || end.overflow || end.partialValue > fileSize {
                throw ELFError.sectionHeaderTableOutOfBounds(
                    offset: shoff, count: count, entrySize: shentsize, fileSize: b.count)
            }
        }
        if phnum > 0 {
            let end = phoff.addingReportingOverflow(UInt64(phnum * phentsize))
            if phentsize != 56 || end.overflow || end.partialValue > fileSize {
                throw ELFError.programHeaderTableOutOfBounds(
                    offset: phoff, count: phnum, entrySize: phentsize, fileSize: b.count)
            }
        }
    }
}

/// Everything libelf is asked, in one place, on a private copy of the bytes that lives
/// exactly as long as the libelf handle.
enum LibelfReader {
    struct Parsed {
        var header: ELFHeader
        var sections: [ELFSection] = []
        var segments: [ELFSegment] = []
        var symbols: [ELFSymbol] = []
        var relocations: [ELFRelocationSection] = []
        var notes: [ELFNote] = []
    }

    static let versionInitialised: Bool = elf_version(UInt32(EV_CURRENT)) != UInt32(EV_NONE)

    static func lastError(_ operation: String) -> ELFError {
        let message = elf_errmsg(-1).map { String(cString: $0) } ?? "unknown error"
        return .libelf(operation: operation, message: message)
    }

    static func parse(_ bytes: [UInt8], name: String, raw: RawHeader) throws -> Parsed {
        guard versionInitialised else { throw lastError("elf_version") }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: bytes)
        let base = buffer.baseAddress!.assumingMemoryBound(to: CChar.self)
        guard let elf = elf_memory(base, bytes.count) else { throw lastError("elf_memory") }
        defer { elf_end(elf) }
        guard elf_kind(elf) == ELF_K_ELF else { throw ELFError.notELF }

        var ehdr = GElf_Ehdr()
        guard gelf_getehdr(elf, &ehdr) != nil else { throw lastError("gelf_getehdr") }
        var parsed = Parsed(header: ELFHeader(type: ELFFileType(ehdr.e_type), machine: ehdr.e_machine,
                                              entry: ehdr.e_entry, flags: ehdr.e_flags))
        parsed.sections = try readSections(elf, fileSize: bytes.count)
        parsed.segments = try readSegments(elf, bytes: bytes)
        let isPPC64 = ehdr.e_machine == ELFMachine.ppc64
        parsed.symbols = try readSymbols(elf, parsed.sections, isPPC64: isPPC64)
        parsed.relocations = try readRelocations(elf, parsed.sections)
        parsed.notes = try readNotes(elf, parsed.sections)
        return parsed
    }

    static func readSections(_ elf: OpaquePointer, fileSize: Int) throws -> [ELFSection] {
        var count = 0
        guard elf_getshdrnum(elf, &count) == 0 else { throw lastError("elf_getshdrnum") }
        if count == 0 { return [] }
        var stringIndex = 0
        guard elf_getshdrstrndx(elf, &stringIndex) == 0 else { throw lastError("elf_getshdrstrndx") }

        var headers: [GElf_Shdr] = []
        for i in 0..<count {
            var shdr = GElf_Shdr()
            guard let scn = elf_getscn(elf, i), gelf_getshdr(scn, &shdr) != nil else {
                throw lastError("gelf_getshdr(\(i))")
            }
            headers.append(shdr)
        }
        guard stringIndex > 0, stringIndex < count, headers[stringIndex].sh_type == ELFSection.typeStrTab else {
            throw ELFError.badStringTableIndex(index: stringIndex, sectionCount: count)
        }

        // Names first (the section name table is bounds-checked like any other), so that
        // every later error can say which section is at fault.
        func contents(_ i: Int, name: String) throws -> [UInt8] {
            let shdr = headers[i]
            guard shdr.sh_type != ELFSection.typeNoBits, shdr.sh_size > 0 else { return [] }
            let end = shdr.sh_offset.addingReportingOverflow(shdr.sh_size)
            if end.overflow || end.partialValue > UInt64(fileSize) {
                throw ELFError.sectionOutOfBounds(index: i, name: name, offset: shdr.sh_offset,
                                                  size: shdr.sh_size, fileSize: fileSize)
            }
            guard let scn = elf_getscn(elf, i), let d = elf_rawdata(scn, nil) else {
                throw lastError("elf_rawdata(section [\(i)] \(name))")
            }
            guard let p = d.pointee.d_buf else { return [] }
            return [UInt8](UnsafeRawBufferPointer(start: p, count: d.pointee.d_size))
        }
        let names = try contents(stringIndex, name: "(section name table)")
        var sections: [ELFSection] = []
        for (i, shdr) in headers.enumerated() {
            let name = try string(in: names, at: shdr.sh_name, table: ".shstrtab")
            if shdr.sh_addr.addingReportingOverflow(shdr.sh_size).overflow {
                throw ELFError.addressRangeWraps(what: "section [\(i)] \(name)", address: shdr.sh_addr, size: shdr.sh_size)
            }
            sections.append(ELFSection(
                index: i, name: name, type: shdr.sh_type, flags: shdr.sh_flags, address: shdr.sh_addr,
                offset: shdr.sh_offset, size: shdr.sh_size, link: shdr.sh_link, info: shdr.sh_info,
                alignment: shdr.sh_addralign, entrySize: shdr.sh_entsize, data: try contents(i, name: name)))
        }
        return sections
    }

    static func readSegments(_ elf: OpaquePointer, bytes: [UInt8]) throws -> [ELFSegment] {
        var count = 0
        guard elf_getphdrnum(elf, &count) == 0 else { throw lastError("elf_getphdrnum") }
        var segments: [ELFSegment] = []
        for i in 0..<count {
            var phdr = GElf_Phdr()
            guard gelf_getphdr(elf, Int32(i), &phdr) != nil else { throw lastError("gelf_getphdr(\(i))") }
            let end = phdr.p_offset.addingReportingOverflow(phdr.p_filesz)
            if end.overflow || end.partialValue > UInt64(bytes.count) {
                throw ELFError.segmentOutOfBounds(index: i, offset: phdr.p_offset, fileSize: phdr.p_filesz,
                                                  imageSize: bytes.count)
            }
            if phdr.p_vaddr.addingReportingOverflow(phdr.p_memsz).overflow {
                throw ELFError.addressRangeWraps(what: "segment [\(i)]", address: phdr.p_vaddr, size: phdr.p_memsz)
            }
            if phdr.p_type == ELFSegment.typeLoad && phdr.p_memsz < phdr.p_filesz {
                throw ELFError.segmentMemorySmallerThanFile(index: i, fileSize: phdr.p_filesz, memorySize: phdr.p_memsz)
            }
            let data = phdr.p_type == ELFSegment.typeLoad
                ? Array(bytes[Int(phdr.p_offset)..<Int(end.partialValue)]) : []
            segments.append(ELFSegment(
                index: i, type: phdr.p_type, flags: phdr.p_flags, offset: phdr.p_offset,
                virtualAddress: phdr.p_vaddr, fileSize: phdr.p_filesz, memorySize: phdr.p_memsz,
                alignment: phdr.p_align, data: data))
        }
        return segments
    }

    static func string(in table: [UInt8], at offset: UInt32, table name: String) throws -> String {
        let start = Int(offset)
        guard start < table.count else {
            throw ELFError.badNameOffset(table: name, offset: offset, tableSize: table.count)
        }
        guard let end = table[start...].firstIndex(of: 0) else {
            throw ELFError.badNameOffset(table: name, offset: offset, tableSize: table.count)
        }
        return String(decoding: table[start..<end], as: UTF8.self)
    }

    /// Decodes the ppc64 ELFv2 local-entry field of st_other (bits 5..7).
    static func ppc64LocalEntryOffset(_ other: UInt8) -> UInt64 {
        let field = (other >> 5) & 7
        return field < 2 ? 0 : UInt64(1) << UInt64(field)
    }

    /// The symbol table used for names: .symtab, else .dynsym.
    static func symbolTable(_ sections: [ELFSection]) -> ELFSection? {
        sections.first { $0.type == ELFSection.typeSymTab } ?? sections.first { $0.type == ELFSection.typeDynSym }
    }

    static func linkedStringTable(of section: ELFSection, in sections: [ELFSection]) throws -> [UInt8] {
        let link = Int(section.link)
        guard link > 0, link < sections.count else {
            throw ELFError.badLink(section: section.name, link: section.link, reason: "names no section")
        }
        guard sections[link].type == ELFSection.typeStrTab else {
            throw ELFError.badLink(section: section.name, link: section.link, reason: "is not a string table")
        }
        return sections[link].data
    }

    static func typedData(_ elf: OpaquePointer, _ section: ELFSection) throws -> UnsafeMutablePointer<Elf_Data>? {
        guard let scn = elf_getscn(elf, section.index) else { throw lastError("elf_getscn(\(section.index))") }
        if section.size == 0 { return nil }
        guard let data = elf_getdata(scn, nil) else { throw lastError("elf_getdata(\(section.name))") }
        return data
    }

    static func readSymbols(_ elf: OpaquePointer, _ sections: [ELFSection], isPPC64: Bool) throws -> [ELFSymbol] {
        guard let table = symbolTable(sections) else { return [] }
        let entrySize = 24
        if table.entrySize != UInt64(entrySize) {
            throw ELFError.badEntrySize(section: table.name, entrySize: table.entrySize, expected: entrySize)
        }
        let names = try linkedStringTable(of: table, in: sections)
        guard let data = try typedData(elf, table) else { return [] }
        let count = Int(table.size) / entrySize
        var symbols: [ELFSymbol] = []
        symbols.reserveCapacity(count)
        for i in 0..<count {
            var sym = GElf_Sym()
            guard gelf_getsym(data, Int32(i), &sym) != nil else { throw lastError("gelf_getsym(\(table.name), \(i))") }
            let name: String
            do { name = try string(in: names, at: sym.st_name, table: "string table of \(table.name)") } catch {
                throw ELFError.badSymbol(table: table.name, index: i, reason: "\(error)")
            }
            let shndx = sym.st_shndx
            if shndx != ELFSymbol.undefinedSection && shndx < 0xff00 && Int(shndx) >= sections.count {
                throw ELFError.badSymbol(table: table.name, index: i,
                                         reason: "\(name): section index \(shndx) beyond \(sections.count) sections")
            }
            let info = sym.st_info
            let kind: ELFSymbol.Kind
            switch info & 0xf {
            case 0: kind = .none
            case 1: kind = .object
            case 2: kind = .function
            case 3: kind = .section
            case 4: kind = .file
            case 6: kind = .tls
            default: kind = .other(info & 0xf)
            }
            let binding: ELFSymbol.Binding
            switch info >> 4 {
            case 0: binding = .local
            case 1: binding = .global
            case 2: binding = .weak
            default: binding = .other(info >> 4)
            }
            symbols.append(ELFSymbol(
                index: i, name: name, value: sym.st_value, size: sym.st_size, kind: kind, binding: binding,
                other: sym.st_other, sectionIndex: shndx,
                localEntryOffset: isPPC64 && kind == .function ? ppc64LocalEntryOffset(sym.st_other) : 0))
        }
        return symbols
    }

    static func readRelocations(_ elf: OpaquePointer, _ sections: [ELFSection]) throws -> [ELFRelocationSection] {
        var result: [ELFRelocationSection] = []
        for section in sections where section.type == ELFSection.typeRel || section.type == ELFSection.typeRela {
            let rela = section.type == ELFSection.typeRela
            let entrySize = rela ? 24 : 16
            if section.entrySize != UInt64(entrySize) {
                throw ELFError.badEntrySize(section: section.name, entrySize: section.entrySize, expected: entrySize)
            }
            let link = Int(section.link)
            guard link > 0, link < sections.count,
                  sections[link].type == ELFSection.typeSymTab || sections[link].type == ELFSection.typeDynSym else {
                throw ELFError.badLink(section: section.name, link: section.link, reason: "is not a symbol table")
            }
            let symbolCount = Int(sections[link].size) / 24
            let target = Int(section.info)
            // sh_info 0 is allowed (dynamic relocations apply to the whole image).
            guard target < sections.count else {
                throw ELFError.badLink(section: section.name, link: section.info,
                                       reason: "(sh_info) names no section to relocate")
            }
            var entries: [ELFRelocation] = []
            if let data = try typedData(elf, section) {
                for i in 0..<(Int(section.size) / entrySize) {
                    let entry: ELFRelocation
                    if rela {
                        var r = GElf_Rela()
                        guard gelf_getrela(data, Int32(i), &r) != nil else { throw lastError("gelf_getrela(\(section.name), \(i))") }
                        entry = ELFRelocation(offset: r.r_offset, type: UInt32(truncatingIfNeeded: r.r_info),
                                              symbolIndex: UInt32(r.r_info >> 32), addend: r.r_addend)
                    } else {
                        var r = GElf_Rel()
                        guard gelf_getrel(data, Int32(i), &r) != nil else { throw lastError("gelf_getrel(\(section.name), \(i))") }
                        entry = ELFRelocation(offset: r.r_offset, type: UInt32(truncatingIfNeeded: r.r_info),
                                              symbolIndex: UInt32(r.r_info >> 32), addend: nil)
                    }
                    if Int(entry.symbolIndex) >= symbolCount {
                        throw ELFError.badRelocation(section: section.name, index: i,
                                                     reason: "symbol index \(entry.symbolIndex) beyond \(symbolCount) symbols")
                    }
                    entries.append(entry)
                }
            }
            result.append(ELFRelocationSection(sectionIndex: section.index, name: section.name,
                                               targetSectionIndex: target, symbolTableIndex: link,
                                               hasAddends: rela, entries: entries))
        }
        return result
    }

    static func readNotes(_ elf: OpaquePointer, _ sections: [ELFSection]) throws -> [ELFNote] {
        var notes: [ELFNote] = []
        for section in sections where section.type == ELFSection.typeNote {
            guard let data = try typedData(elf, section), let buf = data.pointee.d_buf else { continue }
            let bytes = UnsafeRawBufferPointer(start: buf, count: data.pointee.d_size)
            var offset = 0
            while offset < bytes.count {
                var note = GElf_Nhdr()
                var nameOffset = 0, descOffset = 0
                let next = gelf_getnote(data, offset, &note, &nameOffset, &descOffset)
                guard next > offset else {
                    throw ELFError.badNote(section: section.name,
                                           reason: "the note at offset \(offset) runs past the section's \(bytes.count) bytes")
                }
                var owner = Array(bytes[nameOffset..<nameOffset + Int(note.n_namesz)])
                if owner.last == 0 { owner.removeLast() }
                notes.append(ELFNote(sectionName: section.name, owner: String(decoding: owner, as: UTF8.self),
                                     type: note.n_type,
                                     descriptor: Array(bytes[descOffset..<descOffset + Int(note.n_descsz)])))
                offset = next
            }
        }
        return notes
    }
}

extension ELFFile {
    /// Function addresses to names, for labelling branch targets; a ppc64le local entry
    /// (what local calls branch to) is named `f+8`.
    public var functionNames: [UInt64: String] {
        var names: [UInt64: String] = [:]
        for s in symbols where s.isFunction && s.isDefined {
            if names[s.value] == nil { names[s.value] = s.name }
            if s.localEntryOffset > 0 { names[s.value + s.localEntryOffset] = "\(s.name)+\(s.localEntryOffset)" }
        }
        return names
    }
}

extension ELFFile {
    /// A kernel's own table of its tracing sites, as Linux's ftrace reads it: the 8-byte
    /// addresses from `__start_mcount_loc` to `__stop_mcount_loc`, or else the contents of a
    /// `__patchable_function_entries` section. Zero entries (functions the linker dropped)
    /// are counted and left out. nil when the image has neither.
    public var tracingSiteTable: TracingSiteTable? {
        var raw: [UInt8]?
        var source = ""
        if let start = symbol(named: "__start_mcount_loc"), let stop = symbol(named: "__stop_mcount_loc"),
           stop.value >= start.value, let bytes = bytes(at: start.value, count: Int(stop.value - start.value)) {
            raw = bytes
            source = "__start_mcount_loc..__stop_mcount_loc"
        } else if let s = sections.first(where: { $0.name == "__patchable_function_entries" }), !s.data.isEmpty {
            raw = s.data
            source = "__patchable_function_entries"
        }
        guard let raw else { return nil }
        let words = (0..<raw.count / 8).map { raw.littleEndian(UInt64.self, at: 8 * $0) }
        return TracingSiteTable(source: source, addresses: words.filter { $0 != 0 }, zeroEntries: words.filter { $0 == 0 }.count)
    }
}

/// See `ELFFile.tracingSiteTable`.
public struct TracingSiteTable: Equatable, Sendable {
    /// Where the table came from (the symbols or the section).
    public var source: String
    /// The site addresses, in table order.
    public var addresses: [UInt64]
    /// Entries that are 0: left by the linker for functions it removed.
    public var zeroEntries: Int
}
