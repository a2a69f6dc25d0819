import CSpliceShims
import Foundation
import SpliceMachine
import SplicePatching

/// Stop-the-machine patching as in Xen's livepatch: the request sets a flag
/// every vCPU checks at its return-to-guest safe point; the first to arrive becomes the
/// master and counts the others in, bounded by a timeout; a second phase stands for
/// "interrupts off"; the master writes; every vCPU drops its translated code for what
/// changed, on its own thread, and resumes. If not everyone arrives in time the action is
/// abandoned with -EBUSY before anything is written.
///
/// It is the `PatchExecutor` of a `LivePatcher` while vCPUs run: redirects, reverts and
/// payload applies go through it unchanged.
public final class Rendezvous: PatchExecutor {

    /// When each phase of the last action happened, in nanoseconds from the request.
    public struct Trace: Sendable, Codable, CustomStringConvertible {
        /// One vCPU's view of it: when it arrived at its safe point, acknowledged the
        /// interrupts-off phase (the master: when all had arrived), saw the work done,
        /// and resumed after dropping the changed translations.
        public struct VCPUPhases: Sendable, Codable, Equatable {
            public var index: Int
            public var arrived: UInt64 = 0
            public var interruptsOff: UInt64 = 0
            public var released: UInt64 = 0
            public var resumed: UInt64 = 0

            public init(index: Int, arrived: UInt64 = 0, interruptsOff: UInt64 = 0, released: UInt64 = 0, resumed: UInt64 = 0) {
                self.index = index
                self.arrived = arrived
                self.interruptsOff = interruptsOff
                self.released = released
                self.resumed = resumed
            }
        }

        public init() {}

        public var master: Int = -1
        public var vcpus = 0
        public var masterArrived: UInt64 = 0
        public var allArrived: UInt64 = 0
        public var interruptsOff: UInt64 = 0
        public var written: UInt64 = 0
        public var resumed: UInt64 = 0
        public var ranges = 0
        public var aborted = false
        /// When the master (or, with no master, the requester) gave up.
        public var abortedAt: UInt64 = 0
        /// In arrival order.
        public var perVCPU: [VCPUPhases] = []
        public var description: String {
            func us(_ ns: UInt64) -> String { String(format: "%.1f", Double(ns) / 1000) }
            return "master vCPU \(master) of \(vcpus): arrived \(us(masterArrived)) µs, all in \(us(allArrived)), "
                + "irqs off \(us(interruptsOff)), written \(us(written)) (\(ranges) ranges), all resumed \(us(resumed))"
                + (aborted ? " [aborted]" : "")
        }
    }

    enum Phase { case idle, gathering, interruptsOff, done, aborted }

    /// The flag the safe-point hooks read (C atomics).
    public let pending: UnsafeMutablePointer<Int32>
    /// Default time for everyone to arrive (Xen's livepatch: 30 ms).
    public var timeoutMicroseconds: UInt64 = 30_000
    public private(set) var lastTrace = Trace()
    /// Rendezvous completed (not counting aborted ones).
    public private(set) var completed = 0

    private let lock = NSCondition()
    private var phase = Phase.idle
    private var liveVCPUs = 0
    private var arrived: Set<Int> = []
    private var acknowledged = 0
    private var resumed = 0
    private var master: Int?
    /// The vCPU running the current action's work (valid inside `execute`'s work).
    public var currentMaster: Int? { master }
    /// Set by the runner: the machine whose vCPUs take part (for guest calls).
    weak var machine: Machine?
    private var work: (((UInt64, Int) -> Void) throws -> Void)?
    private var workError: Error?
    private var ranges: [(UInt64, Int)] = []
    /// `ranges` sorted and merged (gaps under a page): each vCPU drops a few spans, not
    /// thousands of 5-byte pieces.
    private var coalesced: [(UInt64, Int)] = []

    /// Records a changed range, merged into one of the last few when it is within a page
    /// of it: writes come in address order per region, so `ranges` stays short.
    private func noteChanged(_ address: UInt64, _ length: Int) {
        let end = address + UInt64(length)
        for i in ranges.indices.suffix(4) {
            let (a, n) = ranges[i]
            let e = a + UInt64(n)
            if address <= e + 4096 && a <= end + 4096 {
                let lo = min(a, address)
                ranges[i] = (lo, Int(max(e, end) - lo))
                return
            }
        }
        ranges.append((address, length))
    }

