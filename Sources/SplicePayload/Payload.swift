import SpliceELF

/// A payload file, parsed and checked on its own (before anything about the target is
/// known): its records, notes and hooks.
public struct Payload: Sendable {
    public struct Function: Sendable, Equatable {
        public var record: Int
        public var name: String
        /// The payload's new function; nil means NOP out the old one (new_addr 0).
        public var newSymbol: ELFSymbol?
        public var newSize: UInt32
        /// Expected size of the old function (0: not checked).
        public var oldSize: UInt32
        /// The old function must start with these bytes (empty: not checked).
        public var expectedBytes: [UInt8]
    }

    public let name: String
    public let elf: ELFFile
    public let buildID: [UInt8]
    public let targetBuildID: [UInt8]
    /// Build ids of payloads this one needs loaded first.
    public let dependencies: [[UInt8]]
    public let functions: [Function]
    /// Hook functions by kind, in order.
    public let hooks: [PayloadFormat.HookKind: [ELFSymbol]]

    public var buildIDHex: String { hexString(buildID) }

    public init(bytes: [UInt8], name: String) throws {
        let elf: ELFFile
        do { elf = try ELFFile(bytes: bytes, name: name) } catch { throw PayloadError(name, .elf("\(error)")) }
        try self.init(elf: elf)
    }

    public init(contentsOf path: String) throws {
        let elf: ELFFile
        do { elf = try ELFFile(contentsOf: path) } catch { throw PayloadError(path, .elf("\(error)")) }
        try self.init(elf: elf)
    }

    public init(elf: ELFFile) throws {
        let name = elf.name
        func fail(_ r: PayloadError.Reason) -> PayloadError { PayloadError(name, r) }
        guard elf.header.type == .relocatable else { throw fail(.notRelocatable("\(elf.header.type)")) }
        self.name = name
        self.elf = elf

        func notes(_ section: String) -> [[UInt8]] {
            elf.notes.filter { $0.sectionName == section && $0.owner == "GNU" && $0.type == ELFNote.gnuBuildID }
                .map(\.descriptor)
        }
        guard let own = notes(PayloadFormat.buildIDSection).first else { throw fail(.missingSection(PayloadFormat.buildIDSection)) }
        guard let target = notes(PayloadFormat.dependsSection).first else { throw fail(.noTargetBuildID) }
        buildID = own
        targetBuildID = target
        dependencies = notes(PayloadFormat.payloadDependsSection)

        guard let funcs = elf.section(named: PayloadFormat.funcsSection) else { throw fail(.missingSection(PayloadFormat.funcsSection)) }
        guard funcs.size % UInt64(PayloadFormat.recordSize) == 0, UInt64(funcs.data.count) == funcs.size else {
            throw fail(.badRecordSize(size: funcs.size, recordSize: PayloadFormat.recordSize))
        }
        let strings = elf.section(named: PayloadFormat.stringsSection)
        let relocs = elf.relocationSections.first { $0.targetSectionIndex == funcs.index }?.entries ?? []
        func reloc(at offset: Int) -> ELFRelocation? { relocs.first { $0.offset == UInt64(offset) } }

        var functions: [Function] = []
        for r in 0..<(funcs.data.count / PayloadFormat.recordSize) {
            let base = r * PayloadFormat.recordSize
            let d = funcs.data
            func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(d[base + o + $1]) << (8 * UInt32($1)) } }
            func u64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(d[base + o + $1]) << (8 * UInt64($1)) } }
            let version = d[base + 32]
            guard version == PayloadFormat.recordVersion else { throw fail(.badRecordVersion(record: r, version: version)) }
            let expectLength = Int(d[base + 33])
            guard expectLength <= PayloadFormat.maxExpectedBytes else {
                throw fail(.badRecord(record: r, reason: "expect_len \(expectLength) exceeds \(PayloadFormat.maxExpectedBytes)"))
            }
            // The name: a relocated pointer into the strings section.
            guard let nameReloc = reloc(at: base), Int(nameReloc.symbolIndex) < elf.symbols.count else {
                throw fail(.badRecord(record: r, reason: "the name field has no relocation"))
            }
            let nameSymbol = elf.symbols[Int(nameReloc.symbolIndex)]
            guard let strings, Int(nameSymbol.sectionIndex) == strings.index else {
                throw fail(.badRecord(record: r, reason: "the name does not point into \(PayloadFormat.stringsSection)"))
            }
            let start = Int(Int64(bitPattern: nameSymbol.value) &+ (nameReloc.addend ?? 0))
            guard start >= 0, start < strings.data.count, let end = strings.data[start...].firstIndex(of: 0) else {
                throw fail(.badRecord(record: r, reason: "the name lies outside \(PayloadFormat.stringsSection)"))
            }
            let functionName = String(decoding: strings.data[start..<end], as: UTF8.self)
            // The new function: a relocated pointer to a function the payload defines.
            var newSymbol: ELFSymbol?
            if let newReloc = reloc(at: base + 8) {
                let s = elf.symbols[Int(newReloc.symbolIndex)]
                guard s.isDefined, s.kind == .function, (newReloc.addend ?? 0) == 0 else {
                    throw fail(.badRecord(record: r, reason: "new_addr must point at a function the payload defines (\(s.name))"))
                }
                newSymbol = s
            } else if u64(8) != 0 {
                throw fail(.badRecord(record: r, reason: "new_addr is nonzero but not relocated"))
            }
            functions.append(Function(record: r, name: functionName, newSymbol: newSymbol, newSize: u32(24),
                                      oldSize: u32(28), expectedBytes: Array(d[(base + 40)..<(base + 40 + expectLength)])))
        }
        var seen: [String: [Int]] = [:]
        for f in functions { seen[f.name, default: []].append(f.record) }
        if let (dup, records) = seen.first(where: { $0.value.count > 1 }) {
            throw fail(.duplicateFunction(name: dup, records: records))
        }
        self.functions = functions

        var hooks: [PayloadFormat.HookKind: [ELFSymbol]] = [:]
        for kind in PayloadFormat.HookKind.allCases {
            guard let section = elf.section(named: PayloadFormat.hooksPrefix + kind.rawValue) else { continue }
            guard section.size % 8 == 0 else {
                throw fail(.badRecord(record: -1, reason: "\(section.name) is not an array of 8-byte pointers"))
            }
            let rs = elf.relocationSections.first { $0.targetSectionIndex == section.index }?.entries ?? []
            hooks[kind] = try (0..<Int(section.size / 8)).map { i in
                guard let r = rs.first(where: { $0.offset == UInt64(8 * i) }) else {
                    throw fail(.badRecord(record: -1, reason: "\(section.name)[\(i)] has no relocation"))
                }
                let s = elf.symbols[Int(r.symbolIndex)]
                guard s.kind == .function, s.isDefined else {
                    throw fail(.badRecord(record: -1, reason: "\(section.name)[\(i)] does not point at a payload function"))
                }
                return s
            }
        }
        self.hooks = hooks
    }
}

public func hexString(_ bytes: [UInt8]) -> String {
    bytes.map { b in String(b >> 4, radix: 16) + String(b & 15, radix: 16) }.joined()
}
