import SpliceBytes
import SpliceELF
import SpliceMachine
import SplicePatching

// Loading a payload, in its stages: validate it against the target, place its sections,
// relocate them in host buffers, resolve what each record redirects, and commit (map and
// copy, then the load hooks). Nothing touches the machine before the commit; a failure
// there or in a load hook unmaps what was mapped.

extension PayloadLoader {
    @discardableResult
    public func load(_ payload: Payload) throws -> LoadedPayload {
        let (dependencies, olds) = try validate(payload)
        let placement = try place(payload)
        let (contents, stubs) = try relocate(payload, placement, dependencies: dependencies)
        let resolved = try resolve(payload, olds, placement)
        return try commit(payload, placement, contents: contents, stubs: stubs, functions: resolved)
    }

    /// Where the sections of one payload go: text, read-only and writable groups, each in
    /// its own region, with the call stubs after the text.
    struct Placement {
        /// The sections that occupy memory.
        var allocated: [ELFSection]
        /// Guest address of each allocated section, by section index.
        var addresses: [Int: UInt64]
        /// Base and (page-rounded) size of each group: text, read-only, writable.
        var groupBase: [UInt64]
        var rounded: [UInt64]
        /// Where the call stubs start, and the external symbols that need one.
        var stubBase: UInt64
        var stubSymbols: [String]
        var toc: UInt64?
    }

    /// The payload is for this target, not loaded yet, its dependencies are, and every
    /// function it patches exists, may be patched and (where it says) holds the bytes it
    /// expects. Returns the dependencies and each record's old function.
    func validate(_ payload: Payload) throws -> (dependencies: [LoadedPayload], olds: [ELFSymbol]) {
        func fail(_ r: PayloadError.Reason) -> PayloadError { PayloadError(payload.name, r) }
        let elf = payload.elf
        guard elf.header.machine == image.elf.header.machine else {
            throw fail(.wrongMachine(payload: elf.header.machine, target: image.elf.header.machine))
        }
        guard let targetID = image.elf.buildID, targetID == payload.targetBuildID else {
            throw fail(.buildIDMismatch(expected: payload.targetBuildID.hexDigits, target: image.elf.buildIDHex ?? "none"))
        }
        if payloads.contains(where: { $0.payload.buildID == payload.buildID }) {
            throw fail(.alreadyLoaded(buildID: payload.buildIDHex))
        }
        let dependencies = try payload.dependencies.map { id -> LoadedPayload in
            guard let d = payloads.first(where: { $0.payload.buildID == id }) else { throw fail(.missingDependency(buildID: id.hexDigits)) }
            return d
        }
        let runtimeNames = Set(patcher.runtime?.symbols.values.map { $0 } ?? [])
        var olds: [ELFSymbol] = []
        for f in payload.functions {
            if f.name == Self.entryPoint || backend.runtimeSymbols.contains(f.name) || runtimeNames.contains(f.name) {
                throw fail(.deniedFunction(name: f.name, why: "it is part of the patching runtime"))
            }
            if denyList.contains(f.name) { throw fail(.deniedFunction(name: f.name, why: "it is on the deny-list")) }
            guard let old = image.elf.symbol(named: f.name), old.isFunction else {
                throw fail(.unknownFunction(record: f.record, name: f.name))
            }
            if f.oldSize != 0 && UInt64(f.oldSize) != old.size {
                throw fail(.oldSizeMismatch(function: f.name, expected: UInt64(f.oldSize), actual: old.size))
            }
            if !f.expectedBytes.isEmpty {
                let found = try machine.memory.read(old.value, count: f.expectedBytes.count)
                if try !matchesExpected(found, f.expectedBytes, of: old) {
                    throw fail(.expectedBytesMismatch(function: f.name, expected: f.expectedBytes, found: found))
                }
            }
            olds.append(old)
        }
        return (dependencies, olds)
    }

