import CSpliceShims
import CUnicorn
import Foundation
import SpliceBytes

/// Why the guest stopped somewhere other than where it was asked to.
public struct GuestFault: Error, Equatable, CustomStringConvertible {
    public enum Kind: Equatable, Sendable {
        /// A read / write / fetch of unmapped memory, or against the region's permissions.
        case memory(access: String, address: UInt64, size: Int)
        /// An interrupt or exception the guest raised (trap, sc, illegal instruction …).
        case interrupt(number: UInt32, name: String)
        case invalidInstruction
        /// The run hit its time or instruction bound before returning.
        case limitReached(String)
        /// Unicorn stopped with an error no hook explained.
        case emulator(UnicornError)
    }

    public var kind: Kind
    /// The instruction at fault. Exact while instruction counting is on (a code hook
    /// covers every instruction); otherwise Unicorn reports memory faults at the start
    /// of the translated block that contains the faulting instruction.
    public var pc: UInt64
    public var architecture: String

    public var description: String {
        let at = "at pc \(hex(pc)) (\(architecture))"
        switch kind {
        case let .memory(access, address, size):
            return "guest fault: \(access) of \(size) bytes at \(hex(address)) \(at)"
        case let .interrupt(number, name):
            return "guest fault: interrupt \(number) (\(name)) \(at)"
        case .invalidInstruction:
            return "guest fault: invalid instruction \(at)"
        case let .limitReached(what):
            return "guest stopped: \(what) \(at)"
        case let .emulator(error):
            return "guest stopped: \(error) \(at)"
        }
    }
}

/// One emulated CPU: one Unicorn emulator, brought up for its ISA, with all guest regions
/// mapped. Drive it from one thread at a time.
public final class VCPU {
    public let index: Int
    public let architecture: any CPUArchitecture
    package let emulator: Emulator
    /// The return sentinel and stack this vCPU uses for calls.
    public let stackTop: UInt64
    public let returnSentinel: UInt64
    private let memory: GuestMemory

    private let stopRecord: UnsafeMutablePointer<splice_stop_record>
    private let counter: UnsafeMutablePointer<UInt64>
    private var countHook: uc_hook?
    /// Safe points installed (address, rendezvous flag, sync request); the last one is current.
    private var safePoints: [(address: UInt64, point: UnsafeMutablePointer<splice_safe_point>)] = []
    /// Objects C hooks point at (host calls): they live as long as the emulator.
    var hookContexts: [AnyObject] = []

    init(index: Int, architecture: any CPUArchitecture, memory: GuestMemory, stackTop: UInt64,
         returnSentinel: UInt64) throws {
        self.index = index
        self.memory = memory
        self.architecture = architecture
        self.stackTop = stackTop
        self.returnSentinel = returnSentinel
        emulator = try Emulator(architecture.emulatorConfiguration)
        stopRecord = .allocate(capacity: 1)
        stopRecord.initialize(to: splice_stop_record())
        stopRecord.pointee.pc_register = architecture.programCounter.id
        counter = .allocate(capacity: 1)
        counter.initialize(to: 0)
        try architecture.bringUp(emulator)
        var hooks: (uc_hook, uc_hook, uc_hook) = (0, 0, 0)
        try withUnsafeMutableBytes(of: &hooks) { raw in
            try check(splice_hook_faults(emulator.handle, raw.baseAddress!.assumingMemoryBound(to: uc_hook.self),
                                         stopRecord), "uc_hook_add(fault hooks)")
        }
    }

    deinit {
        stopRecord.deallocate()
        counter.deallocate()
        for s in safePoints { s.point.deallocate() }
    }

    func map(_ region: GuestRegion) throws {
        try emulator.mapHostMemory(region.host, at: region.base, size: Int(region.size), permissions: region.permissions)
    }

    func unmap(_ region: GuestRegion) throws { try emulator.unmap(region.base, size: Int(region.size)) }

    public func read(_ register: CPURegister) throws -> UInt64 { try emulator.read(register) }
    public func write(_ register: CPURegister, _ value: UInt64) throws { try emulator.write(register, value) }

