// How Splice writes numbers and bytes for people: addresses and offsets as 0x-prefixed
// lower-case hex, bytes as two digits each. One formatter, so every message, trace and
// report reads the same.

/// `value` as `0x` and lower-case hex digits (0x0 for zero).
@inlinable
public func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }

extension Collection where Element == UInt8 {
    /// Each byte as two lower-case hex digits, a space between them (instruction bytes).
    @inlinable
    public var hexBytes: String { hexDigits(separator: " ") }

    /// Each byte as two lower-case hex digits, nothing between them (a digest, a build id).
    @inlinable
    public var hexDigits: String { hexDigits(separator: "") }

    @inlinable
    public func hexDigits(separator: String) -> String {
        map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: separator)
    }
}
