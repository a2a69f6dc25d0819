import SpliceMachine

/// Where a patch's writes happen. Everything a patch needs is prepared before `execute`
/// is called; `work` only writes (and verifies) guest memory, reporting each range of code
/// it changed, and the executor makes every vCPU drop its translated code for those
/// ranges before that vCPU runs again.
public protocol PatchExecutor: AnyObject {
    func execute(_ work: (_ changed: (UInt64, Int) -> Void) throws -> Void) throws
}

/// For a machine whose vCPUs are not running: write, then drop the ranges on every engine.
public final class DirectExecutor: PatchExecutor {
    public let machine: Machine
    public init(machine: Machine) { self.machine = machine }

    public func execute(_ work: (_ changed: (UInt64, Int) -> Void) throws -> Void) throws {
        var ranges: [(UInt64, Int)] = []
        defer { for (a, n) in ranges { try? machine.codeChanged(at: a, length: n) } }
        try work { ranges.append(($0, $1)) }
    }
}
