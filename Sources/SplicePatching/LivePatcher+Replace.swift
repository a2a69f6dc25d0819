import SpliceBytes
import SpliceELF
import SpliceMachine

// REPLACE planning: which redirects a new batch takes over in place, and the writes of
// the switch from the old set to the new one.

extension LivePatcher {
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
        try execute(plan, abandoning: prepared, timing: &timing)
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
    func markReverting(_ ids: [Int], into entries: inout [ActiveRedirect]) throws -> ByteOverlay {
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
            s.noteReverted(at: 0)
        }
        // Each must be in place once the newer ones are undone: for a function with several
        // (stacked) redirects reverted, memory under the undo bytes of the newer ones. Only
        // redirects of one site write the same places (their other writes are to their own
        // allocations), so the others are checked against memory alone.
        let memory = machine.memory.view()
        var overlay = ByteOverlay()
        for e in entries {
            try checkInPlace(e, memory, under: e.siteEntry.reverted == .several ? overlay : nil)
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
    func placedWrites(of r: ActiveRedirect) -> [CodeWrite] {
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
            s.noteReverted(at: i)
        }
        for n in new {
            n.siteEntry.begin(pass: pass)
            n.siteEntry.added += 1
        }
        return new.map { n in
            let s = n.siteEntry
            guard s.added == 1, case let .one(index) = s.reverted else { return nil }
            let old = reverted[index]
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
}
