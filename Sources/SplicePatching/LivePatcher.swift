import SpliceBytes
import SpliceELF
import Dispatch
import SpliceMachine

/// One redirect (or NOP patch) in force. A class: REPLACE moves thousands of them around.
/// Made when a batch is prepared; listed, and given its id, once its writes are in memory.
public final class ActiveRedirect: @unchecked Sendable {
    /// Set once, when the redirect goes in force (0 while only prepared).
    public fileprivate(set) var id: Int
    public let function: String
    public let target: RedirectTarget
    /// The target's name when it has one (a function of the image, or a label).
    public let targetName: String?
    public var plan: PatchPlan { encoding.plan }
    /// Marked while a REPLACE that reverts it is prepared and executed.
    fileprivate var reverting = false
    /// Marked while a REPLACE whose new redirect takes it over in place is executed.
    fileprivate var takenOver = false
    /// The plan (shared by every redirect of this site to this target) and its writes packed.
    let encoding: Encoding
    /// The plan's writes, and what each of them replaced (the undo buffers), in write
    /// order, packed for the checks and writes made while vCPUs are stopped.
    var packedWrites: [PackedWrite] { encoding.packed }
    let packedUndo: [PackedWrite]
    /// The patcher's entry for `function`'s site.
    let siteEntry: SiteEntry

    /// What each write replaced, in write order: the undo buffers. An undo write carries
    /// the purpose of the write it undoes.
    public var undo: [CodeWrite] {
        zip(plan.writes, packedUndo).map { CodeWrite(address: $0.address, bytes: $1.bytes, purpose: $0.purpose, kind: $0.kind) }
    }

    init(id: Int, function: String, target: RedirectTarget, targetName: String?, encoding: Encoding,
         packedUndo: [PackedWrite], siteEntry: SiteEntry) {
        self.id = id
        self.function = function
        self.target = target
        self.targetName = targetName
        self.encoding = encoding
        self.packedUndo = packedUndo
        self.siteEntry = siteEntry
    }
}

/// What a patcher knows about one function's patch site, and scratch space for the
/// per-function bookkeeping of one action: a REPLACE of 1,000 functions checks "is a newer
/// redirect of this function kept?" and "which reverted redirect does this one take over?"
/// on the entries themselves, with no look-up by name.
final class SiteEntry {
    /// Found from the image's bytes: it never changes.
    let site: PatchSite
    /// The last bytes at the site (as much as a patch may overwrite) the backend
    /// accepted as an unpatched form: its answer depends on nothing else.
    var verifiedBytes: [UInt8]?
    /// The number of the last batch that checked this site (a batch checks it once).
    var checkedInBatch = 0
    /// Encodings that allocated nothing, newest last: they depend only on the image and
    /// the runtime, so applying the same payload again (REPLACE back and forth) reuses them.
    var encodings: [Encoding] = []
    static let encodingLimit = 4

    /// The scratch fields below belong to the pass numbered `pass` (see `begin(pass:)`).
    private(set) var pass = 0
    /// The newest redirect of this function that an action keeps (0: none).
    var newestKept = 0
    /// The index of this function's redirect among those an action reverts (-1: none,
    /// -2: several).
    var revertedIndex = -1
    /// How many redirects of this function an action adds.
    var added = 0

    init(site: PatchSite) { self.site = site }

    /// Makes the scratch fields this pass's, cleared if they were another's.
    @inline(__always)
    func begin(pass p: Int) {
        guard pass != p else { return }
        pass = p
        newestKept = 0
        revertedIndex = -1
        added = 0
    }
}