    /// Bounds every size, alignment and symbol offset from the file before any arithmetic
    /// on them, then finds free guest memory near the target's text for all groups.
    func place(_ payload: Payload) throws -> Placement {
        func fail(_ r: PayloadError.Reason) -> PayloadError { PayloadError(payload.name, r) }
        let elf = payload.elf
        let allocated = elf.sections.filter { $0.isAllocated && $0.size > 0 && $0.name != PayloadFormat.buildIDSection }
        // Call stubs (ISAs with a TOC): one per external symbol a call needs one for.
        var stubSymbols: [String] = []
        for rs in elf.relocationSections where allocated.contains(where: { $0.index == rs.targetSectionIndex }) {
            for r in rs.entries {
                let s = elf.symbols[Int(r.symbolIndex)]
                if !s.isDefined && s.name != backend.tocSymbol && !stubSymbols.contains(s.name)
                    && backend.callStub(type: r.type, symbol: s.name, to: 0, at: 0) != nil {
                    stubSymbols.append(s.name)
                }
            }
        }
        // After these checks, placed address + offset cannot overflow.
        for s in allocated where s.size > Self.maximumPlacedBytes || s.alignment > Self.maximumAlignment {
            throw fail(.sectionTooLarge(section: s.name, size: s.size, alignment: s.alignment,
                                        limit: Self.maximumPlacedBytes, alignmentLimit: Self.maximumAlignment))
        }
        for sym in elf.symbols where sym.isDefined {
            guard let section = allocated.first(where: { $0.index == Int(sym.sectionIndex) }) else { continue }
            if sym.value > section.size {
                throw fail(.symbolOutsideSection(symbol: sym.name, section: section.name, value: sym.value, size: section.size))
            }
        }
        func group(_ s: ELFSection) -> Int { s.isExecutable ? 0 : s.isWritable ? 2 : 1 }
        var groupSize: [UInt64] = [0, 0, 0]
        var offsetInGroup: [Int: UInt64] = [:]
        for s in allocated {
            let g = group(s), align = max(s.alignment, 1)
            let o = (groupSize[g] + align - 1) / align * align
            offsetInGroup[s.index] = o
            groupSize[g] = o + s.size
        }
        let stubArea = (groupSize[0] + 15) / 16 * 16
        groupSize[0] = stubArea + UInt64(stubSymbols.count * backend.callStubSize)
        if groupSize.reduce(0, +) > Self.maximumPlacedBytes {
            throw fail(.sectionTooLarge(section: "(all sections)", size: groupSize.reduce(0, +), alignment: 0,
                                        limit: Self.maximumPlacedBytes, alignmentLimit: Self.maximumAlignment))
        }
        let rounded = groupSize.map { $0 == 0 ? 0 : CodeSpace.roundUp($0) }
        let textSegments = image.elf.segments.filter { $0.isLoad && $0.flags & ELFSegment.flagExecute != 0 }
        let near = textSegments.map { $0.virtualAddress + $0.memorySize }.max() ?? machine.architecture.layout.codeBase
        let base = try patcher.space.findFree(size: max(rounded.reduce(0, +), CodeSpace.regionSize), near: near, reach: 1 << 30)
        let groupBase = [base, base + rounded[0], base + rounded[0] + rounded[1]]
        var addresses: [Int: UInt64] = [:]
        for s in allocated { addresses[s.index] = groupBase[group(s)] + offsetInGroup[s.index]! }
        let toc = backend.payloadTOC(sections: allocated.map { ($0.name, addresses[$0.index]!) })
        return Placement(allocated: allocated, addresses: addresses, groupBase: groupBase, rounded: rounded,
                         stubBase: groupBase[0] + stubArea, stubSymbols: stubSymbols, toc: toc)
    }

    /// Each allocated section's bytes with every relocation applied by the backend, in host
    /// buffers, and the call stubs the relocations needed. Symbols resolve against the
    /// payload itself, its TOC, the target, the host calls and the dependencies, in order.
    func relocate(_ payload: Payload, _ placement: Placement, dependencies: [LoadedPayload])
        throws -> (contents: [Int: [UInt8]], stubs: [String: (address: UInt64, bytes: [UInt8])]) {
        func fail(_ r: PayloadError.Reason) -> PayloadError { PayloadError(payload.name, r) }
        let elf = payload.elf
        let addresses = placement.addresses
        var contents: [Int: [UInt8]] = [:]
        for s in placement.allocated {
            contents[s.index] = s.type == ELFSection.typeNoBits ? [UInt8](repeating: 0, count: Int(s.size)) : s.data
        }
        var stubs: [String: (address: UInt64, bytes: [UInt8])] = [:]
        let hostSymbols = services.hostCalls.symbols
        func resolve(_ s: ELFSymbol, section: String, index: Int) throws -> (UInt64, external: Bool, localEntry: UInt64) {
            if s.isDefined {
                guard let a = addresses[Int(s.sectionIndex)] else {
                    throw fail(.relocation(section: section, index: index, reason: "symbol \(s.name) is in a section that is not loaded"))
                }
                return (s.kind == .section ? a : a + s.value, false, s.localEntryOffset)
            }
            if s.name == backend.tocSymbol, let toc = placement.toc { return (toc, false, 0) }
            if let t = image.elf.symbol(named: s.name) { return (t.value, true, t.localEntryOffset) }
            if let h = hostSymbols[s.name] { return (h, true, 0) }
            for d in dependencies { if let v = d.exports[s.name] { return (v, true, 0) } }
            throw fail(.undefinedSymbol(symbol: s.name, section: section, relocation: index))
        }
        for rs in elf.relocationSections {
            guard contents[rs.targetSectionIndex] != nil, let place0 = addresses[rs.targetSectionIndex] else { continue }
            let sectionBytes = UInt64(contents[rs.targetSectionIndex]!.count)
            for (i, r) in rs.entries.enumerated() {
                guard r.offset < sectionBytes else {
                    throw fail(.relocation(section: rs.name, index: i, reason:
                        "offset \(hex(r.offset)) is outside the section it applies to (\(hex(sectionBytes)) bytes)"))
                }
                let s = elf.symbols[Int(r.symbolIndex)]
                let (value, external, localEntry) = try resolve(s, section: rs.name, index: i)
                var stub: UInt64?
                if external, placement.stubSymbols.contains(s.name) {
                    if stubs[s.name] == nil {
                        let at = placement.stubBase + UInt64(stubs.count * backend.callStubSize)
                        stubs[s.name] = (at, backend.callStub(type: r.type, symbol: s.name, to: value, at: at) ?? [])
                    }
                    stub = stubs[s.name]!.address
                }
                let context = RelocationContext(section: rs.name, index: i, symbolName: s.name, toc: placement.toc,
                                                external: external, localEntryOffset: localEntry, stub: stub)
                do {
                    try backend.relocate(type: r.type, addend: r.addend ?? 0, symbol: value, place: place0 + r.offset,
                                         bytes: &contents[rs.targetSectionIndex]!, offset: Int(r.offset), context: context)
                } catch let e as PatchError {
                    // The location is said once, by the payload error.
                    let why: String
                    switch e {
                    case let .unsupportedRelocation(_, _, type): why = "type \(type) is not supported"
                    case let .relocationOverflow(_, _, symbol, type, value): why = "\(type) against \(symbol): value \(value) does not fit"
                    default: why = "\(e)"
                    }
                    throw fail(.relocation(section: rs.name, index: i, reason: why))
                }
            }
        }
        return (contents, stubs)
    }

