import SpliceELF
import SplicePatching

/// `splice build`, in the spirit of kpatch's create-diff-object: compares an original
/// and a patched object (both compiled with -ffunction-sections -fdata-sections, so every
/// function and object has its own section), finds the changed functions, carries them
/// with the new functions and data they need, keeps every reference to unchanged code
/// and data as a relocation against the target's symbols, and writes a payload.
public struct PayloadBuilder {

    /// What the builder decided, for people and tests.
    public struct Report: Sendable {
        public var changed: [String] = []
        public var newFunctions: [String] = []
        /// Unchanged functions copied because a carried call could not reach them
        /// (ppc64le: a call with no TOC-restore slot).
        public var carriedCallees: [String] = []
        public var carriedData: [String] = []
        public var external: [String] = []
    }

    public let original: ELFFile
    public let patched: ELFFile
    public let target: ELFFile
    public let backend: any PatchBackend
    public var dependencies: [Payload] = []
    /// Functions to NOP out (new_addr 0) in addition to the changed ones.
    public var nopFunctions: [String] = []
    /// For each function, how many of the target's first bytes the payload expects.
    public var expectBytes = 0
    /// Expected first bytes given outright, by function (Xen's `expect` data), instead of
    /// read from the target.
    public var expectedBytes: [String: [UInt8]] = [:]
    /// Stretches of functions to turn into no-ops (NOP records with a size, Xen's xen_nop).
    public var nopRanges: [NopRange] = []
    /// Leave the target's build id out (a payload any loader must refuse; for tests).
    public var omitTargetBuildID = false

    public struct NopRange: Sendable, Equatable {
        public var function: String
        public var offset: UInt32
        public var length: UInt32
        public init(function: String, offset: UInt32, length: UInt32) {
            self.function = function
            self.offset = offset
            self.length = length
        }
    }

    public init(original: ELFFile, patched: ELFFile, target: ELFFile, backend: any PatchBackend) {
        self.original = original
        self.patched = patched
        self.target = target
        self.backend = backend
    }

    /// A function's own section and its relocations, normalised so two compilations can
    /// be compared: symbols by name, section symbols by section name.
    struct Signature: Equatable {
        var bytes: [UInt8]
        var relocations: [String]
    }

    static func functionSections(_ elf: ELFFile) -> [String: ELFSymbol] {
        var out: [String: ELFSymbol] = [:]
        for s in elf.symbols where s.kind == .function && s.isDefined && Int(s.sectionIndex) < elf.sections.count {
            out[s.name] = s
        }
        return out
    }

    static func symbolKey(_ elf: ELFFile, _ s: ELFSymbol) -> String {
        s.kind == .section ? "section:" + elf.sections[Int(s.sectionIndex)].name : s.name
    }

    /// A string literal is known by what it says, not by where the compiler put it in its
    /// merged-strings section (`return "";` and `return "Hello World";` may both point at
    /// offset 0 of `.rodata.str1.1`).
    func signature(_ elf: ELFFile, _ f: ELFSymbol) -> Signature {
        let section = elf.sections[Int(f.sectionIndex)]
        let relocs = elf.relocationSections.first { $0.targetSectionIndex == section.index }?.entries ?? []
        return Signature(bytes: section.data, relocations: relocs.map { r in
            let s = elf.symbols[Int(r.symbolIndex)]
            if s.kind == .section, Int(s.sectionIndex) < elf.sections.count, case let target = elf.sections[Int(s.sectionIndex)], target.flags & Self.flagStrings != 0 {
                let at = backend.relocationTargetOffset(type: r.type, addend: r.addend ?? 0, code: section.data, offset: Int(r.offset))
                if at >= 0, at < target.data.count {
                    let text = target.data[Int(at)...].prefix { $0 != 0 }
                    return "\(r.offset) \(r.type) string \(String(decoding: text, as: UTF8.self).debugDescription)"
                }
            }
            return "\(r.offset) \(r.type) \(Self.symbolKey(elf, s)) \(r.addend ?? 0)"
        })
    }
    static let flagStrings: UInt64 = 0x20 // SHF_STRINGS

