import SpliceArchitectures
import SpliceBytes
import SpliceDaemon
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
/// What `splice inspect` shows about one function.
public struct FunctionReport: Codable, Sendable {
    public var name: String
    public var address: UInt64
    public var size: UInt64
    public var globalEntry: UInt64
    /// ppc64le: the local entry when it differs from the global one.
    public var localEntry: UInt64?
    public var sites: [PrologueSite]
    public var prologue: [InstructionReport]
}

public struct InstructionReport: Codable, Sendable {
    public var address: UInt64
    public var bytes: String
    public var text: String
}

public struct ImageReport: Codable, Sendable {
    public var file: String
    public var architecture: String
    public var entry: UInt64
    public var buildID: String?
    public var segments: [SegmentReport]
    public var functions: [FunctionReport]
    /// The image's own tracing-site table against what discovery finds (nil: it has none).
    public var siteTable: SiteTableReport?
}

/// A kernel's own site table (Linux's ftrace `__mcount_loc`) is the authority, as in Linux:
/// each entry is checked for a tracing slot at its address. Discovery in the functions'
/// prologues is the cross-check.
public struct SiteTableReport: Codable, Sendable {
    public var source: String
    /// Non-zero entries, and the zero ones the linker left for functions it dropped.
    public var entries: Int
    public var zeroEntries: Int
    /// Entries whose bytes are a tracing slot.
    public var found: Int
    /// Entries whose bytes are not one.
    public var missing: [SiteException]
    /// Found entries that discovery in the prologues of the image's function symbols does
    /// not find (code without a symbol of its own, a slot past where discovery looks).
    public var undiscovered: [SiteException]
    /// Slots discovery finds that the table does not list.
    public var extra: [SiteException]

    public struct SiteException: Codable, Sendable {
        public var address: UInt64
        /// The function that holds it, as `name+0xoffset`, or nil when no function symbol does.
        public var location: String?
        public var section: String?
        public var reason: String
    }
}

public struct SegmentReport: Codable, Sendable {
    public var address: UInt64
    public var memorySize: UInt64
    public var fileSize: UInt64
    public var permissions: String
}

/// Reads an image's functions, entries, patch landmarks and prologue disassembly.
public enum Inspector {
    public static func report(_ elf: ELFFile, prologueInstructions: Int = 6) throws -> ImageReport {
        let arch = try Architectures.forELF(elf)
        let disassembler = try Disassembler(mode: arch.disassemblyMode)
        let names = elf.functionNames
        let functions = try elf.functions.map { symbol -> FunctionReport in
            let code = try elf.bytes(of: symbol)
            let entries = arch.entries(of: symbol, in: elf)
            let prologue = disassembler.decode(code, address: symbol.value, count: prologueInstructions)
            return FunctionReport(
                name: symbol.name, address: symbol.value, size: symbol.size, globalEntry: symbol.value,
                localEntry: entries.first { $0.kind == .local }?.address,
                sites: arch.prologueSites(of: symbol, code: code, in: elf),
                prologue: prologue.map { InstructionReport(address: $0.address, bytes: $0.bytesHex,
                                                           text: annotate($0.text, names)) })
        }
        let segments = elf.segments.filter(\.isLoad).map { s in
            SegmentReport(address: s.virtualAddress, memorySize: s.memorySize, fileSize: s.fileSize,
                          permissions: MemoryPermissions(segment: s).description)
        }
        return ImageReport(file: elf.name, architecture: arch.name, entry: elf.header.entry, buildID: elf.buildIDHex,
                           segments: segments, functions: functions,
                           siteTable: elf.tracingSiteTable.map { siteTable($0, functions: functions, elf: elf, arch: arch) })
    }

    /// Checks every entry of the image's table for a tracing slot, and sets them against
    /// the slots discovery found, naming for each difference the function and section it
    /// lies in and why it differs.
    static func siteTable(_ table: TracingSiteTable, functions: [FunctionReport], elf: ELFFile,
                          arch: any CPUArchitecture) -> SiteTableReport {
        var slots: [UInt64: String] = [:]
        for f in functions { for s in f.sites where s.isTracingSlot { slots[s.address] = f.name } }
        let listed = Set(table.addresses)
        let byAddress = functions.sorted { $0.address < $1.address }
        func holder(_ address: UInt64) -> FunctionReport? {
            var low = 0, high = byAddress.count
            while low < high {
                let mid = (low + high) / 2
                if byAddress[mid].address <= address { low = mid + 1 } else { high = mid }
            }
            guard low > 0, address < byAddress[low - 1].address + byAddress[low - 1].size else { return nil }
            return byAddress[low - 1]
        }
        func exception(_ address: UInt64, _ reason: (FunctionReport?) -> String) -> SiteTableReport.SiteException {
            let f = holder(address)
            return .init(address: address, location: f.map { "\($0.name)+\(hex(address - $0.address))" },
                         section: elf.sections.first { $0.contains(address: address) }?.name, reason: reason(f))
        }
        var missing: [SiteTableReport.SiteException] = [], undiscovered: [SiteTableReport.SiteException] = []
        for a in table.addresses where slots[a] == nil {
            guard arch.tracingSlot(at: a, in: elf) != nil else {
                missing.append(exception(a) { _ in
                    "the bytes there [" + (elf.bytes(at: a, count: 8)?.hexBytes ?? "outside the file") + "] are not a tracing slot"
                })
                continue
            }
            undiscovered.append(exception(a) { f in
                guard let f else { return "no function symbol covers it (code without a symbol of its own)" }
                if let s = elf.symbol(named: f.name), s.sizeIsInferred {
                    return "past \(f.name)'s first slot, inside the size inferred for it: a function without a symbol of its own"
                }
                let kinds = f.sites.map(\.kind.rawValue)
                return "discovery found no tracing slot here in \(f.name)" + (kinds.isEmpty ? "" : " (it found: \(kinds.joined(separator: ", ")))")
            })
        }
        let extra = slots.keys.filter { !listed.contains($0) }.sorted().map { a in
            exception(a) { _ in "a tracing slot the table does not list" }
        }
        return SiteTableReport(source: table.source, entries: table.addresses.count, zeroEntries: table.zeroEntries,
                               found: table.addresses.count - missing.count, missing: missing, undiscovered: undiscovered,
                               extra: extra)
    }

    /// Appends `<symbol>` to an instruction whose last operand is a known function
    /// address: `bl 0x100001ac` becomes `bl 0x100001ac <_mcount>`.
    public static func annotate(_ text: String, _ names: [UInt64: String]) -> String {
        guard let last = text.split(whereSeparator: { $0 == " " || $0 == "," }).last, last.hasPrefix("0x"),
              let address = UInt64(last.dropFirst(2), radix: 16), let name = names[address] else { return text }
        return "\(text) <\(name)>"
    }
}
