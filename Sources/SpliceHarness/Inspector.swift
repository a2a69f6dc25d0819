import SpliceArchitectures
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
                           segments: segments, functions: functions)
    }

    /// Appends `<symbol>` to an instruction whose last operand is a known function
    /// address: `bl 0x100001ac` becomes `bl 0x100001ac <_mcount>`.
    public static func annotate(_ text: String, _ names: [UInt64: String]) -> String {
        guard let last = text.split(whereSeparator: { $0 == " " || $0 == "," }).last, last.hasPrefix("0x"),
              let address = UInt64(last.dropFirst(2), radix: 16), let name = names[address] else { return text }
        return "\(text) <\(name)>"
    }
}
