import Foundation
import SpliceBytes
import SpliceELF
import SplicePatching

/// A payload file, parsed and checked on its own (before anything about the target is
/// known): its records, notes and hooks.
public struct Payload: Sendable {
    public struct Function: Sendable, Equatable {
        public var record: Int
        public var name: String
        /// The payload's new function; nil means NOP out the old one (new_addr 0).
        public var newSymbol: ELFSymbol?
        /// The new function's size; for a NOP patch, how many bytes become no-ops (0: the
        /// function returns at once).
        public var newSize: UInt32
        /// Expected size of the old function (0: not checked).
        public var oldSize: UInt32
        /// The old function must start with these bytes (empty: not checked).
        public var expectedBytes: [UInt8]
        /// NOP patch with a size: where the no-ops start, from the function's start.
        public var nopOffset: UInt32 = 0

        /// What the patcher is asked to do for this record.
        public func target(newAddress: UInt64?) -> RedirectTarget {
            if let newAddress { return .address(newAddress) }
            return newSize == 0 ? .returnImmediately : .nopOut(offset: UInt64(nopOffset), length: Int(newSize))
        }
    }

    /// A `.livepatch.states` record (Linux's klp_state).
    public struct State: Sendable, Equatable {
        public var id: UInt64
        public var version: UInt64
        /// Where the record starts in `.livepatch.states`.
        public var offset: Int
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
    public let states: [State]

    public var buildIDHex: String { buildID.hexDigits }

    public init(bytes: [UInt8], name: String) throws {
        let elf: ELFFile
        do { elf = try ELFFile(bytes: bytes, name: name) } catch { throw PayloadError(name, .elf("\(error)")) }
        try self.init(elf: elf, bytes: bytes)
    }

    public init(contentsOf path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PayloadError(path, .elf("cannot read the file"))
        }
        try self.init(bytes: [UInt8](data), name: path)
    }

    /// `elf` parsed from `bytes`: the build id is recomputed from the bytes first.
    init(elf: ELFFile, bytes: [UInt8]) throws {
        let name = elf.name
        func fail(_ r: PayloadError.Reason) -> PayloadError { PayloadError(name, r) }
        guard elf.header.type == .relocatable else { throw fail(.notRelocatable("\(elf.header.type)")) }
        guard let idRange = PayloadFormat.buildIDRange(in: elf) else {
            throw fail(.missingSection("\(PayloadFormat.buildIDSection) with a \(PayloadFormat.buildIDSize)-byte GNU build-id note"))
        }
        let computed = PayloadFormat.buildID(of: bytes, range: idRange)
        guard Array(bytes[idRange]) == computed else {
            throw fail(.buildIDNotContents(note: (Array(bytes[idRange])).hexDigits, contents: computed.hexDigits))
        }
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

        // No functions at all is a payload of hooks only (Xen's xen_action_hooks_nofunc);
        // whether it has hooks is checked below.
        let funcs = elf.section(named: PayloadFormat.funcsSection)
        if let funcs, funcs.size % UInt64(PayloadFormat.recordSize) != 0 || UInt64(funcs.data.count) != funcs.size {
            throw fail(.badRecordSize(size: funcs.size, recordSize: PayloadFormat.recordSize))
        }
        let strings = elf.section(named: PayloadFormat.stringsSection)
        let relocs = funcs.flatMap { f in elf.relocationSections.first { $0.targetSectionIndex == f.index }?.entries } ?? []
        func reloc(at offset: Int) -> ELFRelocation? { relocs.first { $0.offset == UInt64(offset) } }
        let records = funcs?.data ?? []

        var functions: [Function] = []
        for r in 0..<(records.count / PayloadFormat.recordSize) {
            let base = r * PayloadFormat.recordSize
            let d = records
            func u32(_ o: Int) -> UInt32 { d.littleEndian(UInt32.self, at: base + o) }
            func u64(_ o: Int) -> UInt64 { d.littleEndian(UInt64.self, at: base + o) }
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
            if newSymbol != nil && u32(36) != 0 {
                throw fail(.badRecord(record: r, reason: "nop_offset is set but new_addr is not 0"))
            }
            functions.append(Function(record: r, name: functionName, newSymbol: newSymbol, newSize: u32(24),
                                      oldSize: u32(28), expectedBytes: Array(d[(base + 40)..<(base + 40 + expectLength)]),
                                      nopOffset: u32(36)))
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
        for kind in [PayloadFormat.HookKind.apply, .revert] where (hooks[kind]?.count ?? 0) > 1 {
            throw fail(.badRecord(record: -1, reason: "\(PayloadFormat.hooksPrefix + kind.rawValue) has \(hooks[kind]!.count) hooks: an action has one"))
        }
        // One action hook alone would leave its action's undo to Splice's writes, which
        // never made the change (or the other way round).
        if (hooks[.apply] == nil) != (hooks[.revert] == nil) {
            let (has, lacks) = hooks[.apply] != nil ? ("apply", "revert") : ("revert", "apply")
            throw fail(.badRecord(record: -1, reason: "has a\(has == "apply" ? "n" : "") \(has) action hook but no \(lacks) action hook: "
                                  + "they come in pairs, each undoing the other"))
        }
        if elf.section(named: PayloadFormat.funcsSection) == nil && hooks.isEmpty {
            throw fail(.missingSection(PayloadFormat.funcsSection))
        }
        self.hooks = hooks

        var states: [State] = []
        if let section = elf.section(named: PayloadFormat.statesSection) {
            guard section.size % UInt64(PayloadFormat.stateSize) == 0, UInt64(section.data.count) == section.size,
                  section.isAllocated, section.isWritable else {
                throw fail(.badRecord(record: -1, reason: "\(section.name) must be writable, loaded and a multiple of \(PayloadFormat.stateSize) bytes"))
            }
            let d = section.data
            for o in stride(from: 0, to: d.count, by: PayloadFormat.stateSize) {
                let state = State(id: d.littleEndian(UInt64.self, at: o), version: d.littleEndian(UInt64.self, at: o + 8), offset: o)
                if states.contains(where: { $0.id == state.id }) {
                    throw fail(.badRecord(record: -1, reason: "\(section.name) has state id \(state.id) twice"))
                }
                states.append(state)
            }
        }
        self.states = states
    }
}
