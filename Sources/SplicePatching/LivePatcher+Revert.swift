import SpliceBytes
import SpliceELF
import SpliceMachine

// Taking redirects back: one, all, or as a non-stop sequence.

extension LivePatcher {
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
    func revertable(_ id: Int) throws -> ActiveRedirect {
        guard let entry = activeEntry(id) else { throw PatchError.noSuchRedirect(id) }
        if let top = active.last(where: { $0.siteEntry === entry.siteEntry }), top.id != id {
            throw PatchError.notTopmost(function: entry.function, id: id, top: top.id)
        }
        try checkInPlace(entry, machine.memory.view())
        return entry
    }

    /// Memory must still hold exactly what `entry` wrote; with `overlay`, memory as it
    /// will be once the overlay's bytes are put over it.
    func checkInPlace(_ entry: ActiveRedirect, _ memory: GuestMemory.View, under overlay: ByteOverlay? = nil) throws {
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
    func finishRevert(_ entry: ActiveRedirect) {
        releaseHeld(by: entry)
        active.removeAll { $0.id == entry.id }
    }

    /// Forgets what `entry` wrote into its own allocations and releases them.
    func releaseHeld(by entry: ActiveRedirect) {
        guard entry.encoding.allocates else { return }
        for w in entry.plan.writes where isAllocated(w.address, in: entry) { forget(w) }
        for a in entry.plan.allocations { space.release(a) }
    }

    /// Reverts every redirect, newest first.
    public func revertAll() throws {
        while let last = active.last { try revert(id: last.id) }
    }
}
