import SpliceBytes
import CLibelf
import Foundation

/// Writes a 64-bit little-endian relocatable ELF (ET_REL) with libelf: sections, one
/// symbol table, RELA sections and notes. libelf lays the file out (offsets, alignment,
/// section headers); symbols and relocations go through gelf_update_sym/_rela.
public struct ELFWriter {
    public struct Section {
        public var name: String
        public var type: UInt32
        public var flags: UInt64
        public var data: [UInt8]
        /// For SHT_NOBITS: the size to reserve.
        public var size: UInt64?
        public var alignment: UInt64

        public init(name: String, type: UInt32 = ELFSection.typeProgBits, flags: UInt64 = 0, data: [UInt8] = [],
                    size: UInt64? = nil, alignment: UInt64 = 1) {
            self.name = name
            self.type = type
            self.flags = flags
            self.data = data
            self.size = size
            self.alignment = alignment
        }
    }

    public struct Symbol {
        public var name: String
        public var value: UInt64
        public var size: UInt64
        /// STT_* | STB_* << 4.
        public var info: UInt8
        public var other: UInt8
        /// Index into `sections` (0-based, as added), or nil for an undefined symbol.
        public var section: Int?

        public static let local: UInt8 = 0, global: UInt8 = 1
        public static let noType: UInt8 = 0, object: UInt8 = 1, function: UInt8 = 2, sectionType: UInt8 = 3

        public init(name: String, value: UInt64 = 0, size: UInt64 = 0, type: UInt8, binding: UInt8, other: UInt8 = 0,
                    section: Int?) {
            self.name = name
            self.value = value
            self.size = size
            self.info = binding << 4 | type
            self.other = other
            self.section = section
        }
        public var isLocal: Bool { info >> 4 == Self.local }
    }

    public struct Relocation {
        public var offset: UInt64
        public var type: UInt32
        /// Index into `symbols` (0-based, as added; the null symbol is added for you).
        public var symbol: Int
        public var addend: Int64
        public init(offset: UInt64, type: UInt32, symbol: Int, addend: Int64) {
            self.offset = offset
            self.type = type
            self.symbol = symbol
            self.addend = addend
        }
    }

    public var machine: UInt16
    public var flags: UInt32 = 0
    public private(set) var sections: [Section] = []
    public private(set) var symbols: [Symbol] = []
    /// Relocations by the index of the section they apply to.
    public private(set) var relocations: [Int: [Relocation]] = [:]

    public init(machine: UInt16, flags: UInt32 = 0) {
        self.machine = machine
        self.flags = flags
    }

    @discardableResult
    public mutating func add(_ section: Section) -> Int {
        sections.append(section)
        return sections.count - 1
    }

    @discardableResult
    public mutating func add(_ symbol: Symbol) -> Int {
        symbols.append(symbol)
        return symbols.count - 1
    }

    public mutating func relocate(section: Int, _ relocation: Relocation) {
        relocations[section, default: []].append(relocation)
    }

    public mutating func setData(of section: Int, _ data: [UInt8]) { sections[section].data = data }

    /// A note section body: one note (namesz, descsz, type, "name\0" padded, desc padded).
    public static func note(owner: String, type: UInt32, descriptor: [UInt8]) -> [UInt8] {
        func pad(_ b: [UInt8]) -> [UInt8] { b + [UInt8](repeating: 0, count: (4 - b.count % 4) % 4) }
        let name = Array(owner.utf8) + [0]
        return UInt32(name.count).littleEndianBytes + UInt32(descriptor.count).littleEndianBytes + type.littleEndianBytes
            + pad(name) + pad(descriptor)
    }

    /// The file's bytes.
    public func write() throws -> [UInt8] {
        guard LibelfReader.versionInitialised else { throw LibelfReader.lastError("elf_version") }
        let path = NSTemporaryDirectory() + "splice-elf-\(UUID().uuidString).o"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw ELFError.io(path: path, message: String(cString: strerror(errno))) }
        defer { close(fd); unlink(path) }
        guard let elf = elf_begin(fd, ELF_C_WRITE, nil) else { throw LibelfReader.lastError("elf_begin(write)") }
        var buffers: [UnsafeMutableRawPointer] = []
        defer {
            elf_end(elf)
            buffers.forEach { free($0) }
        }
        func buffer(_ bytes: [UInt8]) -> UnsafeMutableRawPointer {
            let p = malloc(max(bytes.count, 1))!
            bytes.withUnsafeBytes { if let b = $0.baseAddress { p.copyMemory(from: b, byteCount: bytes.count) } }
            buffers.append(p)
            return p
        }

        guard gelf_newehdr(elf, Int32(ELFCLASS64)) != nil else { throw LibelfReader.lastError("gelf_newehdr") }
        var ehdr = GElf_Ehdr()
        guard gelf_getehdr(elf, &ehdr) != nil else { throw LibelfReader.lastError("gelf_getehdr") }
        ehdr.e_ident.5 = UInt8(ELFDATA2LSB)
        ehdr.e_ident.6 = UInt8(EV_CURRENT)
        ehdr.e_type = UInt16(ET_REL)
        ehdr.e_machine = machine
        ehdr.e_version = UInt32(EV_CURRENT)
        ehdr.e_flags = flags

        // String tables are built here; names are offsets into them.
        var shstrtab: [UInt8] = [0]
        func shname(_ n: String) -> UInt32 {
            let o = UInt32(shstrtab.count)
            shstrtab += Array(n.utf8) + [0]
            return o
        }
        var strtab: [UInt8] = [0]
        func symname(_ n: String) -> UInt32 {
            if n.isEmpty { return 0 }
            let o = UInt32(strtab.count)
            strtab += Array(n.utf8) + [0]
            return o
        }

