import SpliceBytes
import SpliceELF

/// The payload's metadata sections (docs/payload-format.md), written into an `ELFWriter`
/// that already holds the payload's code and data: the one place that knows the record
/// layout, the strings table, the depends notes and how the build id is computed.
public struct PayloadMetadata {
    public struct Record {
        public var name: String
        /// The writer's symbol index of the new function; nil for a NOP patch.
        public var newSymbol: Int?
        public var newSize: UInt64
        public var oldSize: UInt64
        public var expectedBytes: [UInt8]
        /// A NOP patch of `newSize` bytes: where they start in the function.
        public var nopOffset: UInt32

        public init(name: String, newSymbol: Int?, newSize: UInt64, oldSize: UInt64, expectedBytes: [UInt8] = [],
                    nopOffset: UInt32 = 0) {
            self.name = name
            self.newSymbol = newSymbol
            self.newSize = newSize
            self.oldSize = oldSize
            self.expectedBytes = expectedBytes
            self.nopOffset = nopOffset
        }
    }

    public var records: [Record] = []
    public var targetBuildID: [UInt8]
    public var dependencies: [[UInt8]] = []
    /// Leave `.livepatch.depends` out (Xen's xen_no_xen_buildid test payload: a payload
    /// the loader must refuse).
    public var omitTargetBuildID = false

    public init(targetBuildID: [UInt8]) { self.targetBuildID = targetBuildID }

    /// Adds .livepatch.strings, .livepatch.funcs with its relocations (`absolute`: the
    /// ISA's 64-bit address relocation), the depends notes and the payload's own build-id
    /// note, and returns the file, sealed: its build id computed from all of its bytes
    /// (`PayloadFormat.buildID(of:range:)`).
    public func write(into w: inout ELFWriter, absolute: UInt32) throws -> [UInt8] {
        var strings: [UInt8] = []
        var funcs: [UInt8] = []
        let stringsIndex = w.add(.init(name: PayloadFormat.stringsSection, alignment: 1))
        let funcsIndex = w.add(.init(name: PayloadFormat.funcsSection, alignment: 8))
        let stringsSymbol = w.add(.init(name: "", type: ELFWriter.Symbol.sectionType, binding: ELFWriter.Symbol.local,
                                        section: stringsIndex))
        for (n, r) in records.enumerated() {
            var record = [UInt8](repeating: 0, count: PayloadFormat.recordSize)
            func put(_ v: UInt64, _ o: Int) { record.replaceSubrange(o..<o + 4, with: v.littleEndianBytes(count: 4)) }
            put(r.newSize, 24)
            put(r.oldSize, 28)
            put(UInt64(r.nopOffset), 36)
            record[32] = PayloadFormat.recordVersion
            let expected = r.expectedBytes.prefix(PayloadFormat.maxExpectedBytes)
            record[33] = UInt8(expected.count)
            record.replaceSubrange(40..<(40 + expected.count), with: expected)
            let base = UInt64(n * PayloadFormat.recordSize)
            w.relocate(section: funcsIndex, .init(offset: base, type: absolute, symbol: stringsSymbol, addend: Int64(strings.count)))
            if let s = r.newSymbol { w.relocate(section: funcsIndex, .init(offset: base + 8, type: absolute, symbol: s, addend: 0)) }
            strings += Array(r.name.utf8) + [0]
            funcs += record
        }
        w.setData(of: stringsIndex, strings)
        w.setData(of: funcsIndex, funcs)
        if !omitTargetBuildID {
            w.add(.init(name: PayloadFormat.dependsSection, type: ELFSection.typeNote,
                        data: ELFWriter.note(owner: "GNU", type: ELFNote.gnuBuildID, descriptor: targetBuildID), alignment: 4))
        }
        if !dependencies.isEmpty {
            w.add(.init(name: PayloadFormat.payloadDependsSection, type: ELFSection.typeNote,
                        data: dependencies.flatMap { ELFWriter.note(owner: "GNU", type: ELFNote.gnuBuildID, descriptor: $0) },
                        alignment: 4))
        }
        w.add(.init(name: PayloadFormat.buildIDSection, type: ELFSection.typeNote, flags: ELFSection.flagAlloc,
                    data: ELFWriter.note(owner: "GNU", type: ELFNote.gnuBuildID,
                                         descriptor: [UInt8](repeating: 0, count: PayloadFormat.buildIDSize)), alignment: 4))
        return try PayloadFormat.sealed(try w.write())
    }
}