    /// Turns per-instruction counting on or off. Unicorn only instruments code it
    /// translates after the hook exists, so every change drops this emulator's translated
    /// blocks for the executable regions. (Not UC_CTL_TB_FLUSH: in 2.0.1 a full flush
    /// took 0.14-1.9 s here; removing the blocks of the code ranges takes microseconds.)
    public func setInstructionCounting(_ on: Bool) throws {
        if on == (countHook != nil) { return }
        if on {
            var hook: uc_hook = 0
            try check(splice_hook_count_instructions(emulator.handle, &hook, counter), "uc_hook_add(count)")
            countHook = hook
        } else if let hook = countHook {
            emulator.deleteHook(hook)
            countHook = nil
        }
        try dropTranslatedCode()
    }

    /// Drops every translated block of every executable region on this emulator. Call it
    /// on the thread that runs this vCPU.
    public func dropTranslatedCode() throws {
        for region in memory.regions where region.permissions.contains(.execute) {
            try emulator.removeTranslations(from: region.base, to: region.end)
        }
    }

    public var countsInstructions: Bool { countHook != nil }

    /// Limits for one run.
    public struct Limits: Sendable {
        /// Wall-clock bound; 0 means none.
        public var timeoutMicroseconds: UInt64
        /// Instruction bound; 0 means none.
        public var instructions: Int
        public init(timeoutMicroseconds: UInt64 = 10_000_000, instructions: Int = 0) {
            self.timeoutMicroseconds = timeoutMicroseconds
            self.instructions = instructions
        }

        /// How long a guest call made on the host's behalf (a payload hook) may run: a
        /// hook that loops is stopped and reported, not waited for.
        public static let guestCall = Limits(timeoutMicroseconds: 1_000_000)
    }

    /// The outcome of a run that reached its end address.
    public struct RunResult: Sendable {
        /// Executed guest instructions (nil when counting was off).
        public var instructions: UInt64?
        public var hostNanoseconds: UInt64
    }

    /// Why a run ended.
    public enum Stop {
        /// The PC reached `until`.
        case returned
        /// Stopped early with no fault (a stop request, the safe point): resume at `pc`.
        case stopped(pc: UInt64)
        case fault(GuestFault)
    }

    /// Runs from `begin` with no bounds until the PC reaches `until`, a stop request, or a
    /// fault. For vCPUs that run on their own thread.
    public func runUntilStopped(from begin: UInt64, until: UInt64) -> Stop {
        classifiedRun(from: begin, until: until, limits: Limits(timeoutMicroseconds: 0, instructions: 0))
    }

    /// Runs at most `instructions` guest instructions from `begin` (the deterministic
    /// scheduler's quantum). An emulator used this way must never run uncounted: Unicorn
    /// 2.0.1 ignores the count for blocks translated without it.
    public func step(from begin: UInt64, until: UInt64, instructions: Int) -> Stop {
        classifiedRun(from: begin, until: until, limits: Limits(timeoutMicroseconds: 0, instructions: instructions))
    }

    /// A run whose early stop is an outcome, not an error.
    private func classifiedRun(from begin: UInt64, until: UInt64, limits: Limits) -> Stop {
        do {
            _ = try run(from: begin, until: until, limits: limits)
            return .returned
        } catch let fault as GuestFault {
            if case .limitReached = fault.kind { return .stopped(pc: fault.pc) }
            return .fault(fault)
        } catch {
            return .fault(GuestFault(kind: .limitReached("\(error)"), pc: 0, architecture: architecture.name))
        }
    }

    /// Stops this vCPU when it is about to execute `address` while `*pending` is nonzero
    /// (the return-to-guest safe point of a rendezvous).
    public func installSafePoint(at address: UInt64, pending: UnsafeMutablePointer<Int32>) throws {
        if let i = safePoints.firstIndex(where: { $0.address == address }) {
            // A new runner on the same machine: the hook obeys the new flag.
            safePoints[i].point.pointee.pending = UnsafePointer(pending)
            safePoints.append(safePoints.remove(at: i))
            return
        }
        let point = UnsafeMutablePointer<splice_safe_point>.allocate(capacity: 1)
        point.initialize(to: splice_safe_point(pending: pending, sync: 0))
        var hook: uc_hook = 0
        guard splice_hook_safe_point(emulator.handle, &hook, address, point) == UC_ERR_OK else {
            point.deallocate()
            try check(UC_ERR_ARG, "uc_hook_add(safe point)")
            return
        }
        safePoints.append((address, point))
        try dropTranslatedCode() // a hook only instruments code translated after it exists
    }

