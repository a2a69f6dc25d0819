/// Sparse bytes at guest addresses: what the patcher wrote (and so expects to find), or
/// what memory will hold once some redirects are reverted. Kept per aligned 8-byte granule
/// with a mask of the known bytes, so a 4- or 5-byte patch write costs one or two hash
/// look-ups instead of one per byte (REPLACE of 1,000 functions touches this 6,000 times).
struct ByteOverlay {
    private struct Granule {
        var value: UInt64 = 0
        var mask: UInt8 = 0
        @inline(__always)
        mutating func store(_ v: UInt64, keep: UInt64, mask: UInt8) {
            value = (value & keep) | v
            self.mask |= mask
        }
    }

    private var granules: [UInt64: Granule] = [:]

    var isEmpty: Bool { granules.isEmpty }

    /// Calls `body(granuleAddress, firstByte, byteCount, offsetInBytes)` for each granule
    /// that [address, address + count) touches.
    @inline(__always)
    private static func forEachGranule(_ address: UInt64, _ count: Int, _ body: (UInt64, Int, Int, Int) -> Void) {
        var done = 0
        while done < count {
            let a = address &+ UInt64(done)
            let key = a & ~7
            let first = Int(a & 7)
            let n = min(8 - first, count - done)
            body(key, first, n, done)
            done += n
        }
    }

    /// The mask bits of bytes [first, first + n) of a granule (n <= 8 - first).
    @inline(__always)
    private static func bits(_ first: Int, _ n: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: ((1 as UInt16) << n - 1) << first)
    }

    /// The value bits of the bytes `mask` selects.
    @inline(__always)
    private static func byteMask(_ mask: UInt8) -> UInt64 {
        var m: UInt64 = 0
        for i in 0..<8 where mask & (1 << i) != 0 { m |= 0xff << (8 * UInt64(i)) }
        return m
    }

    /// Little-endian load of `n` bytes starting at `p`, shifted to byte `first`.
    @inline(__always)
    private static func load(_ p: UnsafeRawBufferPointer, _ start: Int, _ n: Int, at first: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<n { v |= UInt64(p[start + i]) << (8 * UInt64(first + i)) }
        return v
    }

    /// Records `bytes` at `address` (newer bytes win).
    mutating func set(_ address: UInt64, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { set(address, $0) }
    }

    mutating func set(_ address: UInt64, _ p: UnsafeRawBufferPointer) {
        Self.forEachGranule(address, p.count) { key, first, n, offset in
            let mask = Self.bits(first, n)
            let keep = ~Self.byteMask(mask)
            let v = Self.load(p, offset, n, at: first)
            granules[key, default: Granule()].store(v, keep: keep, mask: mask)
        }
    }

    /// Forgets [address, address + count).
    mutating func remove(_ address: UInt64, count: Int) {
        Self.forEachGranule(address, count) { key, first, n, _ in
            guard var g = granules[key] else { return }
            g.mask &= ~Self.bits(first, n)
            granules[key] = g.mask == 0 ? nil : g
        }
    }

    /// Replaces the bytes of `bytes` (which start at `address`) that this overlay knows.
    func apply(to bytes: inout [UInt8], at address: UInt64) {
        guard !granules.isEmpty else { return }
        bytes.withUnsafeMutableBufferPointer { p in
            Self.forEachGranule(address, p.count) { key, first, n, offset in
                guard let g = granules[key] else { return }
                let known = g.mask & Self.bits(first, n)
                guard known != 0 else { return }
                for i in 0..<n where known & (1 << UInt8(first + i)) != 0 {
                    p[offset + i] = UInt8(truncatingIfNeeded: g.value >> UInt64(8 * (first + i)))
                }
            }
        }
    }

    /// The bytes at [address, address + count) when every one of them is known, else nil.
    func known(_ address: UInt64, count: Int) -> [UInt8]? {
        var bytes: [UInt8] = []
        return known(address, count: count, into: &bytes) ? bytes : nil
    }

    /// Puts the bytes at [address, address + count) into `bytes` (reusing its storage) when
    /// every one of them is known; false otherwise (`bytes` then holds no meaning).
    func known(_ address: UInt64, count: Int, into bytes: inout [UInt8]) -> Bool {
        guard !granules.isEmpty else { return false }
        bytes.removeAll(keepingCapacity: true)
        var complete = true
        Self.forEachGranule(address, count) { key, first, n, _ in
            guard complete, let g = granules[key] else { complete = false; return }
            let wanted = Self.bits(first, n)
            guard g.mask & wanted == wanted else { complete = false; return }
            for i in 0..<n { bytes.append(UInt8(truncatingIfNeeded: g.value >> UInt64(8 * (first + i)))) }
        }
        return complete
    }
}
