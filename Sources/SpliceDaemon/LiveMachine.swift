import SpliceArchitectures
import SpliceBytes
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
import Crypto
import Foundation

/// How a machine's actions reach its running vCPUs.
public enum PatchEngineKind: String, Codable, Sendable, CaseIterable {
    /// Every action is one rendezvous: all vCPUs held at their safe point while it writes.
    case stop
    /// The non-stop engine: x86-64 int3 protocol / ppc64le enable order, vCPUs running.
    case nonstop
}

/// A machine that keeps running: an image loaded into N vCPUs, each running the workload
/// on its own host thread, with the payload life cycle (`LivePatchService`) on top. The
/// daemon behind `splice machine start` and the scenario runner both drive one.
///
/// The workload is a guest function `long f(struct cpu_ring *ring, long iterations)`
/// called with vCPU i's own ring page and 0 (run forever); the sample kernels' `workload`
/// records (x, scaled(x), apply_unary(0, x)) in the ring (samples/src/kernel.h).
///
/// Thread safety: any thread may call any method. Actions run one at a time; `begin`
/// starts one in the background (the xSplice design's asynchronous action: its status reads
/// PROGRESS until it is done), and while it runs `get` and `list` answer from the state
/// before it, with that payload in PROGRESS.
public final class LiveMachine {
    public struct Configuration: Codable, Sendable, Equatable {
        public var image: String
        public var cpus: Int
        /// The guest function each vCPU runs (nil: the vCPUs stay idle).
        public var workload: String?
        public var engine: PatchEngineKind
        /// How a redirected call returns, for a backend that offers a choice (nil: its
        /// default); see `PatchBackend.returnStrategies`.
        public var returnStrategy: String?
        /// How long a rendezvous waits for every vCPU to arrive (Xen's livepatch: 30 ms on
        /// hardware; an emulated vCPU sharing 2 host cores needs longer).
        public var rendezvousTimeoutMicroseconds: UInt64
        /// Non-stop engine: how long an action waits for the functions it replaces to leave
        /// every vCPU's stack (reading PROGRESS meanwhile) before it fails with -EBUSY.
        public var stackWaitMilliseconds: UInt64

        public init(image: String, cpus: Int = 2, workload: String? = "workload", engine: PatchEngineKind = .stop,
                    returnStrategy: String? = nil, rendezvousTimeoutMicroseconds: UInt64 = 1_000_000,
                    stackWaitMilliseconds: UInt64 = 10_000) {
            self.stackWaitMilliseconds = stackWaitMilliseconds
            self.image = image
            self.cpus = cpus
            self.workload = workload
            self.engine = engine
            self.returnStrategy = returnStrategy
            self.rendezvousTimeoutMicroseconds = rendezvousTimeoutMicroseconds
        }
    }

    /// The sample ring: 8-byte iteration count, then 64 slots of (x, scaled, apply_unary).
    public static let ringSlots = 64
    static let ringFields = 3, ringStride: UInt64 = 0x1000
    static let ringBase: UInt64 = 0x5800_0000

    public let configuration: Configuration
    public let image: LoadedImage
    public let machine: Machine
    public let runner: MachineRunner
    public let nonStop: NonStopEngine?
    /// Uploads must carry a signature by this key when set (as the xSplice design asks).
    public let trustedKey: P256.Signing.PublicKey?
    package let patcher: LivePatcher
    package let loader: PayloadLoader
    package let service: LivePatchService
    package let rings: GuestRegion?

    /// Called on the action's thread when a background action ends: the id, the action,
    /// and nil or the failure's reason.
    public var onActionFinished: (@Sendable (String, LivePatchService.Action, String?) -> Void)?

    /// Guards the service, the loader and everything that runs guest code from the host.
    private let serviceLock = NSLock()
    /// Guards the fields below.
    private let stateLock = NSLock()
    private var inFlight: (id: String, action: LivePatchService.Action)?
    private var snapshot: [PayloadStatus] = []
    private var lastErrors: [String: String] = [:]
    private var changes: UInt64 = 0
    /// What each finished action threw (nil: it succeeded), by ticket.
    private var outcomes: [UInt64: Error?] = [:]
    private let idle = NSCondition()

