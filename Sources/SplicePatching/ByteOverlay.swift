/// Sparse bytes at guest addresses: what the patcher wrote (and so expects to find), or
/// what memory will hold once some redirects are reverted. Kept per aligned 8-byte granule
/// with a mask of the known bytes, so a 4- or 5-byte patch write costs one or two hash
/// look-ups instead of one per byte (REPLACE of 1,000 functions touches this 6,000 times).
struct ByteOverlay {
    private struct Granule {
        var value: UInt64 = 0
        var mask: UInt8 = 0
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

    /// Records `bytes` at `address` (newer bytes win).
    mutating func set<C: RandomAccessCollection>(_ address: UInt64, _ bytes: C) where C.Element == UInt8, C.Index == Int {
        let base = bytes.startIndex
        Self.forEachGranule(address, bytes.count) { key, first, n, offset in
            Self.store(bytes, from: base + offset, count: n, at: first, into: &granules[key, default: Granule()])
        }
    }

    private static func store<C: RandomAccessCollection>(_ bytes: C, from start: Int, count n: Int, at first: Int,
                                                         into g: inout Granule) where C.Element == UInt8, C.Index == Int {
        for i in 0..<n {
            let shift = UInt64(8 * (first + i))
            g.value = (g.value & ~(0xff << shift)) | UInt64(bytes[start + i]) << shift
            g.mask |= 1 << UInt8(first + i)
        }
    }

    /// Forgets [address, address + count).
    mutating func remove(_ address: UInt64, count: Int) {
        Self.forEachGranule(address, count) { key, first, n, _ in
            guard var g = granules[key] else { return }
            for i in 0..<n { g.mask &= ~(1 << UInt8(first + i)) }
            granules[key] = g.mask == 0 ? nil : g
        }
    }

    /// Replaces the bytes of `bytes` (which start at `address`) that this overlay knows.
    func apply(to bytes: inout [UInt8], at address: UInt64) {
        guard !granules.isEmpty else { return }
        Self.forEachGranule(address, bytes.count) { key, first, n, offset in
            guard let g = granules[key] else { return }
            for i in 0..<n where g.mask & (1 << UInt8(first + i)) != 0 {
                bytes[offset + i] = UInt8(truncatingIfNeeded: g.value >> UInt64(8 * (first + i)))
            }
        }
    }

    /// The bytes at [address, address + count) when every one of them is known, else nil.
    func known(_ address: UInt64, count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var complete = true
        Self.forEachGranule(address, count) { key, first, n, offset in
            guard complete, let g = granules[key] else { complete = false; return }
            for i in 0..<n {
                guard g.mask & (1 << UInt8(first + i)) != 0 else { complete = false; return }
                bytes[offset + i] = UInt8(truncatingIfNeeded: g.value >> UInt64(8 * (first + i)))
            }
        }
        return complete ? bytes : nil
    }
}