    static func coalesce(_ ranges: [(UInt64, Int)]) -> [(UInt64, Int)] {
        var out: [(UInt64, UInt64)] = []
        for (a, n) in ranges.sorted(by: { $0.0 < $1.0 }) {
            let end = a + UInt64(n)
            if let last = out.last, a <= last.1 + 4096 {
                out[out.count - 1].1 = max(last.1, end)
            } else {
                out.append((a, end))
            }
        }
        return out.map { ($0.0, Int($0.1 - $0.0)) }
    }
    private var requestTime: UInt64 = 0
    private var trace = Trace()

    public init() {
        pending = .allocate(capacity: 1)
        pending.initialize(to: 0)
    }

    deinit { pending.deallocate() }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    // MARK: vCPU threads

    /// A vCPU thread starts or stops taking part.
    func vcpuStarted() { lock.lock(); liveVCPUs += 1; lock.unlock() }
    func vcpuExited(_ index: Int) {
        lock.lock()
        liveVCPUs -= 1
        lock.broadcast()
        lock.unlock()
    }

    /// Called by a vCPU thread that stopped at the safe point. Returns once the action is
    /// over for it, after `drop` has been given the changed ranges (on this thread).
    func participate(_ index: Int, drop: ([(UInt64, Int)]) -> Void) {
        lock.lock()
        guard phase == .gathering, !arrived.contains(index) else { lock.unlock(); return }
        arrived.insert(index)
        let slot = trace.perVCPU.count
        trace.perVCPU.append(.init(index: index, arrived: Self.now() - requestTime))
        if master == nil {
            master = index
            trace.master = index
            trace.masterArrived = Self.now() - requestTime
        }
        lock.broadcast()
        if master == index {
            let deadline = Date(timeIntervalSinceNow: Double(timeoutMicroseconds) / 1e6)
            while arrived.count < liveVCPUs && phase == .gathering && lock.wait(until: deadline) {}
            if arrived.count < liveVCPUs || phase != .gathering {
                abort()
            } else {
                trace.allArrived = Self.now() - requestTime
                trace.perVCPU[slot].interruptsOff = trace.allArrived
                phase = .interruptsOff
                lock.broadcast()
                // Its own window: everyone is already waiting here, so only a vCPU that
                // cannot acknowledge (never, in this emulator) should make it fail.
                let ackDeadline = Date(timeIntervalSinceNow: Double(timeoutMicroseconds) / 1e6)
                while acknowledged < arrived.count - 1 && lock.wait(until: ackDeadline) {}
                if acknowledged < arrived.count - 1 {
                    abort()
                } else {
                    trace.interruptsOff = Self.now() - requestTime
                    do {
                        try work? { self.noteChanged($0, $1) }
                    } catch {
                        workError = error
                    }
                    trace.written = Self.now() - requestTime
                    trace.ranges = ranges.count
                    coalesced = Self.coalesce(ranges)
                    phase = .done
                    splice_flag_store(pending, 0)
                    lock.broadcast()
                }
            }
        } else {
            while phase == .gathering { lock.wait() }
            if phase == .interruptsOff {
                trace.perVCPU[slot].interruptsOff = Self.now() - requestTime
                acknowledged += 1
                lock.broadcast()
                while phase == .interruptsOff { lock.wait() }
            }
        }
        let changed = phase == .done ? coalesced : []
        trace.perVCPU[slot].released = Self.now() - requestTime
        lock.unlock()
        drop(changed)
        lock.lock()
        trace.perVCPU[slot].resumed = Self.now() - requestTime
        resumed += 1
        lock.broadcast()
        lock.unlock()
    }

    /// With the lock held: give up, nothing written.
    private func abort() {
        phase = .aborted
        trace.aborted = true
        trace.abortedAt = Self.now() - requestTime
        splice_flag_store(pending, 0)
        lock.broadcast()
    }

