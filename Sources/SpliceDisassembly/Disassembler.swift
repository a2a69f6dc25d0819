import CCapstone
import SpliceBytes

/// Which instruction set a `Disassembler` decodes. Each arch backend declares its own
/// (arch/<isa>) from Capstone's arch and mode numbers; everything else only passes it on.
public struct DisassemblyMode: Hashable, Sendable, CustomStringConvertible {
    let arch: cs_arch
    let mode: cs_mode
    /// The size of one undecodable unit, shown as `.byte` (x86) or `.long` (PPC).
    let undecodableUnit: Int
    public let description: String

    package init(arch: cs_arch, mode: cs_mode, undecodableUnit: Int, description: String) {
        self.arch = arch
        self.mode = mode
        self.undecodableUnit = undecodableUnit
        self.description = description
    }

    public static func == (a: Self, b: Self) -> Bool { a.description == b.description }
    public func hash(into h: inout Hasher) { h.combine(description) }
}

/// One decoded instruction with its bytes. Undecodable bytes become a pseudo
/// instruction (`.long 0x…` / `.byte 0x…`) with `isValid == false`, so a listing never
/// stops at the first word Capstone does not know (Capstone 4 misses many POWER8/9
/// instructions gcc emits).
public struct DecodedInstruction: Equatable, Sendable, CustomStringConvertible {
    public var address: UInt64
    public var bytes: [UInt8]
    public var mnemonic: String
    public var operands: String
    public var isValid: Bool

    public var size: Int { bytes.count }
    public var text: String { operands.isEmpty ? mnemonic : "\(mnemonic) \(operands)" }
    public var bytesHex: String { bytes.hexBytes }
    public var description: String { "\(hex(address)):  \(bytesHex)  \(text)" }
}

public struct DisassemblyError: Error, CustomStringConvertible {
    public let operation: String
    public let message: String
    public var description: String { "capstone \(operation) failed: \(message)" }
}

/// A Capstone handle for one mode. Not thread-safe: use one per thread.
public final class Disassembler {
    public let mode: DisassemblyMode
    private var handle: csh = 0

    public init(mode: DisassemblyMode) throws {
        self.mode = mode
        let err = cs_open(mode.arch, mode.mode, &handle)
        guard err == CS_ERR_OK else {
            throw DisassemblyError(operation: "cs_open(\(mode))", message: String(cString: cs_strerror(err)))
        }
    }

    deinit { cs_close(&handle) }

    /// Decodes up to `count` instructions (all of `bytes` when nil) starting at `address`.
    public func decode(_ bytes: [UInt8], address: UInt64, count: Int? = nil) -> [DecodedInstruction] {
        var result: [DecodedInstruction] = []
        var offset = 0
        let limit = count ?? Int.max
        while offset < bytes.count && result.count < limit {
            if let insn = decodeOne(bytes, offset: offset, address: address + UInt64(offset)) {
                result.append(insn)
                offset += insn.size
            } else {
                let unit = min(mode.undecodableUnit, bytes.count - offset)
                let chunk = Array(bytes[offset..<offset + unit])
                let value = chunk.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
                result.append(DecodedInstruction(
                    address: address + UInt64(offset), bytes: chunk, mnemonic: unit == 4 ? ".long" : ".byte",
                    operands: hex(value), isValid: false))
                offset += unit
            }
        }
        return result
    }

    /// Decodes exactly one instruction, or nil if the bytes there are not one.
    public func decodeOne(_ bytes: [UInt8], offset: Int = 0, address: UInt64) -> DecodedInstruction? {
        var insn: UnsafeMutablePointer<cs_insn>?
        let n = bytes.withUnsafeBufferPointer { buf -> Int in
            cs_disasm(handle, buf.baseAddress! + offset, buf.count - offset, address, 1, &insn)
        }
        guard n == 1, let i = insn else { return nil }
        defer { cs_free(i, n) }
        let size = Int(i.pointee.size)
        var mnemonic = i.pointee.mnemonic
        var operands = i.pointee.op_str
        return DecodedInstruction(
            address: i.pointee.address, bytes: Array(bytes[offset..<offset + size]),
            mnemonic: cString(&mnemonic), operands: cString(&operands), isValid: true)
    }
}

private func cString<T>(_ tuple: inout T) -> String {
    withUnsafeBytes(of: &tuple) { raw in
        let chars = raw.prefix { $0 != 0 }
        return String(decoding: chars, as: UTF8.self)
    }
}