    /// The new function of each record, and whether its old one can be patched at all.
    func resolve(_ payload: Payload, _ olds: [ELFSymbol], _ placement: Placement) throws -> [LoadedPayload.Resolved] {
        func fail(_ r: PayloadError.Reason) -> PayloadError { PayloadError(payload.name, r) }
        var resolved: [LoadedPayload.Resolved] = []
        for (f, old) in zip(payload.functions, olds) {
            let newAddress = f.newSymbol.flatMap { s in placement.addresses[Int(s.sectionIndex)].map { $0 + s.value } }
            if f.newSymbol != nil && newAddress == nil {
                throw fail(.badRecord(record: f.record, reason: "new function \(f.newSymbol!.name) is not in a loaded section"))
            }
            do {
                try patcher.check(.init(function: f.name, target: f.target(newAddress: newAddress)))
            } catch {
                throw fail(.patch("cannot patch \(f.name): \(error)"))
            }
            resolved.append(.init(function: f, old: old, newAddress: newAddress))
        }
        return resolved
    }

    /// Maps the groups and copies the relocated bytes in, through the executor (inside a
    /// rendezvous while vCPUs run, since every vCPU's emulator maps the new regions), then
    /// runs the load hooks; a failure unmaps everything it mapped.
    func commit(_ payload: Payload, _ placement: Placement, contents: [Int: [UInt8]],
                stubs: [String: (address: UInt64, bytes: [UInt8])], functions: [LoadedPayload.Resolved]) throws -> LoadedPayload {
        func fail(_ r: PayloadError.Reason) -> PayloadError { PayloadError(payload.name, r) }
        let addresses = placement.addresses
        var exports: [String: UInt64] = [:]
        for s in payload.elf.symbols where s.isDefined && (s.kind == .function || s.kind == .object) {
            if let a = addresses[Int(s.sectionIndex)] { exports[s.name] = a + s.value }
        }
        var hooks: [PayloadFormat.HookKind: [UInt64]] = [:]
        for (kind, symbols) in payload.hooks {
            hooks[kind] = try symbols.map { s in
                guard let a = addresses[Int(s.sectionIndex)] else { throw fail(.badRecord(record: -1, reason: "hook \(s.name) is not loaded")) }
                return a + s.value
            }
        }
        var regions: [GuestRegion] = []
        try patcher.executor.execute { changed in
            do {
                let perms: [MemoryPermissions] = [[.read, .execute], [.read], [.read, .write]]
                for g in 0..<3 where placement.rounded[g] > 0 {
                    regions.append(try machine.map(name: "payload:\(payload.name.split(separator: "/").last ?? "")#\(g)",
                                                   at: placement.groupBase[g], size: placement.rounded[g], permissions: perms[g]))
                }
                for (index, bytes) in contents { try machine.memory.write(addresses[index]!, bytes) }
                for (_, stub) in stubs { try machine.memory.write(stub.address, stub.bytes) }
                for r in regions { changed(r.base, Int(r.size)) }
            } catch {
                for r in regions { machine.unmap(r) }
                regions = []
                throw error
            }
        }
        let loaded = LoadedPayload(payload: payload, regions: regions, sectionAddresses: addresses, exports: exports,
                                   toc: placement.toc, functions: functions, hooks: hooks)
        payloads.append(loaded)
        do {
            try runHooks(.load, of: loaded)
        } catch {
            payloads.removeLast()
            try? patcher.executor.execute { _ in for r in regions { self.machine.unmap(r) } }
            throw error
        }
        return loaded
    }
}
