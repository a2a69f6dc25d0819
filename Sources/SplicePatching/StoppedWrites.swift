import SpliceMachine

/// The checks and writes of one action, in order, laid out before any vCPU is stopped.
/// While they are stopped the master walks one contiguous array of inline bytes (no
/// redirect objects to chase, no tables to update: the patcher records what it wrote once
/// the vCPUs run again). A REPLACE of 1,000 functions is 2,000-3,000 of these steps.
struct StoppedWrites {
    /// One place: plain values only, so walking and copying steps costs no reference
    /// counting. Bytes longer than `PackedWrite.inlineCapacity` (a long NOP fill) live in
    /// `spilled`.
    private struct Step {
        /// What must be at the place before this step (the step fails otherwise).
        let expected: PackedWrite.Inline
        /// What is written there (the same bytes for a step that only checks).
        let new: PackedWrite.Inline
        let address: UInt64
        let count: Int32
        /// Which redirect the step belongs to (named when it fails).
        let owner: Int32
        /// Index into `spilled`, or -1.
        let spill: Int32
        let writes: Bool
        let isCode: Bool
    }

    private var steps: [Step] = []
    private var spilled: [(expected: [UInt8], new: [UInt8])] = []
    private var owners: [ActiveRedirect] = []

    init(capacity: Int = 0) { steps.reserveCapacity(capacity) }

    /// Steps from here on belong to `redirect`.
    mutating func begin(_ redirect: ActiveRedirect) { owners.append(redirect) }

    /// Writes `new` where `expected` must be (the same place and size).
    mutating func write(_ new: PackedWrite, over expected: PackedWrite) { add(expected, new, writes: true) }

    /// Checks that `expected` is in place, writing nothing.
    mutating func check(_ expected: PackedWrite) { add(expected, expected, writes: false) }

    private mutating func add(_ expected: PackedWrite, _ new: PackedWrite, writes: Bool) {
        var spill: Int32 = -1
        if expected.inline == nil || new.inline == nil {
            spill = Int32(spilled.count)
            spilled.append((expected.bytes, new.bytes))
        }
        steps.append(Step(expected: expected.inline ?? .init(), new: new.inline ?? .init(), address: new.address,
                          count: Int32(new.count), owner: Int32(owners.count - 1), spill: spill, writes: writes,
                          isCode: new.isCode))
    }

    /// Makes every step, in order (call it while nothing runs). If a place does not hold
    /// what its step expects, every write made so far is put back, newest first, and
    /// nothing is left changed: `unexpectedBytes` names the redirect and the place.
    func run(memory: GuestMemory.View, changed: (UInt64, Int) -> Void) throws {
        for k in steps.indices {
            let s = steps[k]
            guard withBytes(s, expected: true, { memory.holds($0, at: s.address) }) else {
                for d in steps[..<k].indices.reversed() where steps[d].writes { put(steps[d], expected: true, memory, changed) }
                let found = (try? memory.read(s.address, count: Int(s.count))) ?? []
                throw PatchError.unexpectedBytes(function: owners[Int(s.owner)].function, address: s.address,
                                                 expected: withBytes(s, expected: true) { Array($0) }, found: found)
            }
            if s.writes { put(s, expected: false, memory, changed) }
        }
    }

    /// Each write, in order (the patcher's record of what memory holds, once it ran).
    func forEachWrite(_ body: (UInt64, UnsafeRawBufferPointer) -> Void) {
        for s in steps where s.writes { withBytes(s, expected: false) { body(s.address, $0) } }
    }

    @inline(__always)
    private func withBytes<R>(_ s: Step, expected: Bool, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        if s.spill >= 0 {
            let (e, n) = spilled[Int(s.spill)]
            return (expected ? e : n).withUnsafeBytes(body)
        }
        return (expected ? s.expected : s.new).withBytes(count: Int(s.count), body)
    }

    /// Every place was read (so it is mapped) while preparing: a write cannot fail.
    private func put(_ s: Step, expected: Bool, _ memory: GuestMemory.View, _ changed: (UInt64, Int) -> Void) {
        withBytes(s, expected: expected) { try? memory.write(s.address, $0) }
        if s.isCode { changed(s.address, Int(s.count)) }
    }
}
