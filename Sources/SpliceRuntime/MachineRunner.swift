import CSpliceShims
import Foundation
import SpliceMachine

/// Runs a machine's vCPUs free, each on its own host thread (one Unicorn engine per
/// thread), over the shared guest memory. Each vCPU calls one guest function (a workload
/// loop); it stops at the return-to-guest safe point whenever the rendezvous has work,
/// and otherwise runs until its function returns, it faults, or `stop()` is called.
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
        try machine.architecture.prepareCall(cpu.engine, memory: machine.memory, entry: entry,
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
                    final = .faulted(f)
                case let .stopped(at):
                    pc = at
                    // Stopped anywhere else (a stop request) while a rendezvous is pending:
                    // run on to the safe point, where its records are complete.
                    if at == safePoint && splice_flag_load(rendezvous.pending) != 0 {
                        rendezvous.participate(index) { ranges in
                            for (a, n) in ranges { try? cpu.dropTranslations(at: a, length: n) }
                        }
                    }
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
        // A stop request made just before an engine (re)starts is lost: repeat until done.
        while exited.wait(timeout: .now() + .milliseconds(2)) == .timedOut {
            for cpu in machine.vcpus { cpu.requestStop() }
        }
        threads = []
        splice_flag_store(&stopping, 0)
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
