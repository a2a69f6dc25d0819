extension Array where Element == UInt8 {
    /// The little-endian unsigned integer of `T`'s width at `offset` (the caller has checked
    /// that it lies inside): ELF64 fields, payload records, guest words. One reader for all
    /// of them.
    @inlinable
    public func littleEndian<T: FixedWidthInteger & UnsignedInteger>(_: T.Type, at offset: Int) -> T {
        (0..<(T.bitWidth / 8)).reduce(0) { $0 | T(self[offset + $1]) << (8 * $1) }
    }
}