    /// The payload's bytes, and what went into it.
    public func build() throws -> (bytes: [UInt8], report: Report) {
        guard original.header.machine == patched.header.machine, patched.header.machine == target.header.machine else {
            throw PayloadBuildError(description: "original, patched and target are not for the same machine")
        }
        guard let targetID = target.buildID else { throw PayloadBuildError(description: "\(target.name) has no build id") }
        let originalFunctions = Self.functionSections(original)
        let patchedFunctions = Self.functionSections(patched)
        var report = Report()

        // 1. Changed and new functions.
        for (name, f) in patchedFunctions.sorted(by: { $0.key < $1.key }) {
            if let o = originalFunctions[name] {
                if signature(original, o) != signature(patched, f) { report.changed.append(name) }
            } else {
                report.newFunctions.append(name)
            }
        }
        for name in report.changed where target.symbol(named: name) == nil {
            throw PayloadBuildError(description: "\(name) changed but the target \(target.name) has no such function")
        }

        // 2. Carry: the changed functions, then whatever they need, to a fixed point.
        var carriedSections: [Int] = [] // patched section indices, in order
        var carriedSet = Set<Int>()
        func carry(_ section: Int) {
            if carriedSet.insert(section).inserted { carriedSections.append(section) }
        }
        for name in report.changed { carry(Int(patchedFunctions[name]!.sectionIndex)) }
        for kind in PayloadFormat.HookKind.allCases {
            if let s = patched.section(named: PayloadFormat.hooksPrefix + kind.rawValue) { carry(s.index) }
        }
        if let s = patched.section(named: PayloadFormat.statesSection) { carry(s.index) }
        /// How a relocation of a carried section refers to its symbol in the payload.
        enum Target { case internalSection(Int, addend: Int64), external(String, addend: Int64), internalSymbol(ELFSymbol) }
        var decisions: [Int: [Int: Target]] = [:] // section -> relocation index -> target
        var internalAddend: [Int: [Int: Int64]] = [:]
        var i = 0
        while i < carriedSections.count {
            let section = carriedSections[i]
            i += 1
            let relocs = patched.relocationSections.first { $0.targetSectionIndex == section }?.entries ?? []
            let code = patched.sections[section].data
            for (ri, r) in relocs.enumerated() {
                var s = patched.symbols[Int(r.symbolIndex)]
                var addend = r.addend ?? 0
                // A section symbol of a function's section (calls to static functions):
                // the function itself, so its local entry is known.
                if s.kind == .section, patched.sections[Int(s.sectionIndex)].isExecutable,
                   let f = patched.symbols.first(where: { $0.kind == .function && $0.sectionIndex == s.sectionIndex
                       && Int64($0.value) <= addend && addend < Int64($0.value + max($0.size, 1)) }) {
                    addend -= Int64(f.value)
                    s = f
                }
                let decision: Target
                if !s.isDefined {
                    decision = .external(s.name, addend: addend) // .TOC., _mcount, __fentry__, other TUs
                } else if s.kind == .function {
                    let isNew = originalFunctions[s.name] == nil
                    let changed = report.changed.contains(s.name)
                    if isNew || changed {
                        carry(Int(s.sectionIndex))
                        decision = .internalSymbol(s)
                    } else if backend.callNeedsSameTOC(type: r.type, code: code, offset: Int(r.offset)) {
                        carry(Int(s.sectionIndex))
                        if !report.carriedCallees.contains(s.name) { report.carriedCallees.append(s.name) }
                        decision = .internalSymbol(s)
                    } else {
                        decision = .external(s.name, addend: addend)
                    }
                } else if s.kind == .section && patched.sections[Int(s.sectionIndex)].isExecutable {
                    carry(Int(s.sectionIndex)) // code with no function symbol: carry it whole
                    decision = .internalSection(Int(s.sectionIndex), addend: addend)
                } else {
                    // Data: a named object covering the referenced offset, if any.
                    let sectionIndex = Int(s.sectionIndex)
                    let offset = s.kind == .section ? addend : Int64(s.value) + addend
                    let owner = s.kind == .section
                        ? patched.symbols.first { $0.kind == .object && Int($0.sectionIndex) == sectionIndex
                            && Int64($0.value) <= offset && offset < Int64($0.value + max($0.size, 1)) }
                        : s
                    if let o = owner, original.symbol(named: o.name) != nil, target.symbol(named: o.name) != nil {
                        decision = .external(o.name, addend: offset - Int64(o.value)) // the running kernel's data
                    } else {
                        carry(sectionIndex)
                        let name = patched.sections[sectionIndex].name
                        if !report.carriedData.contains(name) { report.carriedData.append(name) }
                        decision = .internalSection(sectionIndex, addend: offset)
                    }
                }
                if case let .external(name, _) = decision, !report.external.contains(name) { report.external.append(name) }
                decisions[section, default: [:]][ri] = decision
                internalAddend[section, default: [:]][ri] = addend
            }
        }

        // 3. Write the payload.
        var w = ELFWriter(machine: patched.header.machine, flags: patched.header.flags)
        var outSection: [Int: Int] = [:]
        for s in carriedSections {
            let src = patched.sections[s]
            outSection[s] = w.add(.init(name: src.name, type: src.type, flags: src.flags, data: src.data,
                                        size: src.type == ELFSection.typeNoBits ? src.size : nil, alignment: src.alignment))
        }
        var sectionSymbol: [Int: Int] = [:]
        for s in carriedSections {
            sectionSymbol[s] = w.add(.init(name: "", type: ELFWriter.Symbol.sectionType, binding: ELFWriter.Symbol.local,
                                           section: outSection[s]))
        }
        var definedSymbol: [String: Int] = [:]
        for s in patched.symbols where s.isDefined && (s.kind == .function || s.kind == .object)
            && outSection[Int(s.sectionIndex)] != nil && definedSymbol[s.name] == nil {
            definedSymbol[s.name] = w.add(.init(name: s.name, value: s.value, size: s.size,
                                                type: s.kind == .function ? ELFWriter.Symbol.function : ELFWriter.Symbol.object,
                                                binding: ELFWriter.Symbol.global, other: s.other, section: outSection[Int(s.sectionIndex)]))
        }
        var externalSymbol: [String: Int] = [:]
        func external(_ name: String) -> Int {
            if let e = externalSymbol[name] { return e }
            let e = w.add(.init(name: name, type: ELFWriter.Symbol.noType, binding: ELFWriter.Symbol.global, section: nil))
            externalSymbol[name] = e
            return e
        }
        for s in carriedSections {
            let relocs = patched.relocationSections.first { $0.targetSectionIndex == s }?.entries ?? []
            for (ri, r) in relocs.enumerated() {
                let (symbol, addend): (Int, Int64)
                switch decisions[s]![ri]! {
                case let .internalSection(sec, a): (symbol, addend) = (sectionSymbol[sec]!, a)
                case let .external(name, a): (symbol, addend) = (external(name), a)
                case let .internalSymbol(sym): (symbol, addend) = (definedSymbol[sym.name]!, internalAddend[s]![ri]!)
                }
                w.relocate(section: outSection[s]!, .init(offset: r.offset, type: r.type, symbol: symbol, addend: addend))
            }
        }

        // Records: one per changed function that the target has, plus NOP patches.
        var metadata = PayloadMetadata(targetBuildID: targetID)
        metadata.dependencies = dependencies.map(\.buildID)
        metadata.omitTargetBuildID = omitTargetBuildID
        let entries = report.changed.map { ($0, true, nil as NopRange?) } + nopFunctions.map { ($0, false, nil) }
            + nopRanges.map { ($0.function, false, $0) }
        for (name, redirect, range) in entries {
            guard let old = target.symbol(named: name), old.isFunction else {
                throw PayloadBuildError(description: "the target \(target.name) has no function \(name)")
            }
            let new = redirect ? patchedFunctions[name] : nil
            let expected = try expectedBytes[name] ?? (expectBytes > 0 ? Array(try target.bytes(of: old).prefix(expectBytes)) : [])
            metadata.records.append(.init(name: name, newSymbol: new.map { definedSymbol[$0.name]! },
                                          newSize: range.map { UInt64($0.length) } ?? new?.size ?? 0, oldSize: old.size,
                                          expectedBytes: expected, nopOffset: range?.offset ?? 0))
        }
        return (try metadata.write(into: &w, absolute: backend.absoluteAddressRelocation), report)
    }

}

public struct PayloadBuildError: Error, CustomStringConvertible {
    public let description: String
}
