import Foundation
import SpliceBytes
import SpliceMachine
import SpliceELF
import SplicePatching

/// The second engine (Linux's text_poke_bp): patches a machine whose vCPUs run free, without ever
/// stopping them together. Each write of the backend's non-stop sequence is one store;
/// each sync has every vCPU drop its translated code for what changed, at its own next
/// safe point, and run on (`MachineRunner.sync`). On x86-64 that is the int3 protocol:
/// while the trap is armed a vCPU that hits it continues at the new code. On ppc64le every
/// store is one aligned word, in the order that keeps the odd-TOC mark consistent, and a
/// revert changes the runtime's table entry only after a grace period (a sync: every vCPU
/// has been at its safe point since, so none is still between a removed call and its read).
///
/// Before the first store every vCPU must answer a sync (walking its stack for the
/// functions an apply replaces): one that does not (interrupts off) fails the action with
/// nothing written, and so does a function live on some vCPU's stack. If a later sync cannot complete, every
/// store already made is taken back and the action fails: memory is as before.
public final class NonStopEngine: PatchEngine {
    public let runner: MachineRunner
    public let patcher: LivePatcher
    /// How long one sync may take.
    public var timeout: TimeInterval = 1
    /// How long an action waits for the functions it replaces to leave every stack (Linux's
    /// transition stalls while a task sleeps in one, and retries): the stack walk is
    /// repeated every `stackRetryInterval` until none is live, or this passes and the action
    /// fails with `StackCheck.FunctionLive` (-EBUSY: try again). 0: no wait.
    public var stackWait: TimeInterval = 0
    public var stackRetryInterval: TimeInterval = 0.005
    /// How many stack walks found a function live and were repeated (all actions).
    public private(set) var stackRetries = 0

    /// What the last action did.
    public struct Trace: Sendable {
        public var writes = 0
        public var syncs = 0
        public var grace = 0
        public var trapsArmed = 0
        public var nanoseconds: UInt64 = 0
    }
    public private(set) var lastTrace = Trace()
    /// Every action's trace added up, and how many actions there were.
    public private(set) var totals = Trace()
    public private(set) var actions = 0

    private var changed: [(UInt64, Int)] = []
    private var trace = Trace()

    public init(runner: MachineRunner, patcher: LivePatcher) {
        self.runner = runner
        self.patcher = patcher
    }

    /// Applies `batch` while the vCPUs run. First every vCPU, at its safe point, walks its
    /// own stack (the xSplice design: a function being replaced "is expected not to be on any CPU
    /// stack"): if one of the batch's functions is live anywhere the apply is refused with
    /// `StackCheck.FunctionLive`, the frames named, nothing written.
    @discardableResult
    public func apply(batch: [LivePatcher.BatchItem]) throws -> [ActiveRedirect] {
        let functions = try batch.map { try patcher.image.function(named: $0.function) }
        return try run(checkingStacksFor: functions) { try patcher.applyNonStop(batch: batch) { try self.handle($0) } }
    }

    /// Reverts redirect `id` while the vCPUs run.
    public func revert(id: Int) throws {
        try run(checkingStacksFor: []) { try patcher.revertNonStop(id: id) { try self.handle($0) } }
    }

    /// REPLACE while the vCPUs run (`LivePatcher.replaceNonStop`): a function both the old
    /// and the new redirects patch goes from the old code to the new directly. The
    /// functions of `batch` are checked on every stack first, as for an apply.
    @discardableResult
    public func replace(reverting ids: [Int], with batch: [LivePatcher.BatchItem]) throws -> [ActiveRedirect] {
        let functions = try batch.map { try patcher.image.function(named: $0.function) }
        return try run(checkingStacksFor: functions) {
            try patcher.replaceNonStop(reverting: ids, with: batch) { try self.handle($0) }
        }
    }

    /// A hook runs on one vCPU while it is stopped at its safe point (its registers saved
    /// and restored); the others only pass theirs. With no vCPU running, on vCPU 0 here.
    public func callGuest(_ entry: CallEntry, _ arguments: [Int64]) throws -> Int64 {
        let machine = runner.machine
        return try runner.onOneVCPU(timeout: timeout) { index in
            try machine.callPreserving(entry, arguments, vcpu: index).signedValue
        }
    }

    private func run<T>(checkingStacksFor functions: [ELFSymbol], _ body: () throws -> T) throws -> T {
        let start = DispatchTime.now().uptimeNanoseconds
        trace = Trace()
        changed = []
        defer {
            runner.disarmTraps()
            trace.nanoseconds = DispatchTime.now().uptimeNanoseconds - start
            lastTrace = trace
            totals.writes += trace.writes
            totals.syncs += trace.syncs
            totals.grace += trace.grace
            totals.trapsArmed += trace.trapsArmed
            totals.nanoseconds += trace.nanoseconds
            actions += 1
        }
        let machine = runner.machine, code = patcher.image.functionMap
        let deadline = Date().addingTimeInterval(stackWait)
        while true {
            trace.syncs += 1
            let found = NSLock()
            var live: [StackCheck.LiveFrame] = [], walkError: Error?
            try runner.sync(dropping: [], timeout: timeout, inspect: functions.isEmpty ? nil : { index, _ in
                let result = Result { try StackCheck.liveFrames(of: functions, machine: machine, vcpus: [index], code: code) }
                found.lock(); defer { found.unlock() }
                switch result {
                case let .success(frames): live += frames
                case let .failure(error): walkError = error
                }
            })
            if let walkError { throw walkError }
            if live.isEmpty { break }
            guard Date() < deadline else {
                throw StackCheck.FunctionLive(frames: live.sorted { ($0.vcpu, $0.depth) < ($1.vcpu, $1.depth) })
            }
            stackRetries += 1
            Thread.sleep(forTimeInterval: stackRetryInterval)
        }
        return try body()
    }

    private func handle(_ step: NonStopStep) throws {
        switch step {
        case let .write(address, bytes, _):
            changed.append((address, bytes.count))
            trace.writes += 1
        case .sync:
            let ranges = changed
            changed = []
            trace.syncs += 1
            try runner.sync(dropping: ranges, timeout: timeout)
        case let .trapArmed(address, final):
            guard let target = patcher.backend.trapRedirect(at: address, final: final) else {
                throw PatchError.noBackend("a trap at \(hex(address)) with no place to send a vCPU")
            }
            runner.armTrap(at: address, continueAt: target)
            trace.trapsArmed += 1
        case .quiesce:
            trace.grace += 1
            try runner.sync(dropping: [], timeout: timeout)
        }
    }
}
