/// Sparse bytes at guest addresses: what the patcher wrote (and so expects to find), or
/// what memory will hold once some redirects are reverted. Kept per aligned 8-byte granule
/// with a mask of the known bytes, so a 4- or 5-byte patch write costs one or two look-ups
/// instead of one per byte. REPLACE of 1,000 functions touches this 6,000-9,000 times, so
/// the granules live in a small open-addressing table of their own (linear probing,
/// backward-shift deletion, a multiplicative hash) rather than a `Dictionary`, whose
/// seeded hashing costs more than everything else a look-up does.
struct ByteOverlay {
    /// Granule address | 1 (granules are 8-aligned, so 0 marks an empty slot).
    private var keys: [UInt64] = []
    private var values: [UInt64] = []
    private var masks: [UInt8] = []
    private var used = 0
    private var shift: UInt64 = 64

    var isEmpty: Bool { used == 0 }

    // MARK: The table

    @inline(__always)
    private func home(_ key: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    /// The slot holding granule `key`, if any.
    @inline(__always)
    private func find(_ key: UInt64) -> Int? {
        guard used > 0 else { return nil }
        let mask = keys.count - 1
        var i = home(key)
        while true {
            let k = keys[i]
            if k == key { return i }
            if k == 0 { return nil }
            i = (i + 1) & mask
        }
    }

    /// The slot of granule `key`, made (empty mask) when missing.
    private mutating func slot(_ key: UInt64) -> Int {
        if (used + 1) * 2 > keys.count { grow() }
        let mask = keys.count - 1
        var i = home(key)
        while true {
            let k = keys[i]
            if k == key { return i }
            if k == 0 {
                keys[i] = key
                values[i] = 0
                masks[i] = 0
                used += 1
                return i
            }
            i = (i + 1) & mask
        }
    }

    private mutating func grow() {
        let old = (keys, values, masks)
        let capacity = max(16, keys.count * 2)
        keys = Array(repeating: 0, count: capacity)
        values = Array(repeating: 0, count: capacity)
        masks = Array(repeating: 0, count: capacity)
        shift = UInt64(64 - capacity.trailingZeroBitCount)
        used = 0
        for i in old.0.indices where old.0[i] != 0 {
            let s = slot(old.0[i])
            values[s] = old.1[i]
            masks[s] = old.2[i]
        }
    }

    /// Empties slot `i`, moving later members of its probe run back so every look-up
    /// still reaches them.
    private mutating func vacate(_ i: Int) {
        let mask = keys.count - 1
        var hole = i
        var j = (i + 1) & mask
        while keys[j] != 0 {
            let h = home(keys[j])
            // Move j into the hole unless its home lies cyclically in (hole, j].
            let stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j)
            if !stays {
                keys[hole] = keys[j]
                values[hole] = values[j]
                masks[hole] = masks[j]
                hole = j
            }
            j = (j + 1) & mask
        }
        keys[hole] = 0
        used -= 1
    }

    // MARK: Bytes

    /// Calls `body(granuleKey, firstByte, byteCount, offsetInBytes)` for each granule
    /// that [address, address + count) touches.
    @inline(__always)
    private static func forEachGranule(_ address: UInt64, _ count: Int, _ body: (UInt64, Int, Int, Int) -> Void) {
        var done = 0
        while done < count {
            let a = address &+ UInt64(done)
            let first = Int(a & 7)
            let n = min(8 - first, count - done)
            body((a & ~7) | 1, first, n, done)
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

    /// Records `bytes` at `address` (newer bytes win).
    mutating func set(_ address: UInt64, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { set(address, $0) }
    }

    mutating func set(_ address: UInt64, _ p: UnsafeRawBufferPointer) {
        Self.forEachGranule(address, p.count) { key, first, n, offset in
            var v: UInt64 = 0
            for i in 0..<n { v |= UInt64(p[offset + i]) << (8 * UInt64(first + i)) }
            let bits = Self.bits(first, n)
            let s = slot(key)
            values[s] = (values[s] & ~Self.byteMask(bits)) | v
            masks[s] |= bits
        }
    }

    /// Forgets [address, address + count).
    mutating func remove(_ address: UInt64, count: Int) {
        Self.forEachGranule(address, count) { key, first, n, _ in
            guard let s = find(key) else { return }
            masks[s] &= ~Self.bits(first, n)
            if masks[s] == 0 { vacate(s) }
        }
    }

    /// Replaces the bytes of `bytes` (which start at `address`) that this overlay knows.
    func apply(to bytes: inout [UInt8], at address: UInt64) {
        guard used > 0 else { return }
        bytes.withUnsafeMutableBufferPointer { p in
            Self.forEachGranule(address, p.count) { key, first, n, offset in
                guard let s = find(key) else { return }
                let known = masks[s] & Self.bits(first, n)
                guard known != 0 else { return }
                let value = values[s]
                for i in 0..<n where known & (1 << UInt8(first + i)) != 0 {
                    p[offset + i] = UInt8(truncatingIfNeeded: value >> UInt64(8 * (first + i)))
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
        guard used > 0 else { return false }
        bytes.removeAll(keepingCapacity: true)
        var complete = true
        Self.forEachGranule(address, count) { key, first, n, _ in
            guard complete, let s = find(key) else { complete = false; return }
            let wanted = Self.bits(first, n)
            guard masks[s] & wanted == wanted else { complete = false; return }
            let value = values[s]
            for i in 0..<n { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(8 * (first + i)))) }
        }
        return complete
    }
}
