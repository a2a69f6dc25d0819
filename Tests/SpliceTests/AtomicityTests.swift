import Splice
import XCTest

/// An action is all-or-nothing: if the k-th function's old bytes no longer verify when
/// the writes happen, the first k−1 are undone before anyone runs again.
final class AtomicityTests: XCTestCase {
    /// Runs the work directly, but first changes one byte at `address` (as if another
    /// agent had written there between prepare and commit).
    final class TamperingExecutor: PatchExecutor {
        let machine: Machine
        let address: UInt64
        init(machine: Machine, address: UInt64) {
            self.machine = machine
            self.address = address
        }
        func execute(_ work: ((UInt64, Int) -> Void) throws -> Void) throws {
            try machine.memory.write(address, [0xcc])
            try DirectExecutor(machine: machine).execute(work)
        }
        func callGuest(_ entry: CallEntry, _ arguments: [Int64]) throws -> Int64 {
            try DirectExecutor(machine: machine).callGuest(entry, arguments)
        }
    }

    func testKthFunctionFailingUndoesTheFirstKMinusOne() throws {
        for isa in PayloadTests.isas {
            let image = try loadImage(path: PayloadTests.targetPath(isa))
            let patcher = try LivePatcher(image: image, backend: try Architectures.backend(for: image.elf))
            let names = ["scaled", "gcd", "fib", "greeting_len"]
            let sites = try names.map { try patcher.site(of: $0).address }
            let tampered = sites[2] // the third function
            var before = try image.machine.memory.read(tampered, count: 1)
            let original = try names.map { try image.machine.memory.read(try patcher.site(of: $0).address, count: 8) }
            patcher.executor = TamperingExecutor(machine: image.machine, address: tampered)
            XCTAssertThrowsError(try patcher.apply(batch: names.map { .init(function: $0, target: .address(try! image.function(named: "add").value)) })) { error in
                guard case PatchError.unexpectedBytes(let f, let a, _, let found)? = error as? PatchError else {
                    return XCTFail("\(isa): \(error)")
                }
                XCTAssertEqual(f, "fib", isa)
                XCTAssertEqual(a, tampered, isa)
                XCTAssertEqual(found.first, 0xcc, isa)
            }
            // Functions 1 and 2 were written and undone; 3 and 4 never written.
            for (i, name) in names.enumerated() where i != 2 {
                XCTAssertEqual(try image.machine.memory.read(sites[i], count: 8), original[i], "\(isa): \(name) back as it was")
            }
            XCTAssertTrue(patcher.active.isEmpty, "\(isa): nothing recorded as applied")
            // Undo the tampering by hand; the same batch then applies directly.
            before[0] = original[2][0]
            try image.machine.memory.write(tampered, before)
            patcher.executor = DirectExecutor(machine: image.machine)
            XCTAssertEqual(try patcher.apply(batch: names.map { .init(function: $0, target: .address(try image.function(named: "add").value)) }).count, 4)
        }
    }

    /// REPLACE naming a redirect that does not exist is refused before anything is
    /// prepared or written, and leaves no redirect marked as being reverted: the same
    /// REPLACE without the bad id then works. An id named twice is reverted once.
    func testReplaceWithAnUnknownIdChangesNothing() throws {
        for isa in PayloadTests.isas {
            let image = try loadImage(path: PayloadTests.targetPath(isa))
            let patcher = try LivePatcher(image: image, backend: try Architectures.backend(for: image.elf))
            let add = try image.function(named: "add").value
            let fib = try image.function(named: "fib").value
            let first = try patcher.apply(batch: ["scaled", "fib"].map { .init(function: $0, target: .address(add)) })
            let text = try image.regions.filter { $0.permissions.contains(.execute) }
                .map { try image.machine.memory.read($0.base, count: Int($0.size)) }
            let ids = first.map(\.id)
            XCTAssertThrowsError(try patcher.replace(reverting: ids + [9999], with: [.init(function: "scaled", target: .address(fib))])) {
                guard case PatchError.noSuchRedirect(9999)? = $0 as? PatchError else { return XCTFail("\(isa): \($0)") }
            }
            XCTAssertEqual(patcher.active.map(\.id), ids, "\(isa): the listed redirects are untouched")
            XCTAssertEqual(try image.regions.filter { $0.permissions.contains(.execute) }
                .map { try image.machine.memory.read($0.base, count: Int($0.size)) }, text, "\(isa): no byte changed")
            let replaced = try patcher.replace(reverting: ids + [ids[0]], with: [.init(function: "scaled", target: .address(fib))])
            XCTAssertEqual(patcher.active.map(\.id), replaced.map(\.id), "\(isa): both old redirects reverted, once each")
            XCTAssertEqual(try image.call("scaled", [10]).signedValue, 55, "\(isa): scaled now runs fib")
        }
    }

