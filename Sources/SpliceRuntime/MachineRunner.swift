import CSpliceShims
import Foundation
import SpliceMachine

/// Runs a machine's vCPUs free, each on its own host thread (one Unicorn emulator per
/// thread), over the shared guest memory. Each vCPU calls one guest function (a workload
/// loop); it stops at the return-to-guest safe point whenever the rendezvous has work or
/// a non-stop sync is asked of it, and otherwise runs until its function returns, it
/// faults, or `stop()` is called.
public final class MachineRunner {
    public enum State: Equatable, Sendable {
        case running, returned(UInt64), faulted(GuestFault), stopped
    }

    public let machine: Machine
    public let rendezvous: Rendezvous
    /// The guest's return-to-guest function: the only place a vCPU joins a rendezvous.
    public let safePoint: UInt64
    private let lock = NSLock()
    private var states: [Int: State] = [:]
    private var stopping: Int32 = 0
    private var threads: [Thread] = []
    private var exited = DispatchGroup()

    /// `safePoint`: the address of the guest's return-to-guest function.
    public init(machine: Machine, safePoint: UInt64, rendezvous: Rendezvous = Rendezvous()) throws {
        self.machine = machine
        self.rendezvous = rendezvous
        self.safePoint = safePoint
        rendezvous.machine = machine
        for cpu in machine.vcpus { try cpu.installSafePoint(at: safePoint, pending: rendezvous.pending) }
    }

    public func state(of vcpu: Int) -> State {
        lock.lock(); defer { lock.unlock() }
        return states[vcpu] ?? .stopped
    }

    /// Starts vCPU `index` calling `entry` with `arguments` (the ISA's ABI, as a call).
    public func start(vcpu index: Int, entry: CallEntry, arguments: [Int64]) throws {
        let cpu = try machine.vcpu(index)
        // Code may have changed while this vCPU was not running (no rendezvous or sync
        // reached it): it starts from fresh translations.
        try cpu.dropTranslatedCode()
        syncLock.lock(); undropped[index] = nil; syncLock.unlock()
        try machine.architecture.prepareCall(cpu.emulator, memory: machine.memory, entry: entry,
                                             arguments: arguments.map { UInt64(bitPattern: $0) },
                                             stackTop: cpu.stackTop, returnAddress: cpu.returnSentinel)
        lock.lock()
        states[index] = .running
        lock.unlock()
        rendezvous.vcpuStarted()
        exited.enter()
        let thread = Thread { [self] in
            var pc = entry.address
            var final = State.stopped
            while true {
                if splice_flag_load(&stopping) != 0 { final = .stopped; break }
                switch cpu.runUntilStopped(from: pc, until: cpu.returnSentinel) {
                case .returned:
                    final = .returned((try? cpu.read(machine.architecture.returnValueRegister)) ?? 0)
                case let .fault(f):
                    if case .interrupt = f.kind, let resume = resumeAfterTrap(f.pc, cpu) {
                        pc = resume
                        continue
                    }
                    final = .faulted(f)
                case let .stopped(at):
                    pc = at
                    // Only `stop()` stops a vCPU from another thread (a resume after such a
                    // stop is not exact in Unicorn 2.0.1: probes/async_stop.c); rendezvous
                    // and syncs stop it at its safe point, from its own code hook.
                    if at == safePoint && splice_flag_load(rendezvous.pending) != 0 {
                        rendezvous.participate(index) { ranges in
                            for (a, n) in ranges { try? cpu.dropTranslations(at: a, length: n) }
                        }
                    }
                    if at == safePoint && cpu.takeSafePointStopRequest() { acknowledgeSync(index, cpu) }
                    continue
                }
                break
            }
            lock.lock()
            states[index] = final
            lock.unlock()
            rendezvous.vcpuExited(index)
            exited.leave()
        }
        thread.name = "vcpu\(index)"
        thread.stackSize = 8 << 20
        threads.append(thread)
        thread.start()
    }

    /// Stops every vCPU (wherever it is) and waits for the threads to finish.
    public func stop() {
        splice_flag_store(&stopping, 1)
        // A stop request made just before an emulator (re)starts is lost: repeat until done.
        while exited.wait(timeout: .now() + .milliseconds(2)) == .timedOut {
            for cpu in machine.vcpus { cpu.requestStop() }
        }
        threads = []
        splice_flag_store(&stopping, 0)
    }

    // MARK: Non-stop patching (Linux's text_poke_bp): syncs and traps

    private let syncLock = NSCondition()
    private var syncGeneration = 0
    /// Per vCPU: the last sync it acknowledged, and the ranges it must still drop (every
    /// range changed since; a vCPU late for one sync drops them all at the next).
    private var acknowledged: [Int: Int] = [:]
    private var undropped: [Int: [(UInt64, Int)]] = [:]
    private var inspection: ((Int, VCPU) -> Void)?
    /// Armed traps: where a vCPU that hits one continues.
    private var traps: [UInt64: UInt64] = [:]
    private var trapsTakenCount = 0
    private var staleTrapsCount = 0

    /// How many times a vCPU was sent on from an armed trap, and how many times one hit a
    /// trap that had already been taken back (it re-translated and ran on).
    public var trapsTaken: Int { syncLock.lock(); defer { syncLock.unlock() }; return trapsTakenCount }
    public var staleTraps: Int { syncLock.lock(); defer { syncLock.unlock() }; return staleTrapsCount }

