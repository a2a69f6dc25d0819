import SpliceMachine
import SplicePatching

/// Runs a machine's vCPUs on one host thread, each for a fixed quantum of guest
/// instructions in turn, so that an interleaving of vCPUs and patch steps is reproducible
/// (from the order the caller chooses, or from a seed). A vCPU that hits a trap a non-stop
/// sequence armed is sent on where the backend says (or retries until the write lands).
public final class DeterministicScheduler {
    public enum State: Equatable, Sendable {
        case running(pc: UInt64), returned(Int64), faulted(GuestFault)
    }

    public let machine: Machine
    public let backend: any PatchBackend
    public var quantum: Int
    public private(set) var states: [Int: State] = [:]
    /// Traps armed by a non-stop sequence in flight: address → the final bytes.
    public private(set) var armed: [UInt64: [UInt8]] = [:]
    /// How many times a vCPU was redirected off an armed trap.
    public private(set) var trapRedirects = 0
    private var rng: UInt64

    /// The machine must be fresh: its engines may only ever run counted.
    public init(machine: Machine, backend: any PatchBackend, quantum: Int = 1, seed: UInt64 = 1) {
        self.machine = machine
        self.backend = backend
        self.quantum = quantum
        self.rng = seed
    }

    public func start(vcpu index: Int, entry: CallEntry, arguments: [Int64]) throws {
        let cpu = try machine.vcpu(index)
        try machine.architecture.prepareCall(cpu.emulator, memory: machine.memory, entry: entry,
                                             arguments: arguments.map { UInt64(bitPattern: $0) },
                                             stackTop: cpu.stackTop, returnAddress: cpu.returnSentinel)
        states[index] = .running(pc: entry.address)
    }

    /// Runs vCPU `index` for `instructions` (default: one quantum).
    @discardableResult
    public func step(_ index: Int, instructions: Int? = nil) throws -> State {
        guard case let .running(pc)? = states[index] else { return states[index] ?? .returned(0) }
        let cpu = try machine.vcpu(index)
        let next: State
        switch cpu.step(from: pc, until: cpu.returnSentinel, instructions: instructions ?? quantum) {
        case .returned:
            next = .returned(Int64(bitPattern: try cpu.read(machine.architecture.returnValueRegister)))
        case let .stopped(at):
            next = .running(pc: at)
        case let .fault(f):
            if case .interrupt = f.kind, let final = armed[f.pc] {
                trapRedirects += 1
                next = .running(pc: backend.trapRedirect(at: f.pc, final: final) ?? f.pc)
            } else {
                next = .faulted(f)
            }
        }
        states[index] = next
        return next
    }

    /// Runs every vCPU one quantum, in an order drawn from the seed.
    public func round() throws {
        var order = states.keys.sorted()
        for i in stride(from: order.count - 1, to: 0, by: -1) {
            rng &+= 0x9e37_79b9_7f4a_7c15
            var z = rng
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            order.swapAt(i, Int((z ^ (z >> 31)) % UInt64(i + 1)))
        }
        for i in order { try step(i) }
    }

    /// Runs until every vCPU returned or faulted (bounded).
    public func runToCompletion(maxRounds: Int = 1_000_000) throws {
        for _ in 0..<maxRounds {
            if !states.values.contains(where: { if case .running = $0 { return true } else { return false } }) { return }
            try round()
        }
    }

    /// What a non-stop sequence step means here: a sync drops every vCPU's translated
    /// code for the changed range (all on this thread); traps are armed and disarmed.
    public func handle(_ s: NonStopStep, changed: [(UInt64, Int)]) throws {
        switch s {
        case let .trapArmed(address, final): armed[address] = final
        case .sync:
            for (a, n) in changed { try machine.codeChanged(at: a, length: n) }
        case .write: break
        case .quiesce:
            // This scheduler has no safe points: the caller places vCPUs, and the
            // exhaustive tests place them at every boundary. A sync is all it can do.
            for (a, n) in changed { try machine.codeChanged(at: a, length: n) }
        }
    }

    /// Disarms every trap (the sequence finished).
    public func disarmAll() { armed = [:] }
}
