import Foundation
import SpliceMachine
import SplicePatching

/// Shadow variables (the xSplice prototype: "a minimal bit of infrastructure to attach a new variable
/// to an existing data structure"): a patch that needs a field an existing guest object
/// lacks attaches storage to the object's address under a numeric id, and finds it again
/// later, from any vCPU and from later payloads (REPLACE keeps the table). The storage is
/// guest memory, zeroed when attached, taken from a heap region of its own.
///
/// Guest code calls it through host calls (`HostCalls`), by these names:
///
///     void *splice_shadow_attach(void *object, unsigned long id, unsigned long size);        // NULL if present or full
///     void *splice_shadow_get(void *object, unsigned long id);                               // NULL if absent
///     void *splice_shadow_get_or_attach(void *object, unsigned long id, unsigned long size); // NULL if full
///     void  splice_shadow_free(void *object, unsigned long id);
///     void  splice_shadow_free_all(unsigned long id);                                        // every object
///     void *splice_shadow_any(unsigned long id);   // an object that has shadow id, NULL if none (free-all with a destructor)
///
/// The host side is this class's methods, with the same meaning. The host calls no
/// constructor or destructor: storage starts zeroed, and Linux's ctor/dtor forms
/// (`splice_shadow_alloc`, `_get_or_alloc`, `_free_with`, `_free_all_with` in
/// samples/src/splice_livepatch.h) run them in the guest around these calls, which is why
/// `splice_shadow_any` exists. Thread-safe: vCPUs call it concurrently.
public final class ShadowVariables: @unchecked Sendable {
    public struct Variable: Equatable, Sendable {
        public var object: UInt64
        public var id: UInt64
        public var address: UInt64
        public var size: Int
    }

    private struct Key: Hashable {
        let object: UInt64
        let id: UInt64
    }

    /// Storage granularity (and alignment) in guest memory.
    public static let alignment = 16
    /// Size of the heap region (the most all shadow variables of a machine may take).
    public static let heapSize: UInt64 = 0x10_0000

    public let heap: GuestRegion
    private let memory: GuestMemory
    private let lock = NSLock()
    private var variables: [Key: Variable] = [:]
    /// Free ranges of the heap, (offset, size), sorted by offset, never adjacent.
    private var free: [(offset: Int, size: Int)]

    /// Maps the heap region (while no vCPU runs).
    public init(space: CodeSpace) throws {
        heap = try space.mapFree(name: "shadow", size: Self.heapSize, near: space.defaultBase, permissions: [.read, .write])
        memory = space.machine.memory
        free = [(0, Int(heap.size))]
    }

    /// Attaches `size` zeroed bytes to (`object`, `id`). Nil if that pair already has a
    /// variable, if `size` is 0, or if the heap has no room.
    public func attach(object: UInt64, id: UInt64, size: Int) -> UInt64? {
        lock.lock(); defer { lock.unlock() }
        guard variables[Key(object: object, id: id)] == nil else { return nil }
        return allocate(object: object, id: id, size: size)
    }

    /// The storage attached to (`object`, `id`), or nil.
    public func get(object: UInt64, id: UInt64) -> UInt64? {
        lock.lock(); defer { lock.unlock() }
        return variables[Key(object: object, id: id)]?.address
    }

    /// The storage attached to (`object`, `id`), attaching `size` zeroed bytes first if
    /// there is none. Nil only when it had to attach and could not.
    public func getOrAttach(object: UInt64, id: UInt64, size: Int) -> UInt64? {
        lock.lock(); defer { lock.unlock() }
        if let v = variables[Key(object: object, id: id)] { return v.address }
        return allocate(object: object, id: id, size: size)
    }

    /// Detaches and frees (`object`, `id`)'s storage; nothing if there is none.
    public func free(object: UInt64, id: UInt64) {
        lock.lock(); defer { lock.unlock() }
        if let v = variables.removeValue(forKey: Key(object: object, id: id)) { release(v) }
    }

    /// Some object that has a variable `id` (the lowest address), or nil: what a guest
    /// free-all with a destructor walks.
    public func anyObject(id: UInt64) -> UInt64? {
        lock.lock(); defer { lock.unlock() }
        return variables.keys.filter { $0.id == id }.map(\.object).min()
    }

    /// Frees the variables with `id` of every object.
    public func freeAll(id: UInt64) {
        lock.lock(); defer { lock.unlock() }
        for (k, v) in variables where k.id == id {
            variables[k] = nil
            release(v)
        }
    }

    /// Every attached variable, by object then id.
    public var all: [Variable] {
        lock.lock(); defer { lock.unlock() }
        return variables.values.sorted { ($0.object, $0.id) < ($1.object, $1.id) }
    }

    /// Bytes of the heap not attached to anything.
    public var freeBytes: Int {
        lock.lock(); defer { lock.unlock() }
        return free.reduce(0) { $0 + $1.size }
    }

    /// The guest functions above, as host calls.
    public var hostFunctions: [HostCalls.Function] {
        @Sendable func ptr(_ a: UInt64?) -> UInt64 { a ?? 0 }
        @Sendable func size(_ s: UInt64) -> Int { s > Self.heapSize ? Int(Self.heapSize) + 1 : Int(s) } // too big: refused
        return [
            .init(name: "splice_shadow_attach", arguments: 3) { [self] a in ptr(attach(object: a[0], id: a[1], size: size(a[2]))) },
            .init(name: "splice_shadow_get", arguments: 2) { [self] a in ptr(get(object: a[0], id: a[1])) },
            .init(name: "splice_shadow_get_or_attach", arguments: 3) { [self] a in
                ptr(getOrAttach(object: a[0], id: a[1], size: size(a[2])))
            },
            .init(name: "splice_shadow_free", arguments: 2) { [self] a in free(object: a[0], id: a[1]); return 0 },
            .init(name: "splice_shadow_free_all", arguments: 1) { [self] a in freeAll(id: a[0]); return 0 },
            .init(name: "splice_shadow_any", arguments: 1) { [self] a in ptr(anyObject(id: a[0])) },
        ]
    }

    // MARK: The heap (lock held)

    private func allocate(object: UInt64, id: UInt64, size: Int) -> UInt64? {
        guard size > 0, size <= Int(heap.size) else { return nil }
        let rounded = (size + Self.alignment - 1) / Self.alignment * Self.alignment
        guard let i = free.firstIndex(where: { $0.size >= rounded }) else { return nil }
        let offset = free[i].offset
        if free[i].size == rounded { free.remove(at: i) } else { free[i] = (offset + rounded, free[i].size - rounded) }
        let address = heap.base + UInt64(offset)
        try? memory.write(address, [UInt8](repeating: 0, count: rounded))
        variables[Key(object: object, id: id)] = Variable(object: object, id: id, address: address, size: rounded)
        return address
    }

    private func release(_ v: Variable) {
        let offset = Int(v.address - heap.base)
        let i = free.firstIndex { $0.offset > offset } ?? free.count
        free.insert((offset, v.size), at: i)
        // Merge with the neighbours.
        if i + 1 < free.count, free[i].offset + free[i].size == free[i + 1].offset {
            free[i].size += free[i + 1].size
            free.remove(at: i + 1)
        }
        if i > 0, free[i - 1].offset + free[i - 1].size == free[i].offset {
            free[i - 1].size += free[i].size
            free.remove(at: i)
        }
    }
}
