import SpliceBytes
import SpliceELF
import SpliceMachine

// Applying a batch while vCPUs run: the backend's non-stop steps, rolled back on failure.

extension LivePatcher {
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
    func perform(_ steps: [NonStopStep], _ step: (NonStopStep) throws -> Void,
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
    func rollBack(_ log: [(UInt64, [UInt8])], _ step: (NonStopStep) throws -> Void) {
        guard !log.isEmpty else { return }
        for (address, old) in log.reversed() {
            try? machine.memory.write(address, old)
            written.set(address, old)
        }
        for (address, old) in log { try? step(.write(address, old, purpose: "roll back")) }
        try? step(.sync)
    }

    /// Lists a prepared redirect whose writes are in place.
    func record(_ entry: ActiveRedirect) {
        entry.id = nextID
        nextID += 1
        active.append(entry)
    }
}
