// Every ISA Splice runs and every file format it reads (ELF64, payload records) is
// little-endian: one reader and one writer serve them all.

extension Array where Element == UInt8 {
    /// The little-endian unsigned integer of `T`'s width at `offset` (the caller has checked
    /// that it lies inside): ELF64 fields, payload records, guest words.
    @inlinable
    public func littleEndian<T: FixedWidthInteger & UnsignedInteger>(_: T.Type, at offset: Int) -> T {
        (0..<(T.bitWidth / 8)).reduce(0) { $0 | T(self[offset + $1]) << (8 * $1) }
    }
}

extension FixedWidthInteger {
    /// The value's bytes, least significant first, as wide as the type.
    @inlinable
    public var littleEndianBytes: [UInt8] { littleEndianBytes(count: bitWidth / 8) }

    /// The low `count` bytes of the value, least significant first (a field narrower than
    /// the type: a 4-byte displacement of an Int64).
    @inlinable
    public func littleEndianBytes(count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: self >> (8 * $0)) }
    }
}
