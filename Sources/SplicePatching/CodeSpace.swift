import SpliceMachine

/// A piece of executable guest memory handed out by a `CodeSpace`.
public struct CodeAllocation: Equatable, Sendable {
    public var address: UInt64
    public var size: Int
    public var region: String
}

/// Executable guest memory for code the patcher adds: new function bodies, far-jump
/// slots, runtime code. Regions are mapped read+execute for the guest (the host writes
/// through the shared buffer); an allocation can be asked to lie within `reach` bytes of
/// an address, which is how far-jump slots stay within a rel32 (or bl) of their site.
public final class CodeSpace {
    public let machine: Machine
    /// Where regions go when no address or neighbourhood is asked for.
    public let defaultBase: UInt64
    public static let regionSize: UInt64 = 0x1_0000

    private final class Arena {
        let region: GuestRegion
        var next: UInt64
        var free: [(address: UInt64, size: Int)] = []
        var live = 0
        init(_ region: GuestRegion) { self.region = region; next = region.base }

        func take(_ address: UInt64, _ size: Int) -> CodeAllocation {
            live += 1
            return CodeAllocation(address: address, size: size, region: region.name)
        }
    }

    private var arenas: [Arena] = []
    /// Set while vCPUs run (by the LivePatcher): mapping, unmapping and filling then happen
    /// with every vCPU stopped, since every vCPU's emulator maps the same regions.
    public weak var executor: PatchExecutor?

    /// Runs `body` directly, or inside the executor when vCPUs may be running.
    func stopped<T>(_ body: () throws -> T) throws -> T {
        guard let executor else { return try body() }
        var result: T?
        try executor.execute { _ in result = try body() }
        return result!
    }

    public init(machine: Machine) {
        self.machine = machine
        defaultBase = machine.architecture.layout.codeBase
    }

    /// Allocates `size` bytes (16-byte aligned). With `near`, every byte of the
    /// allocation lies within `reach` of `near`.
    public func allocate(size: Int, near: UInt64? = nil, reach: UInt64 = .max) throws -> CodeAllocation {
        precondition(size > 0 && UInt64(size) <= Self.regionSize)
        let fits = { (a: UInt64) -> Bool in
            guard let n = near else { return true }
            let end = a + UInt64(size)
            return (a >= n ? a - n : n - a) <= reach && (end >= n ? end - n : n - end) <= reach
        }
        for arena in arenas {
            if let i = arena.free.firstIndex(where: { $0.size >= size && fits($0.address) }) {
                let block = arena.free.remove(at: i)
                return arena.take(block.address, block.size)
            }
            let a = arena.next
            if a + UInt64(size) <= arena.region.end && fits(a) {
                arena.next = (a + UInt64(size) + 15) & ~15
                return arena.take(a, size)
            }
        }
        let arena = try newArena(near: near ?? defaultBase, reach: near == nil ? .max : reach)
        let a = arena.next
        guard fits(a) else { throw PatchError.noCodeSpaceInReach(near: near ?? 0, reach: reach, size: size) }
        arena.next = (a + UInt64(size) + 15) & ~15
        return arena.take(a, size)
    }

    /// Maps a region for code at exactly `address` (page-aligned) and allocates from it.
    public func allocate(size: Int, at address: UInt64) throws -> CodeAllocation {
        let arena = Arena(try stopped { try machine.map(name: "code@\(String(address, radix: 16))", at: address,
                                                        size: Self.regionSize, permissions: [.read, .execute]) })
        arenas.append(arena)
        arena.next = (address + UInt64(size) + 15) & ~15
        return arena.take(address, size)
    }

    /// Returns an allocation. Its bytes are filled with the ISA's trap, so a stray jump
    /// into released code stops instead of running stale instructions; a region left
    /// with no allocations is unmapped, so the guest's memory map is as it was before.
    public func release(_ allocation: CodeAllocation) {
        guard let index = arenas.firstIndex(where: { $0.region.name == allocation.region }) else { return }
        let arena = arenas[index]
        arena.live -= 1
        if arena.live == 0 {
            try? stopped { machine.unmap(arena.region) }
            arenas.remove(at: index)
            return
        }
        let trap = machine.architecture.trapInstruction
        let fill = (0..<(allocation.size / trap.count)).flatMap { _ in trap }
        try? stopped {
            try machine.memory.write(allocation.address, fill + [UInt8](repeating: 0, count: allocation.size - fill.count))
            try machine.codeChanged(at: allocation.address, length: allocation.size)
        }
        arena.free.append((allocation.address, allocation.size))
    }

    /// The regions this space has mapped.
    public var regions: [GuestRegion] { arenas.map(\.region) }

    private func newArena(near: UInt64, reach: UInt64) throws -> Arena {
        let region = try mapFree(name: "code", size: Self.regionSize, near: near, reach: reach, permissions: [.read, .execute])
        let arena = Arena(region)
        arenas.append(arena)
        return arena
    }

    /// Maps a new region of `size` bytes (rounded up to 64 KiB) at a free address as
    /// close to `near` as possible (above it first, then below), within `reach`. For
    /// runtime data such as lookup tables and per-vCPU stacks; it is not released.
    public func mapFree(name: String, size requested: UInt64, near: UInt64, reach: UInt64 = 1 << 40,
                        permissions: MemoryPermissions) throws -> GuestRegion {
        let size = Self.roundUp(requested)
        let base = try findFree(size: size, near: near, reach: reach)
        return try stopped { try machine.map(name: "\(name)@\(String(base, radix: 16))", at: base, size: size, permissions: permissions) }
    }

    public static func roundUp(_ size: UInt64) -> UInt64 { (size + regionSize - 1) / regionSize * regionSize }

    /// A free, 64 KiB-aligned guest range of `size` bytes as close to `near` as possible
    /// (above it first, then below), within `reach`. Maps nothing.
    public func findFree(size: UInt64, near: UInt64, reach: UInt64 = 1 << 40) throws -> UInt64 {
        let unit = Self.regionSize
        let start = (near + unit - 1) / unit * unit
        let steps = min(reach / unit, 1 << 16)
        for step in 0...steps {
            for candidate in [start &+ step * unit, start &- (step + 1) * unit] {
                let distance = candidate >= near ? candidate + size - near : near - candidate
                guard distance <= reach, candidate != 0, candidate &+ size > candidate else { continue }
                if machine.memory.overlapsMapped(candidate, length: size) == nil { return candidate }
            }
        }
        throw PatchError.noCodeSpaceInReach(near: near, reach: reach, size: Int(size))
    }
}
