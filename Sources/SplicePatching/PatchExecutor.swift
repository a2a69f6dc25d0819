import SpliceMachine

/// Where a patch's writes happen. Everything a patch needs is prepared before `execute`
/// is called; `work` only writes (and verifies) guest memory, reporting each range of code
/// it changed, and the executor makes every vCPU drop its translated code for those
/// ranges before that vCPU runs again.
public protocol PatchExecutor: AnyObject {
    func execute(_ work: (_ changed: (UInt64, Int) -> Void) throws -> Void) throws

    /// Runs guest code (a payload hook) where it is safe: directly on vCPU 0 when nothing
    /// runs, or inside a rendezvous on the master vCPU, its state preserved.
    func callGuest(_ entry: CallEntry, _ arguments: [Int64]) throws -> Int64
}

/// For a machine whose vCPUs are not running: write, then drop the ranges on every vCPU's emulator.
public final class DirectExecutor: PatchExecutor {
    public let machine: Machine
    public init(machine: Machine) { self.machine = machine }

    public func execute(_ work: (_ changed: (UInt64, Int) -> Void) throws -> Void) throws {
        var ranges: [(UInt64, Int)] = []
        defer { for (a, n) in ranges { try? machine.codeChanged(at: a, length: n) } }
        try work { ranges.append(($0, $1)) }
    }

    public func callGuest(_ entry: CallEntry, _ arguments: [Int64]) throws -> Int64 {
        try machine.call(entry, arguments, vcpu: 0, countInstructions: false, limits: .guestCall).signedValue
    }
}