    public init(configuration c: Configuration, trustedKey: P256.Signing.PublicKey? = nil) throws {
        guard (1...64).contains(c.cpus) else { throw LiveMachineError.badConfiguration("--cpus must be 1 to 64 (got \(c.cpus))") }
        configuration = c
        self.trustedKey = trustedKey
        let elf: ELFFile
        do { elf = try ELFFile(contentsOf: c.image) } catch {
            let text = "\(error)"
            throw LiveMachineError.badConfiguration(text.contains(c.image) ? text : "\(c.image): \(text)")
        }
        let arch = try Architectures.forELF(elf)
        let backend: any PatchBackend
        do { backend = try Architectures.backend(named: arch.name, returnStrategy: c.returnStrategy) } catch {
            throw LiveMachineError.badConfiguration("\(c.image): \(error)")
        }
        machine = try Machine(architecture: arch, vcpuCount: c.cpus)
        image = try machine.load(elf)
        patcher = try LivePatcher(image: image, backend: backend)
        loader = try PayloadLoader(patcher: patcher)
        service = LivePatchService(loader: loader)
        guard let safePoint = image.elf.symbol(named: "safe_point") else {
            throw LiveMachineError.badConfiguration("\(c.image) has no safe_point function: a live machine's vCPUs need one to rendezvous at")
        }
        runner = try MachineRunner(machine: machine, safePoint: safePoint.value)
        runner.rendezvous.timeoutMicroseconds = c.rendezvousTimeoutMicroseconds
        patcher.executor = runner.rendezvous
        nonStop = c.engine == .nonstop ? NonStopEngine(runner: runner, patcher: patcher) : nil
        if let nonStop {
            nonStop.stackWait = Double(c.stackWaitMilliseconds) / 1000
            loader.engine = nonStop
        }
        if let workload = c.workload {
            guard let entry = try? image.entries(of: workload).first else { throw LiveMachineError.noSuchFunction(workload) }
            let rings = try machine.map(name: "rings", at: Self.ringBase, size: Self.ringStride * UInt64(c.cpus),
                                        permissions: [.read, .write])
            self.rings = rings
            for i in 0..<c.cpus {
                try runner.start(vcpu: i, entry: entry, arguments: [Int64(rings.base + UInt64(i) * Self.ringStride), 0])
            }
        } else {
            rings = nil
        }
    }

    deinit { runner.stop() }

    /// Stops the vCPUs (each at its next instruction boundary); the machine is done.
    public func shutdown() {
        waitUntilIdle()
        runner.stop()
    }

    // MARK: Payloads

    /// Uploads a payload (checked against the trusted key first when there is one).
    public func upload(id: String, bytes: [UInt8]) throws {
        var payload = bytes
        if let key = trustedKey {
            payload = try PayloadSignature.verified(bytes, name: id, trusted: key)
        } else {
            payload = try PayloadSignature.split(bytes, name: id).payload
        }
        try whenIdle { try service.upload(id: id, bytes: payload) }
    }

    /// Runs an action and returns when it is done, throwing what the action threw.
    public func perform(_ action: LivePatchService.Action, id: String) throws {
        let ticket = try begin(action, id: id)
        waitUntilIdle()
        stateLock.lock()
        let outcome = outcomes.removeValue(forKey: ticket)
        stateLock.unlock()
        if let error = outcome ?? nil { throw error }
    }

    /// Starts an action in the background: refused at once (nothing done) if another is
    /// running, the id is unknown or its state does not allow it; otherwise its status
    /// reads PROGRESS until it is done, then the new state or the failure's rc.
    /// Returns a ticket `perform` collects the outcome with.
    @discardableResult
    public func begin(_ action: LivePatchService.Action, id: String) throws -> UInt64 {
        stateLock.lock()
        if let f = inFlight { stateLock.unlock(); throw LiveMachineError.busy(id: f.id, action: f.action) }
        serviceLock.lock()
        do { try service.validate(action, id: id) } catch {
            serviceLock.unlock(); stateLock.unlock()
            throw error
        }
        snapshot = service.list(start: 0, count: Int.max).statuses.map(settled)
        serviceLock.unlock()
        inFlight = (id, action)
        changes += 1
        let ticket = changes
        stateLock.unlock()
        let thread = Thread { [self] in
            serviceLock.lock()
            var failure: String?
            var thrown: Error?
            do { try service.perform(action, id: id) } catch {
                thrown = error
                if case let LivePatchServiceError.actionFailed(_, _, _, reason) = error { failure = reason } else { failure = "\(error)" }
            }
            serviceLock.unlock()
            stateLock.lock()
            // An unloaded payload's id is free again: its last failure goes with it.
            lastErrors[id] = action == .unload && thrown == nil ? nil : failure
            outcomes[ticket] = .some(thrown)
            // Nobody collects a background action's outcome but `perform`.
            if outcomes.count > 16 { outcomes.removeValue(forKey: outcomes.keys.min()!) }
            inFlight = nil
            snapshot = []
            changes += 1
            stateLock.unlock()
            idle.lock(); idle.broadcast(); idle.unlock()
            onActionFinished?(id, action, failure)
        }
        thread.name = "splice \(action.rawValue) \(id)"
        thread.start()
        return ticket
    }