    /// Runs a guest call inside a rendezvous, on the master vCPU's own thread and emulator,
    /// its registers saved and restored.
    public func callGuest(_ entry: CallEntry, _ arguments: [Int64]) throws -> Int64 {
        guard let machine else { throw RendezvousError.busy(timeoutMicroseconds: 0, arrived: 0, expected: 0) }
        var value: Int64 = 0
        try execute { _ in
            if let index = self.master {
                value = try machine.callPreserving(entry, arguments, vcpu: index).signedValue
            } else {
                // No vCPU runs, so none is in the middle of its work: vCPU 0 makes a
                // fresh call from the top of its stack (its registers may be those of a
                // function that returned or faulted, or of none at all).
                value = try machine.call(entry, arguments, vcpu: 0, countInstructions: false, limits: .guestCall).signedValue
            }
        }
        return value
    }

    // MARK: The requesting thread

    /// Runs `work` while every running vCPU waits at its safe point. Throws `.busy` if
    /// they do not all arrive in time (nothing written), or whatever `work` threw (it has
    /// undone its own writes).
    public func execute(_ work: (_ changed: (UInt64, Int) -> Void) throws -> Void) throws {
        try withoutActuallyEscaping(work) { work in
            lock.lock()
            precondition(phase == .idle, "one rendezvous at a time")
            requestTime = Self.now()
            trace = Trace()
            trace.vcpus = liveVCPUs
            trace.perVCPU.reserveCapacity(liveVCPUs)
            arrived = []
            acknowledged = 0
            resumed = 0
            master = nil
            ranges = []
            coalesced = []
            workError = nil
            self.work = work
            let expected = liveVCPUs
            if expected == 0 {
                // Nothing runs: write directly. No vCPU will reach a safe point to drop
                // what changed, so every vCPU's emulator drops it here: a host call (or a vCPU
                // started later) on an emulator that ran the old code must not run its
                // stale translation of it.
                lock.unlock()
                var changed: [(UInt64, Int)] = []
                defer {
                    self.work = nil
                    for (a, n) in Self.coalesce(changed) { try? machine?.codeChanged(at: a, length: n) }
                }
                try work { changed.append(($0, $1)) }
                return
            }
            phase = .gathering
            splice_flag_store(pending, 1)
            // If no vCPU reaches the safe point at all there is no master to time out:
            // the requester does, a little later than the master would have.
            let deadline = Date(timeIntervalSinceNow: 2 * Double(timeoutMicroseconds) / 1e6 + 0.05)
            while (phase == .gathering || phase == .interruptsOff) && !(master == nil && liveVCPUs == 0)
                    && lock.wait(until: deadline) {}
            if phase == .gathering && master == nil && liveVCPUs == 0 {
                // Every vCPU left (returned or faulted) before any reached its safe point:
                // nothing runs any more, so this is the direct write above, not a timeout.
                phase = .idle
                splice_flag_store(pending, 0)
                self.work = nil
                lock.unlock()
                return try execute(work)
            }
            if phase == .gathering && master == nil { abort() }
            while phase == .gathering || phase == .interruptsOff { lock.wait() }
            // Everyone that arrived resumes (after dropping translations) before we return.
            while resumed < arrived.count { lock.wait() }
            trace.resumed = Self.now() - requestTime
            let outcome = phase
            let arrivedCount = arrived.count
            lastTrace = trace
            phase = .idle
            self.work = nil
            let error = workError
            lock.unlock()
            if outcome == .aborted {
                throw RendezvousError.busy(timeoutMicroseconds: timeoutMicroseconds, arrived: arrivedCount, expected: expected)
            }
            completed += 1
            if let error { throw error }
        }
    }
}

/// Why an action did not happen.
public enum RendezvousError: Error, Equatable, CustomStringConvertible {
    /// -EBUSY: not every vCPU reached the safe point within the timeout.
    case busy(timeoutMicroseconds: UInt64, arrived: Int, expected: Int)

    public var errno: Int32 { Errno.busy.rc }
    public var description: String {
        switch self {
        case let .busy(t, a, e):
            return "rendezvous timed out (EBUSY): \(a) of \(e) vCPUs reached the safe point within \(t) µs; nothing was written"
        }
    }
}
