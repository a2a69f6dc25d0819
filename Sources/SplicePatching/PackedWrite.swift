/// The address and bytes of one write, held inline when there are at most 16 bytes (every
/// write a redirect makes, except long NOP fills). The patcher checks and writes these
/// while every vCPU is stopped: inline bytes need no reference counting and no heap block
/// of their own, which is most of what 1,000 functions would otherwise cost there.
struct PackedWrite: Equatable {
    let address: UInt64
    let count: Int
    /// False for data that code reads (a ppc64le site table entry): no vCPU has translated
    /// it, so a write there drops no translations.
    let isCode: Bool
    private var held = Inline()
    /// The bytes when they do not fit inline.
    private var spill: [UInt8]?

    static let inlineCapacity = 16

    init(address: UInt64, bytes: [UInt8], kind: CodeWrite.Kind = .code) {
        self.init(address: address, bytes: bytes, isCode: kind == .code)
    }

    init(address: UInt64, bytes: [UInt8], isCode: Bool) {
        self.address = address
        count = bytes.count
        self.isCode = isCode
        if bytes.count > Self.inlineCapacity {
            spill = bytes
        } else {
            var pair: (UInt64, UInt64) = (0, 0)
            withUnsafeMutableBytes(of: &pair) { $0.copyBytes(from: bytes) }
            held = Inline(low: pair.0, high: pair.1)
        }
    }

    /// The bytes, for `body` only.
    @inline(__always)
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        if let spill { return try spill.withUnsafeBytes(body) }
        return try held.withBytes(count: count, body)
    }

    var bytes: [UInt8] { withBytes { Array($0) } }

    /// Up to 16 bytes as plain values (no reference to count).
    struct Inline: Equatable {
        var low: UInt64 = 0
        var high: UInt64 = 0
        @inline(__always)
        func withBytes<R>(count: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
            var pair = (low, high)
            return try withUnsafeBytes(of: &pair) { try body(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
        }
    }

    /// The bytes as plain values, when they are held inline.
    var inline: Inline? { spill == nil ? held : nil }
}
