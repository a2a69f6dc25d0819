import Foundation
import SpliceBytes
import SpliceELF

/// Why a guest memory operation was refused.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible {
    case unaligned(name: String, address: UInt64, size: UInt64, pageSize: UInt64)
    case overlaps(name: String, address: UInt64, size: UInt64, existing: String)
    case unmapped(address: UInt64, length: Int)
    case outOfHostMemory(name: String, size: UInt64)
    case outOfAddressSpace(name: String, address: UInt64, size: UInt64)

    public var description: String {
        switch self {
        case let .unaligned(name, address, size, page):
            return "region \(name) at \(hex(address)) size \(hex(size)) is not aligned to the \(hex(page))-byte page"
        case let .overlaps(name, address, size, existing):
            return "region \(name) at \(hex(address)) size \(hex(size)) overlaps region \(existing)"
        case let .unmapped(address, length):
            return "guest range \(hex(address))..<\(hex(address &+ UInt64(length))) is not inside one mapped region"
        case let .outOfAddressSpace(name, address, size):
            return "region \(name) at \(hex(address)) size \(hex(size)) runs past the end of the address space"
        case let .outOfHostMemory(name, size):
            return "cannot allocate \(hex(size)) host bytes for region \(name)"
        }
    }
}


/// A contiguous range of guest physical memory backed by one host buffer. Every vCPU
/// emulator maps the same buffer (`uc_mem_map_ptr`), so a host write is seen by all of
/// them at once — but not by their translated-code caches, which is why code writes go
/// through the patching layer, never straight here.
public final class GuestRegion: @unchecked Sendable, CustomStringConvertible {
    public let name: String
    public let base: UInt64
    public let size: UInt64
    public let permissions: MemoryPermissions
    let host: UnsafeMutableRawPointer

    init(name: String, base: UInt64, size: UInt64, permissions: MemoryPermissions) throws {
        guard !base.addingReportingOverflow(size).overflow else {
            throw GuestMemoryError.outOfAddressSpace(name: name, address: base, size: size)
        }
        var p: UnsafeMutableRawPointer?
        guard size <= 1 << 40, posix_memalign(&p, 65536, Int(size)) == 0, let host = p else {
            throw GuestMemoryError.outOfHostMemory(name: name, size: size)
        }
        memset(host, 0, Int(size))
        self.name = name
        self.base = base
        self.size = size
        self.permissions = permissions
        self.host = host
    }

    deinit { free(host) }

    public var end: UInt64 { base + size }
    public func contains(_ address: UInt64, length: Int = 1) -> Bool {
        address >= base && length >= 0 && address &+ UInt64(length) <= end && address &+ UInt64(length) >= address
    }
    public var description: String { "\(name) [\(hex(base))..\(hex(end))) \(permissions)" }

    // Accessors for a range already known to be inside this region.
    fileprivate func holds(_ bytes: [UInt8], at address: UInt64) -> Bool {
        bytes.withUnsafeBytes { holds($0, at: address) }
    }
    fileprivate func holds(_ bytes: UnsafeRawBufferPointer, at address: UInt64) -> Bool {
        guard let b = bytes.baseAddress else { return true }
        return memcmp(host + Int(address - base), b, bytes.count) == 0
    }
    fileprivate func read(_ address: UInt64, count: Int, into bytes: inout [UInt8]) {
        bytes.removeAll(keepingCapacity: true)
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: host + Int(address - base), count: count))
    }
    fileprivate func write(_ address: UInt64, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { write(address, $0) }
    }
    fileprivate func write(_ address: UInt64, _ bytes: UnsafeRawBufferPointer) {
        guard let s = bytes.baseAddress else { return }
        (host + Int(address - base)).copyMemory(from: s, byteCount: bytes.count)
    }
}

extension GuestMemory {
    /// The regions as they are now, for many accesses in a row without taking the memory's
    /// lock for each (the patcher checks thousands of places per action). Take a new view
    /// after mapping or unmapping; a region unmapped meanwhile stays readable through it.
    public struct View {
        private let regions: [GuestRegion]
        fileprivate init(regions: [GuestRegion]) { self.regions = regions }

