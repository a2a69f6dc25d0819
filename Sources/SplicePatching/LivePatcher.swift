import SpliceBytes
import SpliceELF
import SpliceMachine
import Dispatch

/// The common redirect API on a loaded machine: redirect a function to another one or
/// to new code, NOP-patch it, list what is active, revert. Redirects of one function
/// stack: A→B then A→C, and reverting C brings back A→B; B cannot be reverted while C
/// is on top of it.
///
/// Every patch is checked before anything is written: the bytes at each place it will
/// write must be what the patcher expects there (the image's bytes, or what an earlier
/// patch wrote), and the backend must recognise the site. A refusal writes nothing.
/// Writes go to the shared guest memory, then every vCPU drops its translated code for
/// the range. This class does not stop running vCPUs: call it while they are stopped
/// (the rendezvous does that).
public final class LivePatcher {
    public let image: LoadedImage
    public let backend: any PatchBackend
    public let space: CodeSpace
    public internal(set) var active: [ActiveRedirect] = []
    /// The backend's runtime in this machine (nil when it needs none).
    public internal(set) var runtime: (any PatchRuntime)?
    /// Where writes happen: directly (default), or inside a rendezvous of running vCPUs.
    /// Code allocations follow it (mapping a region touches every vCPU's emulator).
    public var executor: PatchExecutor {
        didSet { space.executor = executor is DirectExecutor ? nil : executor }
    }
    var nextID = 1
    /// Where the time of the last batch apply or REPLACE went (for `splice bench rendezvous`).
    public internal(set) var lastTiming = ActionTiming()
    /// Bytes this patcher wrote, by guest address: what memory must hold there now.
    var written = ByteOverlay()
    /// What is known about each function's patch site, by function name: one look-up per
    /// function of a batch. Names of one address (aliases) share an entry.
    var sites: [String: SiteEntry] = [:]
    var sitesByAddress: [UInt64: SiteEntry] = [:]
    /// Numbers the batches `prepare` checks (see `SiteEntry.checkedInBatch`).
    var batchNumber = 0
    /// Numbers the passes over site entries' scratch fields (see `SiteEntry.begin(pass:)`).
    var passNumber = 0
    func nextPass() -> Int {
        passNumber += 1
        return passNumber
    }
    public var machine: Machine { image.machine }

    /// Brings the image into its patchable state (the backend's `prepare`) and installs
    /// the backend's runtime code.
    public init(image: LoadedImage, backend: any PatchBackend, space: CodeSpace? = nil) throws {
        guard backend.architecture.elfMachine == image.elf.header.machine else {
            throw PatchError.noBackend("\(image.elf.name) (e_machine \(image.elf.header.machine)) with the \(backend.architecture.name) backend")
        }
        self.image = image
        self.backend = backend
        self.space = space ?? CodeSpace(machine: image.machine)
        executor = DirectExecutor(machine: image.machine)
        let start = try backend.prepare(image)
        try executor.execute { changed in self.write(start, changed: changed, memory: self.machine.memory.view()) }
        runtime = try backend.installRuntime(for: image, space: self.space)
    }

    // MARK: Redirecting

    /// Redirects `function` to another function of the image.
    @discardableResult
    public func redirect(_ function: String, to target: String) throws -> ActiveRedirect {
        let symbol = try self.function(target)
        return try apply(function, .address(symbol.value), targetName: target)
    }

    /// Redirects `function` to code at `address` (already in guest memory).
    @discardableResult
    public func redirect(_ function: String, toAddress address: UInt64, label: String? = nil) throws -> ActiveRedirect {
        try apply(function, .address(address), targetName: label)
    }

    /// Places `code` in new executable guest memory (at `address` if given) and
    /// redirects `function` to it. If the redirect is refused the code is removed again.
    @discardableResult
    public func redirect(_ function: String, toCode code: [UInt8], at address: UInt64? = nil,
                         label: String? = nil) throws -> ActiveRedirect {
        let allocation = try address.map { try space.allocate(size: code.count, at: $0) } ?? space.allocate(size: code.count)
        do {
            try executor.execute { changed in
                try self.machine.memory.write(allocation.address, code)
                changed(allocation.address, code.count)
            }
            return try apply(function, .address(allocation.address), targetName: label ?? "new code at \(hex(allocation.address))",
                             extraAllocations: [allocation])
        } catch {
            space.release(allocation)
            throw error
        }
    }