    /// Why a non-stop sync could not complete.
    public struct SyncTimeout: Error, CustomStringConvertible {
        public var vcpus: [Int]
        public var milliseconds: Int
        public var description: String {
            "non-stop sync: vCPU \(vcpus.map(String.init).joined(separator: ", ")) did not pass its safe point within \(milliseconds) ms"
        }
    }

    /// A sync (the IPI of Linux's text_poke_bp): every running vCPU, at its next return-to-guest safe point,
    /// drops its translated code for `ranges` on its own thread and runs on at once; no
    /// vCPU waits for another. Returns when all have done so, or throws `SyncTimeout`
    /// (the ones that have not will still drop the ranges when they get there).
    ///
    /// Why the safe point and not "wherever it is": a vCPU stopped from another thread
    /// cannot be resumed exactly in Unicorn 2.0.1 (probes/async_stop.c). The safe point is
    /// also where a real CPU would take the IPI with interrupts on, and a vCPU there is in
    /// no patchable function: one that acknowledges has left whatever old code it was in
    /// when the sync began, and can only enter the changed code afresh.
    ///
    /// `inspect`, if given, is run by each vCPU on its own thread while stopped at its safe
    /// point for this sync (its registers and stack can be read there).
    public func sync(dropping ranges: [(UInt64, Int)], timeout: TimeInterval = 1,
                     inspect: ((Int, VCPU) -> Void)? = nil) throws {
        syncLock.lock()
        syncGeneration += 1
        let generation = syncGeneration
        inspection = inspect
        defer { syncLock.lock(); inspection = nil; syncLock.unlock() }
        let running = (0..<machine.vcpus.count).filter { state(of: $0) == .running }
        for i in running { undropped[i, default: []].append(contentsOf: ranges) }
        syncLock.unlock()
        for i in running { machine.vcpus[i].requestSafePointStop() }
        let deadline = Date(timeIntervalSinceNow: timeout)
        syncLock.lock()
        defer { syncLock.unlock() }
        while true {
            // A vCPU that stopped running (returned, faulted) has nothing left to drop.
            let waiting = running.filter { acknowledged[$0, default: 0] < generation && state(of: $0) == .running }
            if waiting.isEmpty { return }
            if !syncLock.wait(until: min(deadline, Date(timeIntervalSinceNow: 0.001))) && Date() >= deadline {
                throw SyncTimeout(vcpus: waiting, milliseconds: Int((timeout * 1000).rounded()))
            }
        }
    }

    /// Runs `body` with the index of one running vCPU, on that vCPU's thread while it is
    /// stopped at its safe point (the first to get there during a sync; the others only
    /// pass theirs). With no vCPU running, runs it here with vCPU 0.
    public func onOneVCPU<T>(timeout: TimeInterval = 1, _ body: @escaping (Int) throws -> T) throws -> T {
        let claimed = NSLock()
        var result: Result<T, Error>?
        try sync(dropping: [], timeout: timeout) { index, _ in
            claimed.lock(); defer { claimed.unlock() }
            if result == nil { result = Result { try body(index) } }
        }
        if let result { return try result.get() }
        // Nothing was running (or everything stopped meanwhile): no emulator is in use.
        return try body(0)
    }

    /// On a vCPU thread stopped at its safe point with a sync requested: drops what
    /// changed and acknowledges.
    private func acknowledgeSync(_ index: Int, _ cpu: VCPU) {
        syncLock.lock()
        let generation = syncGeneration
        let ranges = undropped.removeValue(forKey: index) ?? []
        let inspect = inspection
        syncLock.unlock()
        for (a, n) in ranges { try? cpu.dropTranslations(at: a, length: n) }
        inspect?(index, cpu)
        syncLock.lock()
        acknowledged[index] = generation
        syncLock.broadcast()
        syncLock.unlock()
    }

    /// Until `disarmTraps`, a vCPU that traps at `address` continues at `target`.
    public func armTrap(at address: UInt64, continueAt target: UInt64) {
        syncLock.lock(); traps[address] = target; syncLock.unlock()
    }

    public func disarmTraps() {
        syncLock.lock(); traps = [:]; syncLock.unlock()
    }

    /// A vCPU trapped at `address`: where it goes on, or nil for a guest fault. An armed trap
    /// sends it to the new code. A trap no longer in memory (the vCPU ran a translation made
    /// while it was, and has not reached its safe point since: a sync timed out and the
    /// sequence was rolled back) is dropped from its translations and run again.
    private func resumeAfterTrap(_ address: UInt64, _ cpu: VCPU) -> UInt64? {
        syncLock.lock()
        if let target = traps[address] {
            trapsTakenCount += 1
            syncLock.unlock()
            return target
        }
        syncLock.unlock()
        let trap = machine.architecture.trapInstruction
        guard let found = try? machine.memory.read(address, count: trap.count), found != trap else { return nil }
        try? cpu.dropTranslations(at: address, length: 1)
        syncLock.lock(); staleTrapsCount += 1; syncLock.unlock()
        return address
    }

    /// Waits until vCPU `index` is no longer running (its function returned or faulted).
    public func wait(for index: Int, timeout: TimeInterval) -> State {
        let end = Date(timeIntervalSinceNow: timeout)
        while Date() < end {
            if state(of: index) != .running { return state(of: index) }
            Thread.sleep(forTimeInterval: 0.001)
        }
        return state(of: index)
    }
}
