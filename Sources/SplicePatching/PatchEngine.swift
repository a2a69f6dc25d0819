import SpliceMachine

/// How a payload's actions reach a machine: the redirects of an apply, revert or REPLACE
/// and the guest calls of its hooks. `LivePatcher` is the rendezvous engine (each action
/// is one execution of its executor: all vCPUs stopped together); the runtime's
/// `NonStopEngine` patches while they run. A loader or service works with either.
public protocol PatchEngine: AnyObject {
    /// What it writes through, and keeps the table of active redirects.
    var patcher: LivePatcher { get }
    /// Applies `batch`: all of it, or nothing.
    func apply(batch: [LivePatcher.BatchItem]) throws -> [ActiveRedirect]
    /// Reverts the redirects `ids` and applies `batch`: all of it, or nothing. With an
    /// empty batch, a revert of several redirects at once.
    func replace(reverting ids: [Int], with batch: [LivePatcher.BatchItem]) throws -> [ActiveRedirect]
    /// Runs guest code (a hook) where it is safe while the machine runs.
    func callGuest(_ entry: CallEntry, _ arguments: [Int64]) throws -> Int64
}

extension LivePatcher: PatchEngine {
    public var patcher: LivePatcher { self }

    public func callGuest(_ entry: CallEntry, _ arguments: [Int64]) throws -> Int64 {
        try executor.callGuest(entry, arguments)
    }
}
