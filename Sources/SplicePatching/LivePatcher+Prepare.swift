import SpliceBytes
import SpliceELF
import SpliceMachine

// Prepared writes and the stopped window: a batch is checked, encoded and allocated
// before anything stops; while the vCPUs are stopped only its packed writes are made.

extension LivePatcher {
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
        try execute(plan, abandoning: prepared, timing: &timing)
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
            s.noteReverted(at: i)
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
                if entry.added == 1, case let .one(index) = entry.reverted,
                   case let old = reverted[index], Self.rewritesInPlace(old, with: encoding) {
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
    func verifyUnpatched(_ current: [UInt8], at entry: SiteEntry, in elf: ELFFile) throws {
        if current == entry.verifiedBytes { return }
        try backend.verifyUnpatched(current, at: entry.site, in: elf)
        entry.verifiedBytes = current
    }

    func encode(_ target: RedirectTarget, at entry: SiteEntry, in elf: ELFFile) throws -> Encoding {
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
    /// The stopped window: `plan`'s writes through the executor (every vCPU held), then
    /// recorded as what memory must hold. If the executor fails (a rendezvous timeout),
    /// nothing was written and what `prepared` allocated is released.
    func execute(_ plan: StoppedWrites, abandoning prepared: PreparedBatch, timing: inout ActionTiming.Clock) throws {
        timing.mark(\.prepare)
        do {
            try executor.execute { changed in try plan.run(memory: self.machine.memory.view(), changed: changed) }
        } catch {
            abandon(prepared)
            throw error
        }
        timing.mark(\.execute)
        recordWrites(of: plan)
    }

    func recordWrites(of plan: StoppedWrites) {
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
    func expected(at address: UInt64, count: Int, in elf: ELFFile, into bytes: inout [UInt8]) -> Bool {
        guard elf.copyContents(at: address, count: count, into: &bytes) else {
            return written.known(address, count: count, into: &bytes)
        }
        written.apply(to: &bytes, at: address)
        return true
    }

    /// Writes in order and reports each changed range. Every place was read (so it is
    /// mapped) before; a write cannot fail half-way.
    func write<S: Sequence>(_ writes: S, changed: (UInt64, Int) -> Void, memory: GuestMemory.View)
    where S.Element == CodeWrite {
        for w in writes { write(PackedWrite(address: w.address, bytes: w.bytes, kind: w.kind), changed: changed, memory: memory) }
    }

    func write(_ w: PackedWrite, changed: (UInt64, Int) -> Void, memory: GuestMemory.View) {
        w.withBytes { bytes in
            try? memory.write(w.address, bytes)
            written.set(w.address, bytes)
        }
        if w.isCode { changed(w.address, w.count) }
    }

    func isAllocated(_ address: UInt64, in entry: ActiveRedirect) -> Bool {
        entry.plan.allocations.contains { $0.address <= address && address < $0.address + UInt64($0.size) }
    }

    func forget(_ w: CodeWrite) {
        written.remove(w.address, count: w.bytes.count)
    }
}