    /// REPLACE may not revert a redirect that a kept one is stacked on: refused with both
    /// ids named, nothing written, no mark left behind (the REPLACE reverting both works).
    func testReplaceUnderAKeptStackedRedirectIsRefused() throws {
        for isa in PayloadTests.isas {
            let image = try loadImage(path: PayloadTests.targetPath(isa))
            let patcher = try LivePatcher(image: image, backend: try Architectures.backend(for: image.elf))
            let add = try image.function(named: "add").value, fib = try image.function(named: "fib").value
            let scaled10 = try image.call("scaled", [10]).signedValue
            let other = try patcher.redirect("gcd", toAddress: add)
            let lower = try patcher.redirect("scaled", toAddress: add)
            let upper = try patcher.redirect("scaled", toAddress: fib)
            let before = try PayloadTests.memory(image)
            XCTAssertThrowsError(try patcher.replace(reverting: [lower.id, other.id], with: [.init(function: "gcd", target: .address(fib))])) {
                XCTAssertEqual($0 as? PatchError, .notTopmost(function: "scaled", id: lower.id, top: upper.id), isa)
            }
            XCTAssertEqual(try PayloadTests.memory(image), before, "\(isa): no byte changed")
            XCTAssertEqual(patcher.active.map(\.id), [other.id, lower.id, upper.id], isa)
            // The whole stack comes down in one REPLACE (each checked once the newer one is
            // undone); if a new site then fails its check, the stack goes back up in order.
            let tampered = try patcher.site(of: "greeting_len").address
            let original = try image.machine.memory.read(tampered, count: 1)
            patcher.executor = TamperingExecutor(machine: image.machine, address: tampered)
            XCTAssertThrowsError(try patcher.replace(reverting: [upper.id, lower.id, other.id],
                                                     with: ["gcd", "greeting_len"].map { .init(function: $0, target: .address(fib)) })) {
                guard case PatchError.unexpectedBytes("greeting_len", _, _, _)? = $0 as? PatchError else { return XCTFail("\(isa): \($0)") }
            }
            try image.machine.memory.write(tampered, original)
            XCTAssertEqual(try PayloadTests.memory(image), before, "\(isa): the stack is back, byte for byte")
            XCTAssertEqual(try image.call("scaled", [10]).signedValue, 55, "\(isa): scaled runs fib (the top) again")
            patcher.executor = DirectExecutor(machine: image.machine)
            _ = try patcher.replace(reverting: [upper.id, lower.id, other.id], with: [.init(function: "gcd", target: .address(fib))])
            XCTAssertEqual(try image.call("scaled", [10]).signedValue, scaled10, "\(isa): scaled unpatched again")
            XCTAssertEqual(patcher.active.map(\.function), ["gcd"], isa)
            XCTAssertEqual(try image.call("gcd", [10]).signedValue, 55, "\(isa): gcd now runs fib")
            // The same on the non-stop path (no vCPUs here: a sync drops what was written).
            let stack = [try patcher.redirect("scaled", toAddress: add), try patcher.redirect("scaled", toAddress: fib)]
            let steps = SyncingSteps(image.machine)
            _ = try patcher.replaceNonStop(reverting: stack.reversed().map(\.id) + [patcher.active[0].id],
                                           with: [.init(function: "gcd", target: .address(add))], step: steps.handle)
            XCTAssertTrue(steps.unsynced.isEmpty, "\(isa): the sequence ends with a sync")
            XCTAssertEqual(try image.call("scaled", [10]).signedValue, scaled10, "\(isa): non-stop: scaled unpatched again")
            XCTAssertEqual(try image.call("gcd", [10, 4]).signedValue, 14, "\(isa): non-stop: gcd now runs add")
            XCTAssertEqual(patcher.active.map(\.function), ["gcd"], isa)
        }
    }

    /// Non-stop steps with no vCPU running: a write is made by the patcher; a sync drops
    /// the translations of what was written since the last one.
    final class SyncingSteps {
        let machine: Machine
        var unsynced: [(UInt64, Int)] = []
        init(_ machine: Machine) { self.machine = machine }
        func handle(_ step: NonStopStep) throws {
            if case let .write(address, bytes, _) = step { unsynced.append((address, bytes.count)) }
            if step == .sync || step == .quiesce {
                for (a, n) in unsynced { try machine.codeChanged(at: a, length: n) }
                unsynced = []
            }
        }
    }

