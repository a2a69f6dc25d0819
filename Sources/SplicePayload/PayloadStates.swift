import Foundation
import SpliceMachine

/// The states (Linux's klp_state) of the applied payloads, for guest code: which payload
/// holds state `id` now. A payload's pre-apply hook asks `splice_state_prev(id)` to take a
/// state over from the payload it replaces (its saved data moves to the new payload's
/// record, and nothing is undone in between). The loader keeps the table; the host call
/// reads it from any vCPU's thread.
public final class PayloadStates: @unchecked Sendable {
    private let lock = NSLock()
    private var records: [UInt64: UInt64] = [:]

    public init() {}

    /// Guest address of the state record with `id` of the newest applied payload that has one.
    public func record(of id: UInt64) -> UInt64? {
        lock.lock(); defer { lock.unlock() }
        return records[id]
    }

    /// Replaces the table: state id → guest address of its record.
    public func set(_ table: [UInt64: UInt64]) {
        lock.lock(); defer { lock.unlock() }
        records = table
    }

    ///     struct splice_state *splice_state_prev(unsigned long id);   // NULL if no applied payload has it
    public var hostFunctions: [HostCalls.Function] {
        [.init(name: "splice_state_prev", arguments: 1) { [self] a in record(of: a[0]) ?? 0 }]
    }
}