    /// Asks this vCPU to stop at its safe point (the current one) even with no rendezvous
    /// pending: a non-stop sync. Any thread.
    public func requestSafePointStop() {
        if let p = safePoints.last?.point { splice_safe_point_request_sync(p) }
    }

    /// Whether a safe-point stop was requested since the last call (and clears it). Call it
    /// on the thread that runs this vCPU.
    public func takeSafePointStopRequest() -> Bool {
        safePoints.last.map { splice_safe_point_take_sync($0.point) != 0 } ?? false
    }

    /// Drops this emulator's translated code for [address, address + length). Call it on the
    /// thread that runs this vCPU.
    public func dropTranslations(at address: UInt64, length: Int) throws {
        try emulator.removeTranslations(from: address, to: address + UInt64(length))
    }

    /// The code addresses live on this (stopped) vCPU: PC, then return addresses.
    public func liveCodeAddresses(memory: GuestMemory, functions: FunctionMap? = nil) throws -> [UInt64] {
        try architecture.liveCodeAddresses(emulator, memory: memory, stackTop: stackTop + 256, functions: functions)
    }

    /// Asks the running emulator to stop; safe from any thread (a request made before the
    /// emulator starts is lost: repeat it until the vCPU's thread reports back).
    public func requestStop() { emulator.requestStop() }

    /// Runs from `begin` until the PC reaches `until`. Anything else — a fault, a
    /// trap, a limit — is thrown as a `GuestFault` with the PC it happened at.
    public func run(from begin: UInt64, until: UInt64, limits: Limits = Limits()) throws -> RunResult {
        stopRecord.pointee.kind = SPLICE_STOP_NONE
        counter.pointee = 0
        let start = DispatchTime.now().uptimeNanoseconds
        let err = emulator.start(begin: begin, until: until, timeoutMicroseconds: limits.timeoutMicroseconds,
                               count: limits.instructions)
        let elapsed = DispatchTime.now().uptimeNanoseconds - start
        let pc = (try? emulator.read(architecture.programCounter)) ?? 0
        let record = stopRecord.pointee
        func fault(_ kind: GuestFault.Kind, _ at: UInt64) -> GuestFault {
            GuestFault(kind: kind, pc: at, architecture: architecture.name)
        }
        switch record.kind {
        case SPLICE_STOP_INTERRUPT:
            throw fault(.interrupt(number: record.intno, name: architecture.describeInterrupt(record.intno)),
                        architecture.faultingInstruction(interrupt: record.intno, reportedPC: record.pc))
        case SPLICE_STOP_MEMORY:
            throw fault(.memory(access: Self.describe(uc_mem_type(rawValue: UInt32(record.mem_type))),
                                address: record.address, size: Int(record.size)), record.pc)
        case SPLICE_STOP_INVALID_INSN:
            throw fault(.invalidInstruction, record.pc)
        default:
            break
        }
        if err != UC_ERR_OK { throw fault(.emulator(UnicornError("uc_emu_start", err)), pc) }
        guard pc == until else {
            let reason: String
            if limits.instructions > 0, countsInstructions, counter.pointee >= UInt64(limits.instructions) {
                reason = "instruction limit of \(limits.instructions) reached"
            } else if limits.timeoutMicroseconds > 0, elapsed / 1000 >= limits.timeoutMicroseconds {
                reason = "time limit of \(limits.timeoutMicroseconds) µs reached"
            } else {
                reason = "stopped before reaching \(hex(until))"
            }
            throw fault(.limitReached(reason), pc)
        }
        return RunResult(instructions: countsInstructions ? counter.pointee : nil, hostNanoseconds: elapsed)
    }

    static func describe(_ type: uc_mem_type) -> String {
        switch type {
        case UC_MEM_READ_UNMAPPED: return "read of unmapped memory"
        case UC_MEM_WRITE_UNMAPPED: return "write to unmapped memory"
        case UC_MEM_FETCH_UNMAPPED: return "fetch from unmapped memory"
        case UC_MEM_READ_PROT: return "read of read-protected memory"
        case UC_MEM_WRITE_PROT: return "write to write-protected memory"
        case UC_MEM_FETCH_PROT: return "fetch from non-executable memory"
        default: return "memory access (type \(type.rawValue))"
        }
    }
}