        public func region(containing address: UInt64, length: Int = 1) -> GuestRegion? {
            GuestMemory.region(in: regions, containing: address, length: length)
        }
        /// Whether guest memory at `address` holds exactly `bytes` (no copy).
        public func holds(_ bytes: [UInt8], at address: UInt64) -> Bool {
            region(containing: address, length: bytes.count)?.holds(bytes, at: address) ?? false
        }
        /// Reads into `bytes`, reusing its storage (no allocation when it has the capacity).
        public func read(_ address: UInt64, count: Int, into bytes: inout [UInt8]) throws {
            guard let r = region(containing: address, length: count) else {
                throw GuestMemoryError.unmapped(address: address, length: count)
            }
            r.read(address, count: count, into: &bytes)
        }
        public func read(_ address: UInt64, count: Int) throws -> [UInt8] {
            var bytes: [UInt8] = []
            try read(address, count: count, into: &bytes)
            return bytes
        }
        // Raw-buffer forms for the patcher's inline bytes (package only).
        package func holds(_ bytes: UnsafeRawBufferPointer, at address: UInt64) -> Bool {
            region(containing: address, length: bytes.count)?.holds(bytes, at: address) ?? false
        }
        package func write(_ address: UInt64, _ bytes: UnsafeRawBufferPointer) throws {
            guard let r = region(containing: address, length: bytes.count) else {
                throw GuestMemoryError.unmapped(address: address, length: bytes.count)
            }
            r.write(address, bytes)
        }
    }

    /// The region of `regions` (sorted by base, not overlapping) holding all of
    /// [address, address + length): only the last one starting at or below `address` can.
    fileprivate static func region(in regions: [GuestRegion], containing address: UInt64, length: Int) -> GuestRegion? {
        var low = 0, high = regions.count
        while low < high {
            let mid = (low + high) / 2
            if regions[mid].base <= address { low = mid + 1 } else { high = mid }
        }
        guard low > 0, regions[low - 1].contains(address, length: length) else { return nil }
        return regions[low - 1]
    }

    public func view() -> View {
        lock.lock(); defer { lock.unlock() }
        return View(regions: regions)
    }
}

/// The guest's memory: named regions, read and written from the host side.
public final class GuestMemory: @unchecked Sendable {
    public let pageSize: UInt64
    public private(set) var regions: [GuestRegion] = []
    fileprivate let lock = NSLock()
    /// The region of the last lookup: patching touches one or two regions many times.
    private var lastHit: GuestRegion?

    init(pageSize: UInt64) { self.pageSize = pageSize }

    func add(_ region: GuestRegion) throws {
        guard region.base % pageSize == 0, region.size % pageSize == 0, region.size > 0 else {
            throw GuestMemoryError.unaligned(name: region.name, address: region.base, size: region.size, pageSize: pageSize)
        }
        lock.lock(); defer { lock.unlock() }
        if let other = regions.first(where: { $0.base < region.end && region.base < $0.end }) {
            throw GuestMemoryError.overlaps(name: region.name, address: region.base, size: region.size,
                                            existing: other.description)
        }
        regions.append(region)
        regions.sort { $0.base < $1.base }
    }

    func remove(_ region: GuestRegion) {
        lock.lock(); defer { lock.unlock() }
        regions.removeAll { $0 === region }
        if lastHit === region { lastHit = nil }
    }

    /// The region holding all of [address, address + length).
    public func region(containing address: UInt64, length: Int = 1) -> GuestRegion? {
        lock.lock(); defer { lock.unlock() }
        if let r = lastHit, r.contains(address, length: length) { return r }
        let r = Self.region(in: regions, containing: address, length: length)
        if r != nil { lastHit = r }
        return r
    }

    /// Whether guest memory at `address` holds exactly `bytes` (no copy).
    public func holds(_ bytes: [UInt8], at address: UInt64) -> Bool {
        region(containing: address, length: bytes.count)?.holds(bytes, at: address) ?? false
    }

    /// Whether any part of [address, address + length) is mapped.
    public func overlapsMapped(_ address: UInt64, length: UInt64) -> GuestRegion? {
        lock.lock(); defer { lock.unlock() }
        return regions.first { $0.base < address + length && address < $0.end }
    }

    public func read(_ address: UInt64, count: Int) throws -> [UInt8] {
        guard let r = region(containing: address, length: count) else {
            throw GuestMemoryError.unmapped(address: address, length: count)
        }
        let start = r.host + Int(address - r.base)
        return [UInt8](UnsafeRawBufferPointer(start: start, count: count))
    }

    public func write(_ address: UInt64, _ bytes: [UInt8]) throws {
        guard let r = region(containing: address, length: bytes.count) else {
            throw GuestMemoryError.unmapped(address: address, length: bytes.count)
        }
        r.write(address, bytes)
    }

    public func readUInt64(_ address: UInt64) throws -> UInt64 {
        try read(address, count: 8).littleEndian(UInt64.self, at: 0)
    }

    public func writeUInt64(_ address: UInt64, _ value: UInt64) throws {
        try write(address, value.littleEndianBytes)
    }

    public func readUInt32(_ address: UInt64) throws -> UInt32 {
        try read(address, count: 4).littleEndian(UInt32.self, at: 0)
    }
}