        func newSection(_ name: String, type: UInt32, flags: UInt64, bytes: [UInt8], dataType: Elf_Type, alignment: UInt64,
                        entrySize: UInt64 = 0, nobitsSize: UInt64? = nil) throws -> (Int, OpaquePointer) {
            guard let scn = elf_newscn(elf), let d = elf_newdata(scn) else { throw LibelfReader.lastError("elf_newscn") }
            d.pointee.d_type = dataType
            d.pointee.d_align = Int(max(alignment, 1))
            d.pointee.d_version = UInt32(EV_CURRENT)
            if let n = nobitsSize {
                d.pointee.d_buf = nil
                d.pointee.d_size = Int(n)
            } else {
                d.pointee.d_buf = buffer(bytes)
                d.pointee.d_size = bytes.count
            }
            var shdr = GElf_Shdr()
            guard gelf_getshdr(scn, &shdr) != nil else { throw LibelfReader.lastError("gelf_getshdr") }
            shdr.sh_name = shname(name)
            shdr.sh_type = type
            shdr.sh_flags = flags
            shdr.sh_addralign = max(alignment, 1)
            shdr.sh_entsize = entrySize
            guard gelf_update_shdr(scn, &shdr) != 0 else { throw LibelfReader.lastError("gelf_update_shdr") }
            return (elf_ndxscn(scn), scn)
        }

        // User sections (ELF index = position + 1).
        for s in sections {
            _ = try newSection(s.name, type: s.type, flags: s.flags, bytes: s.data, dataType: ELF_T_BYTE,
                               alignment: s.alignment, nobitsSize: s.type == ELFSection.typeNoBits ? (s.size ?? 0) : nil)
        }
        // Symbols: locals first (ELF requires it); sh_info = first global.
        let order = symbols.indices.filter { symbols[$0].isLocal } + symbols.indices.filter { !symbols[$0].isLocal }
        var newIndex: [Int: Int] = [:]
        for (i, old) in order.enumerated() { newIndex[old] = i + 1 }
        let symtabBytes = [UInt8](repeating: 0, count: 24 * (symbols.count + 1))
        let (symtabIndex, symtabScn) = try newSection(".symtab", type: ELFSection.typeSymTab, flags: 0, bytes: symtabBytes,
                                                       dataType: ELF_T_SYM, alignment: 8, entrySize: 24)
        guard let symData = elf_getdata(symtabScn, nil) else { throw LibelfReader.lastError("elf_getdata(.symtab)") }
        for (i, old) in order.enumerated() {
            let s = symbols[old]
            var sym = GElf_Sym(st_name: symname(s.name), st_info: s.info, st_other: s.other,
                               st_shndx: UInt16(s.section.map { $0 + 1 } ?? 0), st_value: s.value, st_size: s.size)
            guard gelf_update_sym(symData, Int32(i + 1), &sym) != 0 else { throw LibelfReader.lastError("gelf_update_sym") }
        }
        let (strtabIndex, _) = try newSection(".strtab", type: ELFSection.typeStrTab, flags: 0, bytes: strtab,
                                              dataType: ELF_T_BYTE, alignment: 1)
        var symtabShdr = GElf_Shdr()
        gelf_getshdr(symtabScn, &symtabShdr)
        symtabShdr.sh_link = UInt32(strtabIndex)
        symtabShdr.sh_info = UInt32(symbols.filter(\.isLocal).count + 1)
        gelf_update_shdr(symtabScn, &symtabShdr)

        for (target, relocs) in relocations.sorted(by: { $0.key < $1.key }) {
            let name = ".rela" + sections[target].name
            let (_, scn) = try newSection(name, type: ELFSection.typeRela, flags: 0x40 /* SHF_INFO_LINK */,
                                          bytes: [UInt8](repeating: 0, count: 24 * relocs.count), dataType: ELF_T_RELA,
                                          alignment: 8, entrySize: 24)
            guard let d = elf_getdata(scn, nil) else { throw LibelfReader.lastError("elf_getdata(\(name))") }
            for (i, r) in relocs.enumerated() {
                var rela = GElf_Rela(r_offset: r.offset, r_info: UInt64(newIndex[r.symbol] ?? 0) << 32 | UInt64(r.type),
                                     r_addend: r.addend)
                guard gelf_update_rela(d, Int32(i), &rela) != 0 else { throw LibelfReader.lastError("gelf_update_rela") }
            }
            var shdr = GElf_Shdr()
            gelf_getshdr(scn, &shdr)
            shdr.sh_link = UInt32(symtabIndex)
            shdr.sh_info = UInt32(target + 1)
            gelf_update_shdr(scn, &shdr)
        }
        let shstrName = shname(".shstrtab")
        let (shstrIndex, shstrScn) = try newSection(".shstrtab", type: ELFSection.typeStrTab, flags: 0, bytes: [],
                                                    dataType: ELF_T_BYTE, alignment: 1)
        // Now that every name is in it, give .shstrtab its bytes.
        if let d = elf_getdata(shstrScn, nil) {
            d.pointee.d_buf = buffer(shstrtab)
            d.pointee.d_size = shstrtab.count
        }
        var sh = GElf_Shdr()
        gelf_getshdr(shstrScn, &sh)
        sh.sh_name = shstrName
        gelf_update_shdr(shstrScn, &sh)
        ehdr.e_shstrndx = UInt16(shstrIndex)
        guard gelf_update_ehdr(elf, &ehdr) != 0 else { throw LibelfReader.lastError("gelf_update_ehdr") }
        guard elf_update(elf, ELF_C_WRITE) >= 0 else { throw LibelfReader.lastError("elf_update") }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ELFError.io(path: path, message: "written file vanished")
        }
        return [UInt8](data)
    }
}