/// A plan as encoded once for a site and target, with its writes packed.
final class Encoding {
    let target: RedirectTarget
    let plan: PatchPlan
    let packed: [PackedWrite]
    /// Whether the plan allocated code space (asked per function, many times, by REPLACE:
    /// a stored answer, where `plan.allocations` would copy the whole plan out).
    let allocates: Bool
    init(target: RedirectTarget, plan: PatchPlan) {
        self.target = target
        self.plan = plan
        allocates = !plan.allocations.isEmpty
        packed = plan.writes.map { PackedWrite(address: $0.address, bytes: $0.bytes, kind: $0.kind) }
    }
}

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
    public private(set) var active: [ActiveRedirect] = []
    /// The backend's runtime in this machine (nil when it needs none).
    public private(set) var runtime: (any PatchRuntime)?
    /// Shadow variables of this machine, and the host calls that give guest code (payloads)
    /// access to them.
    public let shadows: ShadowVariables
    /// The applied payloads' states, for `splice_state_prev` (the loader keeps it).
    public let states = PayloadStates()
    public let hostCalls: HostCalls
    /// Where writes happen: directly (default), or inside a rendezvous of running vCPUs.
    /// Code allocations follow it (mapping a region touches every vCPU's emulator).
    public var executor: PatchExecutor {
        didSet { space.executor = executor is DirectExecutor ? nil : executor }
    }
    private var nextID = 1
    /// Where the time of the last batch apply or REPLACE went (for `splice bench rendezvous`).
    public private(set) var lastTiming = ActionTiming()
    /// Bytes this patcher wrote, by guest address: what memory must hold there now.
    private var written = ByteOverlay()
    /// What is known about each function's patch site, by function name: one look-up per
    /// function of a batch. Names of one address (aliases) share an entry.
    private var sites: [String: SiteEntry] = [:]
    private var sitesByAddress: [UInt64: SiteEntry] = [:]
    /// Numbers the batches `prepare` checks (see `SiteEntry.checkedInBatch`).
    private var batchNumber = 0
    /// Numbers the passes over site entries' scratch fields (see `SiteEntry.begin(pass:)`).
    private var passNumber = 0
    private func nextPass() -> Int {
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
        shadows = try ShadowVariables(space: self.space)
        let functions = shadows.hostFunctions + states.hostFunctions
        // Near the image's text: payloads placed there reach the entries with a direct call.
        let text = image.regions.filter { $0.permissions.contains(.execute) }.map { $0.end }.max()
        // A region of their own: code arenas come and go with redirects, this stays.
        let entries = try self.space.mapFree(name: "hostcalls", size: UInt64(functions.count) * HostCalls.entrySize,
                                             near: text ?? self.space.defaultBase, reach: 1 << 30,
                                             permissions: [.read, .execute])
        hostCalls = try HostCalls(machine: image.machine, base: entries.base, functions: functions)
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

    private func siteEntry(of function: String) throws -> SiteEntry {
        if let known = sites[function] { return known }
        let site = try backend.patchSite(of: try self.function(function), in: image.elf)
        let entry = sitesByAddress[site.address] ?? SiteEntry(site: site)
        sitesByAddress[site.address] = entry
        sites[function] = entry
        return entry
    }

    public func redirects(of function: String) -> [ActiveRedirect] { active.filter { $0.function == function } }

    // MARK: Reverting

    /// Reverts the topmost redirect of `function`.
    public func revert(_ function: String) throws {
        guard let top = active.last(where: { $0.function == function }) else { throw PatchError.notRedirected(function) }
        try revert(id: top.id)
    }

    /// Reverts redirect `id`; it must be the topmost one of its function.
    public func revert(id: Int) throws {
        let entry = try revertable(id)
        // Checked again once nothing runs, as the saved bytes go back, newest first.
        let plan = stoppedWrites(reverting: [entry], applying: [])
        try executor.execute { changed in try plan.run(memory: self.machine.memory.view(), changed: changed) }
        recordWrites(of: plan)
        finishRevert(entry)
    }

    /// Reverts redirect `id` without stopping anyone: the undo writes, newest first, each
    /// as the backend's non-stop sequence. A vCPU trapped meanwhile (x86-64 int3) is sent
    /// where the redirect still being removed goes. On ppc64le the reverse order removes
    /// the odd-TOC mark before the `bl`, so the mark is never there without the call.
    public func revertNonStop(id: Int, step: (NonStopStep) throws -> Void) throws {
        let entry = try revertable(id)
        var log: [(UInt64, [UInt8])] = []
        do {
            try perform(nonStopRevertSteps(for: entry), step, log: &log)
        } catch {
            rollBack(log, step)
            throw error
        }
        finishRevert(entry)
    }

    /// The non-stop sequence that takes `entry` back (see `revertNonStop`). Data the
    /// backend's runtime code reads (a ppc64le table entry) is changed only after every
    /// vCPU has passed a quiescent point: one may still be between a call the earlier
    /// steps removed and its read of that data.
    public func nonStopRevertSteps(for entry: ActiveRedirect) -> [NonStopStep] {
        zip(entry.plan.writes, entry.undo).reversed().flatMap { w, undo in
            (undo.kind == .data ? [NonStopStep.quiesce] : []) + backend.nonStopSteps(for: [undo]).map { s -> NonStopStep in
                // While the trap is armed the redirect is still in force: trapped vCPUs take it.
                if case let .trapArmed(address, _) = s { return .trapArmed(address, final: w.bytes) }
                return s
            }
        }
    }

    /// Redirect `id`, if it may be reverted now: the topmost of its function, its writes
    /// still in memory.
    private func revertable(_ id: Int) throws -> ActiveRedirect {
        guard let entry = activeEntry(id) else { throw PatchError.noSuchRedirect(id) }
        if let top = active.last(where: { $0.siteEntry === entry.siteEntry }), top.id != id {
            throw PatchError.notTopmost(function: entry.function, id: id, top: top.id)
        }
        try checkInPlace(entry, machine.memory.view())
        return entry
    }

    /// Memory must still hold exactly what `entry` wrote; with `overlay`, memory as it
    /// will be once the overlay's bytes are put over it.
    private func checkInPlace(_ entry: ActiveRedirect, _ memory: GuestMemory.View, under overlay: ByteOverlay? = nil) throws {
        if overlay == nil, entry.packedWrites.allSatisfy({ p in p.withBytes { memory.holds($0, at: p.address) } }) { return }
        var found: [UInt8] = []
        for p in entry.packedWrites {
            try memory.read(p.address, count: p.count, into: &found)
            overlay?.apply(to: &found, at: p.address)
            guard p.withBytes({ $0.elementsEqual(found) }) else {
                throw PatchError.unexpectedBytes(function: entry.function, address: p.address, expected: p.bytes, found: found)
            }
        }
    }

    /// Bookkeeping once `entry`'s undo writes are in memory.
    private func finishRevert(_ entry: ActiveRedirect) {
        releaseHeld(by: entry)
        active.removeAll { $0.id == entry.id }
    }

    /// Forgets what `entry` wrote into its own allocations and releases them.
    private func releaseHeld(by entry: ActiveRedirect) {
        guard entry.encoding.allocates else { return }
        for w in entry.plan.writes where isAllocated(w.address, in: entry) { forget(w) }
        for a in entry.plan.allocations { space.release(a) }
    }

    /// Reverts every redirect, newest first.
    public func revertAll() throws {
        while let last = active.last { try revert(id: last.id) }
    }

    /// Applies `batch` without stopping anyone (Linux's text_poke_bp): every write is made as the
    /// backend's non-stop sequence (x86-64: the int3 protocol; ppc64le: whole aligned
    /// words in an order that keeps the odd-TOC mark consistent). `step` is called after
    /// each step: the caller syncs the vCPUs there (and a deterministic scheduler lets them
    /// run), and tracks armed traps.
    @discardableResult
    public func applyNonStop(batch: [BatchItem], step: (NonStopStep) throws -> Void) throws -> [ActiveRedirect] {
        let prepared = try prepare(batch: batch)
        for e in prepared.entries {
            for before in e.undo {
                let found = try machine.memory.read(before.address, count: before.bytes.count)
                guard found == before.bytes else {
                    abandon(prepared)
                    throw PatchError.unexpectedBytes(function: e.function, address: before.address, expected: before.bytes, found: found)
                }
            }
        }
        var log: [(UInt64, [UInt8])] = []
        do {
            for e in prepared.entries { try perform(backend.nonStopSteps(for: e.plan.writes), step, log: &log) }
        } catch {
            rollBack(log, step)
            abandon(prepared)
            throw error
        }
        for e in prepared.entries { record(e) }
        return prepared.entries
    }

    /// Makes each `.write` of a non-stop sequence (one store) and hands every step to `step`;
    /// `log` gets what each write replaced.
    private func perform(_ steps: [NonStopStep], _ step: (NonStopStep) throws -> Void,
                         log: inout [(UInt64, [UInt8])]) throws {
        for s in steps {
            if case let .write(address, bytes, _) = s {
                log.append((address, try machine.memory.read(address, count: bytes.count)))
                try machine.memory.write(address, bytes)
                written.set(address, bytes)
            }
            try step(s)
        }
    }

    /// A non-stop sequence failed part-way (a sync could not complete): every store it made
    /// is taken back, newest first, and one more sync makes every vCPU see that.
    private func rollBack(_ log: [(UInt64, [UInt8])], _ step: (NonStopStep) throws -> Void) {
        guard !log.isEmpty else { return }
        for (address, old) in log.reversed() {
            try? machine.memory.write(address, old)
            written.set(address, old)
        }
        for (address, old) in log { try? step(.write(address, old, purpose: "roll back")) }
        try? step(.sync)
    }

    /// Lists a prepared redirect whose writes are in place.
    private func record(_ entry: ActiveRedirect) {
        entry.id = nextID
        nextID += 1
        active.append(entry)
    }

    /// REPLACE: reverts `ids` (newest first) and applies `batch`, in one execution (one
    /// rendezvous while vCPUs run). Everything is prepared first, against memory as it will
    /// be after the reverts; if any write fails, the machine is left exactly as before.
    @discardableResult
    public func replace(reverting ids: [Int], with batch: [BatchItem]) throws -> [ActiveRedirect] {
        var timing = ActionTiming.Clock()
        var entries: [ActiveRedirect] = []
        defer { for e in entries { e.reverting = false; e.takenOver = false } }
        let overlay = try markReverting(ids, into: &entries)
        let prepared = try prepare(batch: batch, overlay: overlay, reverted: entries)
        let previous = takeOvers(from: entries, by: prepared.entries, withOwnCode: false)
        let plan = stoppedWrites(reverting: entries, applying: prepared.entries, previous: previous)
        timing.mark(\.prepare)
        do {
            try executor.execute { changed in try plan.run(memory: self.machine.memory.view(), changed: changed) }
        } catch {
            abandon(prepared)
            throw error
        }
        timing.mark(\.execute)
        recordWrites(of: plan)
        for e in entries { releaseHeld(by: e) }
        active.removeAll { $0.reverting }
        for e in prepared.entries { record(e) }
        timing.mark(\.finish)
        lastTiming = timing.result
        return prepared.entries
    }

    /// Marks redirects `ids` as being reverted by a REPLACE, into `entries` newest first
    /// (the caller clears the marks), after checking each may go: nothing kept stacked on
    /// top of it, its writes still in memory. Returns the bytes their undo buffers put back.
    private func markReverting(_ ids: [Int], into entries: inout [ActiveRedirect]) throws -> ByteOverlay {
        // One walk of `active` (in id order) against the ids sorted: it finds each redirect
        // and notes, per function, the newest redirect that stays.
        let wanted = ids.sorted()
        entries.reserveCapacity(wanted.count)
        let pass = nextPass()
        var k = 0
        for a in active {
            let id = a.id
            if k < wanted.count && wanted[k] < id { throw PatchError.noSuchRedirect(wanted[k]) }
            if k < wanted.count && wanted[k] == id {
                a.reverting = true
                entries.append(a)
                while k < wanted.count && wanted[k] == id { k += 1 } // named twice
            } else {
                a.siteEntry.begin(pass: pass)
                a.siteEntry.newestKept = id
            }
        }
        if k < wanted.count { throw PatchError.noSuchRedirect(wanted[k]) }
        entries.reverse() // newest first
        for e in entries {
            // Whatever is stacked on top of e must be reverted too.
            let s = e.siteEntry
            s.begin(pass: pass)
            if s.newestKept > e.id { throw PatchError.notTopmost(function: e.function, id: e.id, top: s.newestKept) }
            s.revertedIndex = s.revertedIndex == -1 ? 0 : -2
        }
        // Each must be in place once the newer ones are undone: for a function with several
        // (stacked) redirects reverted, memory under the undo bytes of the newer ones. Only
        // redirects of one site write the same places (their other writes are to their own
        // allocations), so the others are checked against memory alone.
        let memory = machine.memory.view()
        var overlay = ByteOverlay()
        for e in entries {
            try checkInPlace(e, memory, under: e.siteEntry.revertedIndex == -2 ? overlay : nil)
            for p in e.packedUndo.reversed() { p.withBytes { overlay.set(p.address, $0) } }
        }
        return overlay
    }

    /// REPLACE without stopping anyone: reverts `ids` and applies `batch` as non-stop
    /// sequences (see `applyNonStop`). A function that one reverted redirect and one new
    /// redirect both patch, with writes of the same places and sizes, goes straight from the
    /// old target to the new one (x86-64: one int3 protocol on the jump; ppc64le: the site
    /// table entry), so a call of it runs the old or the new code, never the original.
    /// Other functions are reverted (newest first), then the new ones applied. Across
    /// functions there is no single instant of change: that is what the rendezvous is for.
    /// If a sync fails, every store made is taken back: memory is as before.
    @discardableResult
    public func replaceNonStop(reverting ids: [Int], with batch: [BatchItem],
                               step: (NonStopStep) throws -> Void) throws -> [ActiveRedirect] {
        var entries: [ActiveRedirect] = []
        defer { for e in entries { e.reverting = false } }
        let overlay = try markReverting(ids, into: &entries)
        let prepared = try prepare(batch: batch, overlay: overlay, reverted: entries)
        var log: [(UInt64, [UInt8])] = []
        do {
            try perform(nonStopTransitionSteps(from: entries, to: prepared.entries), step, log: &log)
        } catch {
            rollBack(log, step)
            abandon(prepared)
            throw error
        }
        for e in entries { releaseHeld(by: e) }
        active.removeAll { $0.reverting }
        for e in prepared.entries { record(e) }
        return prepared.entries
    }

    /// The non-stop sequence of a REPLACE (see `replaceNonStop`): `reverted` newest first.
    func nonStopTransitionSteps(from reverted: [ActiveRedirect], to new: [ActiveRedirect]) -> [NonStopStep] {
        let previous = takeOvers(from: reverted, by: new, withOwnCode: true)
        defer { for e in reverted { e.takenOver = false } }
        var ownCode: [CodeWrite] = [], retarget: [NonStopStep] = []
        for (n, old) in zip(new, previous) {
            guard let old else { continue }
            ownCode += n.plan.writes.filter { isAllocated($0.address, in: n) }
            for (w, was) in zip(placedWrites(of: n), placedWrites(of: old)) where w.bytes != was.bytes {
                retarget += backend.nonStopSteps(for: [w])
            }
        }
        var steps: [NonStopStep] = []
        for e in reverted where !e.takenOver { steps += nonStopRevertSteps(for: e) }
        if !ownCode.isEmpty {
            // New code nothing jumps to yet: written as it is, then one sync, so no vCPU
            // keeps a translation of whatever was at those addresses before.
            steps += ownCode.map { .write($0.address, $0.bytes, purpose: $0.purpose) } + [.sync]
        }
        steps += retarget
        for (n, old) in zip(new, previous) where old == nil { steps += backend.nonStopSteps(for: n.plan.writes) }
        return steps
    }

    /// The writes of `r` other code can reach: those outside its own allocations.
    private func placedWrites(of r: ActiveRedirect) -> [CodeWrite] {
        !r.encoding.allocates ? r.plan.writes : r.plan.writes.filter { !isAllocated($0.address, in: r) }
    }

    /// For each new redirect of a REPLACE, the reverted one it takes over in place, if any
    /// (those are marked `takenOver`): the only one of its function on both sides, writing
    /// the same places with the same sizes and kinds (outside their own allocations, which
    /// only `withOwnCode` allows).
    func takeOvers(from reverted: [ActiveRedirect], by new: [ActiveRedirect], withOwnCode: Bool) -> [ActiveRedirect?] {
        guard !reverted.isEmpty else { return Array(repeating: nil, count: new.count) }
        let pass = nextPass()
        for (i, e) in reverted.enumerated() {
            let s = e.siteEntry
            s.begin(pass: pass)
            s.revertedIndex = s.revertedIndex == -1 ? i : -2
        }
        for n in new {
            n.siteEntry.begin(pass: pass)
            n.siteEntry.added += 1
        }
        return new.map { n in
            let s = n.siteEntry
            guard s.added == 1, s.revertedIndex >= 0 else { return nil }
            let old = reverted[s.revertedIndex]
            if !Self.rewritesInPlace(old, with: n.encoding) {
                guard withOwnCode, old.encoding.allocates || n.encoding.allocates else { return nil }
                let a = placedWrites(of: old), b = placedWrites(of: n)
                guard a.count == b.count,
                      zip(a, b).allSatisfy({ $0.address == $1.address && $0.bytes.count == $1.bytes.count && $0.kind == $1.kind })
                else { return nil }
            }
            old.takenOver = true
            return old
        }
    }

    // MARK: Internals

    /// Whether `encoding` writes exactly the places `old` wrote (same sizes and kinds), neither
    /// with code of its own: the common take-over, decided on the packed writes alone.
    static func rewritesInPlace(_ old: ActiveRedirect, with encoding: Encoding) -> Bool {
        guard !old.encoding.allocates, !encoding.allocates else { return false }
        let a = old.packedWrites, b = encoding.packed
        return a.count == b.count && zip(a, b).allSatisfy { $0.address == $1.address && $0.count == $1.count && $0.isCode == $1.isCode }
    }

    /// The active redirect `id`: `active` is in id order (ids grow as redirects are listed).
    private func activeEntry(_ id: Int) -> ActiveRedirect? {
        var low = 0, high = active.count
        while low < high {
            let mid = (low + high) / 2
            if active[mid].id < id { low = mid + 1 } else { high = mid }
        }
        return low < active.count && active[low].id == id ? active[low] : nil
    }

    private func function(_ name: String) throws -> ELFSymbol {
        guard let s = image.elf.symbol(named: name), s.isFunction else { throw PatchError.noSuchFunction(name) }
        return s
    }

    private func apply(_ name: String, _ target: RedirectTarget, targetName: String?,
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

    /// One function of a batch.
    public struct BatchItem: Sendable {
        public var function: String
        public var target: RedirectTarget
        public var label: String?
        public init(function: String, target: RedirectTarget, label: String? = nil) {
            self.function = function
            self.target = target
            self.label = label
        }
    }

    /// A batch encoded, allocated and checked, not yet written.
    public struct PreparedBatch {
        /// The redirects as they will be listed once the batch is committed.
        let entries: [ActiveRedirect]
        public var items: [BatchItem] { entries.map { BatchItem(function: $0.function, target: $0.target, label: $0.targetName) } }
        public var plans: [PatchPlan] { entries.map(\.plan) }
        /// For each plan, what each write will replace (checked again at commit).
        public var undos: [[CodeWrite]] { entries.map(\.undo) }
    }

    /// Applies several redirects as one: every site is found, every plan encoded and every
    /// place checked before the first byte is written, so either all of them are in force
    /// afterwards or none is (and allocations are released). The writes go through the
    /// executor (inside a rendezvous when vCPUs are running).
    @discardableResult
    public func apply(batch: [BatchItem]) throws -> [ActiveRedirect] {
        var timing = ActionTiming.Clock()
        let prepared = try prepare(batch: batch)
        let plan = stoppedWrites(reverting: [], applying: prepared.entries)
        timing.mark(\.prepare)
        do {
            try executor.execute { changed in try plan.run(memory: self.machine.memory.view(), changed: changed) }
        } catch {
            abandon(prepared)
            throw error
        }
        timing.mark(\.execute)
        recordWrites(of: plan)
        for e in prepared.entries { record(e) }
        timing.mark(\.finish)
        lastTiming = timing.result
        return prepared.entries
    }

    /// Everything a batch needs, before any vCPU is stopped: sites, encodings, far-jump
    /// slots and stubs, and the bytes each write will replace.
    public func prepare(batch: [BatchItem]) throws -> PreparedBatch {
        try prepare(batch: batch, overlay: ByteOverlay())
    }

    /// Prepares `batch` against memory as it will be once `reverted` (marked `reverting`)
    /// are reverted: `overlay` holds the bytes their undo buffers put back.
    func prepare(batch: [BatchItem], overlay: ByteOverlay, reverted: [ActiveRedirect] = []) throws -> PreparedBatch {
        let elf = image.elf
        // Scratch buffers, reused: checking 1,000 functions allocates only what it keeps.
        var current: [UInt8] = [], expected: [UInt8] = []
        current.reserveCapacity(32)
        expected.reserveCapacity(32)
        var memory = machine.memory.view()
        func read(_ address: UInt64, _ count: Int) throws {
            try memory.read(address, count: count, into: &current)
            overlay.apply(to: &current, at: address)
        }
        var entries: [ActiveRedirect] = []
        entries.reserveCapacity(batch.count)
        var allocated: [CodeAllocation] = []
        // The functions with a redirect that stays: their sites were checked when it went in.
        let pass = nextPass()
        for a in active where !a.reverting {
            a.siteEntry.begin(pass: pass)
            a.siteEntry.newestKept = a.id
        }
        for (i, e) in reverted.enumerated() {
            let s = e.siteEntry
            s.begin(pass: pass)
            s.revertedIndex = s.revertedIndex == -1 ? i : -2
        }
        batchNumber += 1
        do {
            for item in batch {
                let entry = try siteEntry(of: item.function)
                let site = entry.site
                // Each site once per batch; a site already redirected was checked then.
                entry.begin(pass: pass)
                if entry.checkedInBatch != batchNumber && entry.newestKept == 0 {
                    entry.checkedInBatch = batchNumber
                    try read(site.address, min(site.room, backend.undoBufferSize))
                    try verifyUnpatched(current, at: entry, in: elf)
                }
                let encoding = try encode(item.target, at: entry, in: elf)
                let allocations = encoding.allocates ? encoding.plan.allocations : []
                if !allocations.isEmpty {
                    allocated += allocations
                    memory = machine.memory.view() // encoding may have mapped code
                }
                entry.added += 1
                if entry.added == 1, entry.revertedIndex >= 0,
                   case let old = reverted[entry.revertedIndex], Self.rewritesInPlace(old, with: encoding) {
                    // The only reverted redirect of this site wrote the same places: once it
                    // is undone they hold its undo bytes (it was checked in place).
                    entries.append(ActiveRedirect(id: 0, function: item.function, target: item.target, targetName: item.label,
                                                  encoding: encoding, packedUndo: old.packedUndo, siteEntry: entry))
                    continue
                }
                var undo: [PackedWrite] = []
                undo.reserveCapacity(encoding.packed.count)
                for w in encoding.packed {
                    if overlay.known(w.address, count: w.count, into: &current) {
                        // The reverts put these bytes back (their writes were checked in place).
                        undo.append(PackedWrite(address: w.address, bytes: current, isCode: w.isCode))
                        continue
                    }
                    try read(w.address, w.count)
                    // Freshly allocated code holds nothing anyone expects.
                    let ownAllocation = !allocations.isEmpty
                        && allocations.contains { $0.address <= w.address && w.address < $0.address + UInt64($0.size) }
                    if !ownAllocation, self.expected(at: w.address, count: w.count, in: elf, into: &expected) {
                        overlay.apply(to: &expected, at: w.address)
                        guard expected == current else {
                            throw PatchError.unexpectedBytes(function: item.function, address: w.address, expected: expected, found: current)
                        }
                    }
                    undo.append(PackedWrite(address: w.address, bytes: current, isCode: w.isCode))
                }
                entries.append(ActiveRedirect(id: 0, function: item.function, target: item.target, targetName: item.label,
                                              encoding: encoding, packedUndo: undo, siteEntry: entry))
            }
            return PreparedBatch(entries: entries)
        } catch {
            for a in allocated { space.release(a) }
            throw error
        }
    }

    /// The backend's check that `current` (at `site`) is an unpatched form. The answer for
    /// the image's own bytes is remembered per site: REPLACE checks every site again.
    private func verifyUnpatched(_ current: [UInt8], at entry: SiteEntry, in elf: ELFFile) throws {
        if current == entry.verifiedBytes { return }
        try backend.verifyUnpatched(current, at: entry.site, in: elf)
        entry.verifiedBytes = current
    }

    private func encode(_ target: RedirectTarget, at entry: SiteEntry, in elf: ELFFile) throws -> Encoding {
        for known in entry.encodings where known.target == target { return known }
        let encoding = Encoding(target: target,
                                plan: try backend.encode(target, at: entry.site, in: elf, runtime: runtime, space: space))
        if !encoding.allocates {
            if entry.encodings.count >= SiteEntry.encodingLimit { entry.encodings.removeFirst() }
            entry.encodings.append(encoding)
        }
        return encoding
    }

    /// Releases what `prepare` allocated, for a batch that will not be committed.
    public func abandon(_ prepared: PreparedBatch) {
        for e in prepared.entries where e.encoding.allocates { for a in e.plan.allocations { space.release(a) } }
    }

    /// The steps that take `reverted` (newest first) out and put `entries` in, to be made
    /// while nothing runs: each reverted redirect's undo bytes over its writes (newest write
    /// first), then each new redirect's writes over the bytes `prepare` saw there. Every
    /// place is checked as it is written; if one does not hold what is expected, everything
    /// written so far is put back, so nothing stays half-applied.
    ///
    /// `previous[k]`, when given, is a reverted redirect that entry k takes over in place
    /// (`takeOvers`): it is not undone; only the bytes that differ are written over it (on
    /// ppc64le the site table entry alone; on x86-64 the jump), the others checked.
    func stoppedWrites(reverting reverted: [ActiveRedirect], applying entries: [ActiveRedirect],
                       previous: [ActiveRedirect?] = []) -> StoppedWrites {
        var plan = StoppedWrites(capacity: 3 * (reverted.count + entries.count))
        for e in reverted where !e.takenOver {
            plan.begin(e)
            let w = e.packedWrites, u = e.packedUndo
            for i in w.indices.reversed() { plan.write(u[i], over: w[i]) }
        }
        for k in entries.indices {
            let n = entries[k], w = n.packedWrites
            plan.begin(n)
            if k < previous.count, let old = previous[k] {
                let was = old.packedWrites
                for i in w.indices {
                    if w[i] == was[i] { plan.check(was[i]) } else { plan.write(w[i], over: was[i]) }
                }
            } else {
                let u = n.packedUndo
                for i in w.indices { plan.write(w[i], over: u[i]) }
            }
        }
        return plan
    }

    /// Once `plan` ran: the bytes this patcher wrote, as memory now holds them.
    private func recordWrites(of plan: StoppedWrites) {
        plan.forEachWrite { written.set($0, $1) }
    }

    /// Encodes a redirect without writing anything (a load-time check that a payload's
    /// functions can be patched); whatever the encoding allocated is released.
    public func check(_ item: BatchItem) throws {
        let site = try site(of: item.function)
        let plan = try backend.encode(item.target, at: site, in: image.elf, runtime: runtime, space: space)
        for a in plan.allocations { space.release(a) }
    }

    /// What memory should hold at [address, address + count), into `bytes`: what this
    /// patcher wrote, else the image's own bytes. False when that is not known (allocated
    /// code this patcher did not write).
    private func expected(at address: UInt64, count: Int, in elf: ELFFile, into bytes: inout [UInt8]) -> Bool {
        guard elf.copyContents(at: address, count: count, into: &bytes) else {
            return written.known(address, count: count, into: &bytes)
        }
        written.apply(to: &bytes, at: address)
        return true
    }

    /// Writes in order and reports each changed range. Every place was read (so it is
    /// mapped) before; a write cannot fail half-way.
    private func write<S: Sequence>(_ writes: S, changed: (UInt64, Int) -> Void, memory: GuestMemory.View)
    where S.Element == CodeWrite {
        for w in writes { write(PackedWrite(address: w.address, bytes: w.bytes, kind: w.kind), changed: changed, memory: memory) }
    }

    private func write(_ w: PackedWrite, changed: (UInt64, Int) -> Void, memory: GuestMemory.View) {
        w.withBytes { bytes in
            try? memory.write(w.address, bytes)
            written.set(w.address, bytes)
        }
        if w.isCode { changed(w.address, w.count) }
    }

    private func isAllocated(_ address: UInt64, in entry: ActiveRedirect) -> Bool {
        entry.plan.allocations.contains { $0.address <= address && address < $0.address + UInt64($0.size) }
    }

    private func forget(_ w: CodeWrite) {
        written.remove(w.address, count: w.bytes.count)
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
        private var last = DispatchTime.now().uptimeNanoseconds
        private(set) var result = ActionTiming()
        mutating func mark(_ phase: WritableKeyPath<ActionTiming, UInt64>) {
            let now = DispatchTime.now().uptimeNanoseconds
            result[keyPath: phase] = now - last
            last = now
        }
    }
}
