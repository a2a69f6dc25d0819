import SpliceBytes
import SpliceELF

/// An argument of a call made from the host: a number, or memory the callee gets the
/// address of: a string, bytes, zeroed bytes, or a symbol of the image. What `splice call`
/// and `splice patch --call` take.
public enum CallArgument: Equatable, Sendable, CustomStringConvertible {
    case integer(Int64)
    /// A NUL-terminated string placed in guest memory.
    case string(String)
    /// These bytes placed in guest memory.
    case bytes([UInt8])
    /// This many zeroed bytes placed in guest memory (an output buffer).
    case zeroed(Int)
    /// The address of a symbol of the image.
    case symbol(String)

    /// The largest buffer one argument may ask for.
    public static let maximumBuffer = 1 << 20

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public let argument: String
        public let reason: String
        public var description: String { "argument '\(argument)': \(reason)" }
    }

    /// `42`, `-1`, `0x2a`, `-0x10`; `s:TEXT`; `x:HEX` (pairs of hex digits); `o:N`; `&SYMBOL`.
    public init(parsing text: String) throws {
        func fail(_ why: String) -> ParseError { ParseError(argument: text, reason: why) }
        if text.hasPrefix("s:") {
            self = .string(String(text.dropFirst(2)))
        } else if text.hasPrefix("x:") {
            let digits = Array(text.dropFirst(2))
            guard digits.count % 2 == 0 else { throw fail("x: takes pairs of hex digits") }
            var bytes: [UInt8] = []
            for i in stride(from: 0, to: digits.count, by: 2) {
                guard let b = UInt8(String(digits[i...i + 1]), radix: 16) else { throw fail("'\(String(digits[i...i + 1]))' is not a hex byte") }
                bytes.append(b)
            }
            self = .bytes(bytes)
        } else if text.hasPrefix("o:") {
            guard let n = Int(text.dropFirst(2)), n >= 0 else { throw fail("o: takes a byte count") }
            self = .zeroed(n)
        } else if text.hasPrefix("&") {
            guard text.count > 1 else { throw fail("& takes a symbol name") }
            self = .symbol(String(text.dropFirst()))
        } else {
            let negative = text.hasPrefix("-")
            let body = negative ? String(text.dropFirst()) : text
            let magnitude = body.lowercased().hasPrefix("0x") ? UInt64(body.dropFirst(2), radix: 16) : UInt64(body)
            guard let m = magnitude, negative ? m <= UInt64(Int64.max) + 1 : true else {
                throw fail("not an integer (decimal or 0x hex), s:TEXT, x:HEX, o:N or &SYMBOL")
            }
            self = .integer(negative ? Int64(bitPattern: 0 &- m) : Int64(bitPattern: m))
        }
        if case let .zeroed(n) = self, n > Self.maximumBuffer { throw fail("at most \(Self.maximumBuffer) bytes") }
        if case let .bytes(b) = self, b.count > Self.maximumBuffer { throw fail("at most \(Self.maximumBuffer) bytes") }
    }

    public var description: String {
        switch self {
        case let .integer(v): return String(v)
        case let .string(s): return "s:" + s
        case let .bytes(b): return "x:" + b.hexDigits
        case let .zeroed(n): return "o:\(n)"
        case let .symbol(s): return "&" + s
        }
    }

    /// The bytes the argument places in guest memory, if it places any.
    var buffer: [UInt8]? {
        switch self {
        case let .string(s): return Array(s.utf8) + [0]
        case let .bytes(b): return b
        case let .zeroed(n): return [UInt8](repeating: 0, count: n)
        case .integer, .symbol: return nil
        }
    }
}

/// A buffer a call's argument placed in guest memory, and what it held after the call.
public struct CallBuffer: Equatable, Sendable, Codable {
    /// Which argument (from 0) it is.
    public var argument: Int
    public var address: UInt64
    public var bytes: [UInt8]
}

extension LoadedImage {
    /// Calls `name` with `arguments`, placing the buffers they ask for in a region of their
    /// own (mapped for the call, unmapped after it). Returns the result, the values passed
    /// (an address for a buffer or a symbol) and each buffer's bytes after the call.
    public func call(_ name: String, arguments: [CallArgument], entry kind: EntryKind = .global, vcpu index: Int = 0,
                     limits: VCPU.Limits = VCPU.Limits()) throws -> (result: CallResult, values: [Int64], buffers: [CallBuffer]) {
        var values: [Int64] = []
        var placed: [(argument: Int, offset: UInt64, bytes: [UInt8])] = []
        var size: UInt64 = 0
        for (i, a) in arguments.enumerated() {
            switch a {
            case let .integer(v): values.append(v)
            case let .symbol(s):
                guard let symbol = elf.symbol(named: s) else { throw MachineError.noSuchSymbol(s) }
                values.append(Int64(bitPattern: symbol.value))
            default:
                let bytes = a.buffer ?? []
                placed.append((i, size, bytes))
                values.append(0)
                size += (UInt64(max(bytes.count, 1)) + 15) / 16 * 16
            }
        }
        guard !placed.isEmpty else { return (try call(name, values, entry: kind, vcpu: index, limits: limits), values, []) }
        let page = machine.memory.pageSize
        let top = machine.memory.regions.map(\.end).max() ?? 0
        let base = (top + 0xffff) / 0x1_0000 * 0x1_0000 + 0x1_0000
        let region = try machine.map(name: "call-arguments", at: base, size: (size + page - 1) / page * page, permissions: [.read, .write])
        defer { machine.unmap(region) }
        var k = 0
        for (i, a) in arguments.enumerated() where a.buffer != nil {
            try machine.memory.write(base + placed[k].offset, placed[k].bytes)
            values[i] = Int64(bitPattern: base + placed[k].offset)
            k += 1
        }
        let result = try call(name, values, entry: kind, vcpu: index, limits: limits)
        let buffers = try placed.map { p in
            CallBuffer(argument: p.argument, address: base + p.offset,
                       bytes: try machine.memory.read(base + p.offset, count: p.bytes.count))
        }
        return (result, values, buffers)
    }
}