    /// `new_addr == 0` for a whole function: it returns at once, doing nothing.
    @discardableResult
    public func makeNoOp(_ function: String) throws -> ActiveRedirect {
        try apply(function, .returnImmediately, targetName: nil)
    }

    /// `new_addr == 0` for part of a function: whole instructions in
    /// [offset, offset + length) become NOPs; the rest of the function still runs.
    @discardableResult
    public func nopOut(_ function: String, offset: UInt64, length: Int) throws -> ActiveRedirect {
        try apply(function, .nopOut(offset: offset, length: length), targetName: nil)
    }

    /// The patch site of `function` as the backend sees it.
    public func site(of function: String) throws -> PatchSite { try siteEntry(of: function).site }

    func siteEntry(of function: String) throws -> SiteEntry {
        if let known = sites[function] { return known }
        let site = try backend.patchSite(of: try self.function(function), in: image.elf)
        let entry = sitesByAddress[site.address] ?? SiteEntry(site: site)
        sitesByAddress[site.address] = entry
        sites[function] = entry
        return entry
    }

    public func redirects(of function: String) -> [ActiveRedirect] { active.filter { $0.function == function } }

    // MARK: Internals

    /// Whether `encoding` writes exactly the places `old` wrote (same sizes and kinds), neither
    /// with code of its own: the common take-over, decided on the packed writes alone.
    static func rewritesInPlace(_ old: ActiveRedirect, with encoding: Encoding) -> Bool {
        guard !old.encoding.allocates, !encoding.allocates else { return false }
        let a = old.packedWrites, b = encoding.packed
        return a.count == b.count && zip(a, b).allSatisfy { $0.address == $1.address && $0.count == $1.count && $0.isCode == $1.isCode }
    }

    /// The active redirect `id`: `active` is in id order (ids grow as redirects are listed).
    func activeEntry(_ id: Int) -> ActiveRedirect? {
        var low = 0, high = active.count
        while low < high {
            let mid = (low + high) / 2
            if active[mid].id < id { low = mid + 1 } else { high = mid }
        }
        return low < active.count && active[low].id == id ? active[low] : nil
    }

    func function(_ name: String) throws -> ELFSymbol {
        guard let s = image.elf.symbol(named: name), s.isFunction else { throw PatchError.noSuchFunction(name) }
        return s
    }

    func apply(_ name: String, _ target: RedirectTarget, targetName: String?,
                       extraAllocations: [CodeAllocation] = []) throws -> ActiveRedirect {
        let entries = try apply(batch: [BatchItem(function: name, target: target, label: targetName)])
        if !extraAllocations.isEmpty {
            // The new code belongs to this redirect: released with it.
            let i = active.count - 1
            var plan = active[i].plan
            plan.allocations += extraAllocations
            active[i] = ActiveRedirect(id: active[i].id, function: name, target: target, targetName: targetName,
                                       encoding: Encoding(target: target, plan: plan), packedUndo: active[i].packedUndo,
                                       siteEntry: active[i].siteEntry)
            return active[i]
        }
        return entries[0]
    }
}

/// Where the time of one action went, in nanoseconds: preparing (sites, encodings, checks,
/// allocations; nothing stopped), executing (the rendezvous, or direct writes), and the
/// bookkeeping after it (releasing what reverted redirects held).
public struct ActionTiming: Sendable {
    public var prepare: UInt64 = 0
    public var execute: UInt64 = 0
    public var finish: UInt64 = 0

    struct Clock {
        var last = DispatchTime.now().uptimeNanoseconds
        private(set) var result = ActionTiming()
        mutating func mark(_ phase: WritableKeyPath<ActionTiming, UInt64>) {
            let now = DispatchTime.now().uptimeNanoseconds
            result[keyPath: phase] = now - last
            last = now
        }
    }
}