    public func get(_ id: String) throws -> PayloadStatus {
        stateLock.lock(); defer { stateLock.unlock() }
        if let f = inFlight {
            guard var s = snapshot.first(where: { $0.id == id }) else { throw LivePatchServiceError.noSuchPayload(id) }
            if f.id == id { s.state = .progress; s.action = f.action }
            return s
        }
        serviceLock.lock(); defer { serviceLock.unlock() }
        return settled(try service.get(id))
    }

    /// Statuses `start..<start+count` in upload order, with the version they belong to:
    /// it changes with every upload and at the start and end of every action, so a
    /// client paging through sees whether it raced with one (the xSplice design's `version`).
    public func list(start: Int = 0, count: Int = 100) -> Page {
        stateLock.lock(); defer { stateLock.unlock() }
        let all: [PayloadStatus]
        if let f = inFlight {
            all = snapshot.map { var s = $0; if s.id == f.id { s.state = .progress; s.action = f.action }; return s }
        } else {
            serviceLock.lock()
            all = service.list(start: 0, count: Int.max).statuses.map(settled)
            serviceLock.unlock()
        }
        let slice = Array(all.dropFirst(max(start, 0)).prefix(max(count, 0)))
        return Page(version: changes, total: all.count, start: start, statuses: slice)
    }

    /// Blocks until no action runs.
    public func waitUntilIdle() {
        idle.lock()
        while true {
            stateLock.lock(); let busy = inFlight != nil; stateLock.unlock()
            if !busy { break }
            _ = idle.wait(until: Date(timeIntervalSinceNow: 0.05))
        }
        idle.unlock()
    }

    /// With the state lock held.
    private func settled(_ s: LivePatchService.Status) -> PayloadStatus {
        PayloadStatus(id: s.id, state: PayloadStatus.State(s.state), action: nil, rc: s.rc, error: s.rc == 0 ? nil : lastErrors[s.id],
                      buildID: s.buildID)
    }

    /// Runs `body` with the service lock, refusing while a background action runs.
    private func whenIdle<T>(_ body: () throws -> T) throws -> T {
        stateLock.lock()
        if let f = inFlight { stateLock.unlock(); throw LiveMachineError.busy(id: f.id, action: f.action) }
        serviceLock.lock()
        stateLock.unlock()
        // The service lock is let go before the state lock is taken again: `get` takes
        // them in the other order.
        let result = Result { try body() }
        serviceLock.unlock()
        stateLock.lock(); changes += 1; stateLock.unlock()
        return try result.get()
    }

    // MARK: The running machine

    /// Calls a guest function where it is safe while the vCPUs run (inside a rendezvous,
    /// or on one vCPU at its safe point with the non-stop engine).
    public func call(_ function: String, _ arguments: [Int64]) throws -> Int64 {
        guard let entry = try? image.entries(of: function).first else { throw LiveMachineError.noSuchFunction(function) }
        serviceLock.lock(); defer { serviceLock.unlock() }
        return try loader.engine.callGuest(entry, arguments)
    }

    /// Every vCPU's state, iteration count and newest `last` records, read while all of
    /// them wait at their safe point (so no record is half written).
    public func status(records last: Int = 4) throws -> Status {
        guard (0...Self.ringSlots).contains(last) else {
            throw LiveMachineError.badRequest("records must be 0 to \(Self.ringSlots) (got \(last)) (EINVAL)")
        }
        let version = list(start: 0, count: 0).version
        serviceLock.lock(); defer { serviceLock.unlock() }
        var vcpus: [VCPUStatus] = []
        let read = { [self] in
            vcpus = []
            for i in 0..<configuration.cpus {
                var v = VCPUStatus(index: i, state: .running, iterations: 0, records: [])
                switch runner.state(of: i) {
                case .running: break
                case let .returned(value): (v.state, v.detail) = (.returned, String(Int64(bitPattern: value)))
                case let .faulted(f): (v.state, v.detail) = (.faulted, "\(f)")
                case .stopped: v.state = .stopped
                }
                if let rings {
                    let ring = rings.base + UInt64(i) * Self.ringStride
                    let n = try machine.memory.readUInt64(ring)
                    v.iterations = n
                    for k in UInt64(0)..<min(n, UInt64(min(last, Self.ringSlots))) {
                        let slot = (n - 1 - k) & UInt64(Self.ringSlots - 1)
                        let base = ring + 8 + slot * UInt64(8 * Self.ringFields)
                        let fields = try (0..<Self.ringFields).map { Int64(bitPattern: try machine.memory.readUInt64(base + UInt64(8 * $0))) }
                        v.records.insert(Record(x: fields[0], results: Array(fields.dropFirst())), at: 0)
                    }
                }
                vcpus.append(v)
            }
        }
        if rings != nil { try runner.rendezvous.execute { _ in try read() } } else { try read() }
        let page = service.list(start: 0, count: 0)
        return Status(image: configuration.image, architecture: machine.architecture.name,
                      buildID: (image.elf.buildID ?? []).hexDigits, cpus: configuration.cpus,
                      workload: configuration.workload, engine: configuration.engine,
                      returnStrategy: patcher.backend.returnStrategy,
                      version: version, payloads: page.total,
                      activeRedirects: patcher.active.count, rendezvousCompleted: runner.rendezvous.completed,
                      requiresSignature: trustedKey.map { PayloadSignature.keyID(of: $0).hexDigits }, vcpus: vcpus)
    }