    /// A non-stop REPLACE with nothing to revert applies the whole batch (a REPLACE of an
    /// empty machine), and reverting it restores the text.
    func testANonStopReplaceWithNothingToRevertApplies() throws {
        for isa in PayloadTests.isas {
            let image = try loadImage(path: PayloadTests.targetPath(isa))
            let patcher = try LivePatcher(image: image, backend: try Architectures.backend(for: image.elf))
            let fib = try image.function(named: "fib").value
            func code() throws -> [String: UInt64] { try PayloadTests.memory(image).filter { !$0.key.hasPrefix("stack") } }
            let before = try code()
            let steps = SyncingSteps(image.machine)
            let applied = try patcher.replaceNonStop(reverting: [], with: ["scaled", "gcd"].map { .init(function: $0, target: .address(fib)) },
                                                     step: steps.handle)
            XCTAssertEqual(patcher.active.map(\.id), applied.map(\.id), isa)
            XCTAssertEqual(try image.call("scaled", [10]).signedValue, 55, "\(isa): scaled runs fib")
            XCTAssertEqual(try image.call("gcd", [10, 4]).signedValue, 55, "\(isa): gcd runs fib")
            _ = try patcher.replaceNonStop(reverting: applied.map(\.id), with: [], step: steps.handle)
            XCTAssertEqual(try code(), before, "\(isa): text as before")
        }
    }

    /// Counts the code ranges a patcher reports as changed, writing directly.
    final class CountingExecutor: PatchExecutor {
        let direct: DirectExecutor
        var ranges = 0
        init(machine: Machine) { direct = DirectExecutor(machine: machine) }
        func execute(_ work: ((UInt64, Int) -> Void) throws -> Void) throws {
            var seen: [(UInt64, Int)] = []
            try work { seen.append(($0, $1)) }
            ranges += seen.count
            for (a, n) in seen { try direct.machine.codeChanged(at: a, length: n) }
        }
        func callGuest(_ entry: CallEntry, _ arguments: [Int64]) throws -> Int64 { try direct.callGuest(entry, arguments) }
    }

    /// A REPLACE whose new redirects take the old ones over in place (same function, same
    /// places) writes only the bytes that differ: on ppc64le the site table entries alone
    /// (data: no translation to drop), on x86-64 one jump each. If a later function of the
    /// same REPLACE fails verification, the taken-over ones get their old bytes back.
    func testAReplaceTakingRedirectsOverInPlaceWritesOnlyWhatDiffersAndRollsBack() throws {
        for isa in PayloadTests.isas {
            let image = try loadImage(path: PayloadTests.targetPath(isa))
            let patcher = try LivePatcher(image: image, backend: try Architectures.backend(for: image.elf))
            let add = try image.function(named: "add").value, fib = try image.function(named: "fib").value
            let first = try patcher.apply(batch: ["scaled", "gcd"].map { .init(function: $0, target: .address(add)) })
            func code() throws -> [String: UInt64] { try PayloadTests.memory(image).filter { !$0.key.hasPrefix("stack") } }
            let scaledBefore = try image.call("scaled", [10]).signedValue
            let before = try code()
            // greeting_len, new in the REPLACE, was tampered with after it was prepared.
            let tampered = try patcher.site(of: "greeting_len").address
            let original = try image.machine.memory.read(tampered, count: 1)
            patcher.executor = TamperingExecutor(machine: image.machine, address: tampered)
            let batch: [LivePatcher.BatchItem] = ["scaled", "gcd", "greeting_len"].map { .init(function: $0, target: .address(fib)) }
            XCTAssertThrowsError(try patcher.replace(reverting: first.map(\.id), with: batch)) { error in
                guard case PatchError.unexpectedBytes(let f, _, _, _)? = error as? PatchError else { return XCTFail("\(isa): \(error)") }
                XCTAssertEqual(f, "greeting_len", isa)
            }
            try image.machine.memory.write(tampered, original)
            XCTAssertEqual(try code(), before, "\(isa): scaled and gcd have their old bytes back")
            XCTAssertEqual(patcher.active.map(\.id), first.map(\.id), isa)
            XCTAssertEqual(try image.call("scaled", [10]).signedValue, scaledBefore, "\(isa): scaled still runs add")
            let counting = CountingExecutor(machine: image.machine)
            patcher.executor = counting
            _ = try patcher.replace(reverting: first.map(\.id), with: Array(batch.prefix(2)))
            XCTAssertEqual(counting.ranges, isa == "x86_64" ? 2 : 0, "\(isa): code ranges changed")
            XCTAssertEqual(try image.call("scaled", [10]).signedValue, 55, "\(isa): scaled now runs fib")
            XCTAssertEqual(try image.call("gcd", [10, 4]).signedValue, 55, "\(isa): gcd now runs fib")
        }
    }
}
