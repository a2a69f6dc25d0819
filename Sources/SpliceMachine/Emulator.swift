import CSpliceShims
import CUnicorn
import SpliceBytes
import SpliceELF

/// A Unicorn call that failed, with Unicorn's own message.
public struct UnicornError: Error, Equatable, CustomStringConvertible {
    public let operation: String
    public let code: UInt32
    public let message: String

    init(_ operation: String, _ err: uc_err) {
        self.operation = operation
        self.code = err.rawValue
        self.message = String(cString: uc_strerror(err))
    }

    public var description: String { "unicorn \(operation): \(message) (UC_ERR \(code))" }
}

@inline(__always) func check(_ err: uc_err, _ operation: @autoclosure () -> String) throws {
    if err != UC_ERR_OK { throw UnicornError(operation(), err) }
}

/// A Unicorn register number, as the arch backends name them.
public struct CPURegister: Hashable, Sendable, CustomStringConvertible {
    public let id: Int32
    public let name: String
    package init(_ id: UInt32, _ name: String) { self.id = Int32(bitPattern: id); self.name = name }
    public var description: String { name }
}

/// How to open a Unicorn emulator for an ISA (arch and mode numbers).
public struct EmulatorConfiguration: Sendable {
    let arch: uc_arch
    let mode: uc_mode
    package init(arch: uc_arch, mode: uc_mode) { self.arch = arch; self.mode = mode }
}

/// Memory permissions of a guest region.
public struct MemoryPermissions: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let read = MemoryPermissions(rawValue: UC_PROT_READ.rawValue)
    public static let write = MemoryPermissions(rawValue: UC_PROT_WRITE.rawValue)
    public static let execute = MemoryPermissions(rawValue: UC_PROT_EXEC.rawValue)
    public static let all: MemoryPermissions = [.read, .write, .execute]

    /// The permissions an ELF segment's p_flags ask for.
    public init(segment: ELFSegment) {
        var p: MemoryPermissions = []
        if segment.flags & ELFSegment.flagRead != 0 { p.insert(.read) }
        if segment.flags & ELFSegment.flagWrite != 0 { p.insert(.write) }
        if segment.flags & ELFSegment.flagExecute != 0 { p.insert(.execute) }
        self = p
    }
    public var description: String {
        (contains(.read) ? "r" : "-") + (contains(.write) ? "w" : "-") + (contains(.execute) ? "x" : "-")
    }
}

/// One Unicorn emulator. It is owned by exactly one `VCPU` and must only be driven from
/// the thread that runs that vCPU (Unicorn emulators are not thread-safe; only
/// `requestStop` may be called from elsewhere).
public final class Emulator {
    package let handle: OpaquePointer

    package init(_ configuration: EmulatorConfiguration) throws {
        var uc: OpaquePointer?
        try check(uc_open(configuration.arch, configuration.mode, &uc), "uc_open")
        handle = uc!
    }

    deinit { uc_close(handle) }

    package func read(_ register: CPURegister) throws -> UInt64 {
        var value: UInt64 = 0
        try check(uc_reg_read(handle, register.id, &value), "uc_reg_read(\(register))")
        return value
    }

    package func write(_ register: CPURegister, _ value: UInt64) throws {
        var v = value
        try check(uc_reg_write(handle, register.id, &v), "uc_reg_write(\(register))")
    }

    package func mapHostMemory(_ pointer: UnsafeMutableRawPointer, at address: UInt64, size: Int,
                               permissions: MemoryPermissions) throws {
        try check(uc_mem_map_ptr(handle, address, size, permissions.rawValue, pointer),
                  "uc_mem_map_ptr(\(hex(address)), \(size))")
    }

    package func unmap(_ address: UInt64, size: Int) throws {
        try check(uc_mem_unmap(handle, address, size), "uc_mem_unmap(\(hex(address)))")
    }

    /// Runs from `begin` until the PC reaches `until`, or the timeout (µs, 0 = none), or
    /// `count` instructions (0 = no limit) have executed. Returns Unicorn's status.
    package func start(begin: UInt64, until: UInt64, timeoutMicroseconds: UInt64, count: Int) -> uc_err {
        uc_emu_start(handle, begin, until, timeoutMicroseconds, count)
    }

    /// Asks a running emulator to stop; safe from any thread.
    package func requestStop() { uc_emu_stop(handle) }

    package func pageSize() throws -> UInt32 {
        var size: UInt32 = 0
        try check(splice_ctl_get_page_size(handle, &size), "uc_ctl(UC_CTL_UC_PAGE_SIZE)")
        return size
    }

    /// Drops translated blocks covering [begin, end) on this emulator.
    package func removeTranslations(from begin: UInt64, to end: UInt64) throws {
        try check(splice_ctl_remove_cache(handle, begin, end), "uc_ctl(UC_CTL_TB_REMOVE_CACHE)")
    }

    /// Drops every translated block. Slow in 2.0.1 (0.14-1.9 s measured here): prefer
    /// removeTranslations over the code ranges.
    package func flushTranslations() throws {
        try check(splice_ctl_flush_tb(handle), "uc_ctl(UC_CTL_TB_FLUSH)")
    }

    package func deleteHook(_ hook: uc_hook) { uc_hook_del(handle, hook) }

    /// The emulator's saved-context blob, for bring-up code that must change CPU state
    /// Unicorn does not let `uc_reg_write` reach. Valid only inside `body`.
    package func withContextBlob<T>(_ body: (UnicornContext) throws -> T) throws -> T {
        let context = try UnicornContext(emulator: self)
        return try body(context)
    }
}

/// A saved CPU context of one emulator (never restore it into another emulator: the blob
/// holds per-emulator pointers).
package final class UnicornContext {
    private let emulator: Emulator
    private var context: OpaquePointer?
    package let size: Int

    init(emulator: Emulator) throws {
        self.emulator = emulator
        try check(uc_context_alloc(emulator.handle, &context), "uc_context_alloc")
        size = uc_context_size(emulator.handle)
    }

    deinit { if let c = context { uc_context_free(c) } }

    package func save() throws { try check(uc_context_save(emulator.handle, context), "uc_context_save") }
    package func restore() throws { try check(uc_context_restore(emulator.handle, context), "uc_context_restore") }

    /// The blob's bytes (header and CPU state), as `uc_context_size` reports them.
    package var bytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(context!), count: size)
    }
}