    /// The address of a symbol of the image.
    public func address(of symbol: String) throws -> UInt64 {
        guard let s = image.elf.symbol(named: symbol) else { throw LiveMachineError.noSuchSymbol(symbol) }
        return s.value
    }

    /// The 8-byte variable `symbol` of the image.
    public func read(_ symbol: String) throws -> Int64 {
        let address = try address(of: symbol)
        serviceLock.lock(); defer { serviceLock.unlock() }
        return Int64(bitPattern: try machine.memory.readUInt64(address))
    }

    public struct TextRegion: Equatable, Sendable {
        public var base: UInt64
        public var bytes: [UInt8]
    }

    /// The image's executable bytes now, region by region.
    public func executableText() throws -> [TextRegion] {
        serviceLock.lock(); defer { serviceLock.unlock() }
        return try image.regions.filter { $0.permissions.contains(.execute) }.map {
            TextRegion(base: $0.base, bytes: try machine.memory.read($0.base, count: Int($0.size)))
        }
    }

    /// Names for code addresses: the image's functions, the patch runtime's entry points
    /// (ftrace_caller, the return helper) and every loaded payload's functions.
    public func codeNames() -> [UInt64: String] {
        var names = image.elf.functionNames
        serviceLock.lock(); defer { serviceLock.unlock() }
        for (a, n) in patcher.runtime?.symbols ?? [:] { names[a] = n }
        for p in loader.payloads {
            for (n, a) in p.exports where names[a] == nil { names[a] = "\(p.payload.name):\(n)" }
        }
        return names
    }

    /// What a workload keeps in its ring page after the ring (syscall_workload's tally),
    /// `words` 8-byte words for each vCPU.
    public func ringTail(words: Int) throws -> [[Int64]] {
        guard let rings else { throw LiveMachineError.badConfiguration("the machine runs no workload, so it has no rings") }
        let tail = UInt64(8 + Self.ringSlots * Self.ringFields * 8)
        serviceLock.lock(); defer { serviceLock.unlock() }
        return try (0..<configuration.cpus).map { i in
            let at = rings.base + UInt64(i) * Self.ringStride + tail
            return try (0..<words).map { Int64(bitPattern: try machine.memory.readUInt64(at + UInt64(8 * $0))) }
        }
    }

    /// Stores `value` into the 8-byte variable `symbol` from the host, without a guest call
    /// or the action lock: it reaches the guest while an action is in progress (a flag a
    /// vCPU spins on).
    public func write(_ symbol: String, _ value: Int64) throws {
        try machine.memory.write(try address(of: symbol), value.littleEndianBytes)
    }

    /// The NUL-terminated string at `address` (at most `limit` bytes).
    public func string(at address: UInt64, limit: Int = 4096) throws -> String {
        serviceLock.lock(); defer { serviceLock.unlock() }
        var bytes: [UInt8] = []
        while bytes.count < limit {
            let b = try machine.memory.read(address + UInt64(bytes.count), count: 1)[0]
            if b == 0 { break }
            bytes.append(b)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The phases of the last rendezvous (stop engine).
    public var lastRendezvous: Rendezvous.Trace { runner.rendezvous.lastTrace }
}

public enum LiveMachineError: Error, Equatable, CustomStringConvertible {
    case busy(id: String, action: LivePatchService.Action)
    case badConfiguration(String)
    case noSuchFunction(String)
    case noSuchSymbol(String)
    /// A request field out of its range or alphabet.
    case badRequest(String)
    /// The control socket already serves as many connections as it may.
    case busyConnections(Int)

    public var description: String {
        switch self {
        case let .badRequest(why): return "bad request: \(why)"
        case let .busyConnections(n): return "the machine is serving \(n) connections already; try again (EBUSY)"
        case let .busy(id, action):
            return "another action is in progress (\(action.rawValue) of payload \(id)); try again when it is done (EBUSY)"
        case let .badConfiguration(why): return why
        case let .noSuchFunction(name): return "no function named \(name) in the image"
        case let .noSuchSymbol(name): return "no symbol named \(name) in the image"
        }
    }
}
