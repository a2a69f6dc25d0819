import SpliceMachine

/// The checks and writes of one action, in order, laid out before any vCPU is stopped.
/// While they are stopped the master walks one contiguous array of inline bytes (no
/// redirect objects to chase, no tables to update: the patcher records what it wrote once
/// the vCPUs run again). A REPLACE of 1,000 functions is 2,000-3,000 of these steps.
struct StoppedWrites {
    struct Step {
        /// What must be at the place before this step (the step fails otherwise).
        let expected: PackedWrite
        /// What is written there (the same bytes for a step that only checks).
        let new: PackedWrite
        let writes: Bool
        /// Which redirect the step belongs to (named when it fails).
        let owner: Int32
    }

    private(set) var steps: [Step] = []
    private var owners: [ActiveRedirect] = []

    init(capacity: Int = 0) { steps.reserveCapacity(capacity) }

    /// Steps from here on belong to `redirect`.
    mutating func begin(_ redirect: ActiveRedirect) { owners.append(redirect) }

    /// Writes `new` where `expected` must be (the same place and size).
    mutating func write(_ new: PackedWrite, over expected: PackedWrite) {
        steps.append(Step(expected: expected, new: new, writes: true, owner: Int32(owners.count - 1)))
    }

    /// Checks that `expected` is in place, writing nothing.
    mutating func check(_ expected: PackedWrite) {
        steps.append(Step(expected: expected, new: expected, writes: false, owner: Int32(owners.count - 1)))
    }

    /// Makes every step, in order (call it while nothing runs). If a place does not hold
    /// what its step expects, every write made so far is put back, newest first, and
    /// nothing is left changed: `unexpectedBytes` names the redirect and the place.
    func run(memory: GuestMemory.View, changed: (UInt64, Int) -> Void) throws {
        for k in steps.indices {
            let s = steps[k]
            guard s.expected.withBytes({ memory.holds($0, at: s.expected.address) }) else {
                for d in steps[..<k].indices.reversed() where steps[d].writes {
                    Self.put(steps[d].expected, memory: memory, changed: changed)
                }
                let found = (try? memory.read(s.expected.address, count: s.expected.count)) ?? []
                throw PatchError.unexpectedBytes(function: owners[Int(s.owner)].function, address: s.expected.address,
                                                 expected: s.expected.bytes, found: found)
            }
            if s.writes { Self.put(s.new, memory: memory, changed: changed) }
        }
    }

    /// Each write, in order (the patcher's record of what memory holds, once it ran).
    func forEachWrite(_ body: (PackedWrite) -> Void) {
        for s in steps where s.writes { body(s.new) }
    }

    /// Every place was read (so it is mapped) while preparing: a write cannot fail.
    private static func put(_ w: PackedWrite, memory: GuestMemory.View, changed: (UInt64, Int) -> Void) {
        w.withBytes { try? memory.write(w.address, $0) }
        if w.isCode { changed(w.address, w.count) }
    }
}
