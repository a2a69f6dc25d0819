import Foundation
import Splice
import XCTest

/// The non-stop engine (Linux's text_poke_bp) on free-running vCPUs: nothing stops them together;
/// every sync is taken by each vCPU at its own safe point.
final class NonStopEngineTests: XCTestCase {
    typealias Running = RendezvousTests.Running

    /// Every record of every vCPU is the old or the new value; no vCPU faulted.
    func checkRecords(_ r: Running, _ isa: String) throws {
        for i in 0..<r.vcpus {
            XCTAssertEqual(r.runner.state(of: i), .stopped, "\(isa) vCPU \(i)")
            let (n, pairs) = try r.records(i)
            XCTAssertGreaterThan(n, 0, "\(isa) vCPU \(i) ran")
            for (x, s, u) in pairs {
                let old = Int64(x) * 3 + 1, new = Int64(x) * 3 + 2
                XCTAssertTrue(s == old || s == new, "\(isa) vCPU \(i): scaled(\(x)) = \(s)")
                XCTAssertTrue(u == old || u == new, "\(isa) vCPU \(i): apply_unary(0, \(x)) = \(u)")
            }
        }
    }

    func testApplyRevertWhileVCPUsRunFree() throws {
        for isa in PayloadTests.isas {
            let (p02, _, _) = try PayloadTests.build("02-scaled-plus-two", isa)
            let (r, loaded) = try RendezvousTests.start(isa, vcpus: 3, payloads: [p02])
            let engine = NonStopEngine(runner: r.runner, patcher: r.patcher)
            engine.timeout = 5 // 3 busy vCPU threads on 2 host cores
            let pristine = try r.code()
            let rendezvousBefore = r.runner.rendezvous.completed
            Thread.sleep(forTimeInterval: 0.02)
            var syncs = 0
            for _ in 0..<30 {
                let applied = try engine.apply(batch: r.loader.items(of: loaded[0]))
                syncs += engine.lastTrace.syncs
                XCTAssertNotEqual(try r.code(), pristine, isa)
                for a in applied.reversed() { try engine.revert(id: a.id); syncs += engine.lastTrace.syncs }
                XCTAssertEqual(try r.code(), pristine, "\(isa): text as at the start after each revert")
            }
            // End applied, let every vCPU run the new code for a while.
            _ = try engine.apply(batch: r.loader.items(of: loaded[0]))
            let appliedAt = try (0..<r.vcpus).map { try r.records($0).iterations }
            Thread.sleep(forTimeInterval: 0.05)
            XCTAssertEqual(r.runner.rendezvous.completed, rendezvousBefore, "\(isa): no rendezvous was used")
            let trapsTaken = r.runner.trapsTaken
            r.runner.stop()
            try checkRecords(r, isa)
            for i in 0..<r.vcpus {
                let (n, _) = try r.records(i)
                XCTAssertGreaterThan(n, appliedAt[i] + 1, "\(isa) vCPU \(i) ran on after the last apply")
                let (x, s) = try r.newestRecord(i)
                XCTAssertEqual(s, x * 3 + 2, "\(isa) vCPU \(i): the new code after the last apply")
            }
            if isa == "x86_64" {
                // Three vCPUs calling scaled() in a loop meet the armed int3 during 61 applies
                // and reverts: the protocol's trap path ran, and sent them on.
                XCTAssertGreaterThan(trapsTaken, 0, "x86_64: no vCPU ever met an armed trap")
            }
            XCTAssertEqual(r.runner.staleTraps, 0, isa)
            print("\(isa): non-stop: 61 actions, \(syncs) syncs, \(trapsTaken) vCPUs sent on from a trap; last: \(engine.lastTrace)")
        }
    }

    func testAVCPUThatNeverReachesItsSafePointFailsTheActionWithNothingWritten() throws {
        for isa in PayloadTests.isas {
            let (p02, _, _) = try PayloadTests.build("02-scaled-plus-two", isa)
            let (r, loaded) = try RendezvousTests.start(isa, vcpus: 2, payloads: [p02], spinning: [0])
            let engine = NonStopEngine(runner: r.runner, patcher: r.patcher)
            engine.timeout = 0.05
            let before = try r.code()
            XCTAssertThrowsError(try engine.apply(batch: r.loader.items(of: loaded[0]))) { error in
                XCTAssertEqual((error as? MachineRunner.SyncTimeout)?.vcpus, [0], "\(isa): \(error)")
                XCTAssertTrue("\(error)".contains("vCPU 0 did not pass its safe point within 50 ms"), "\(error)")
            }
            XCTAssertTrue(r.patcher.active.isEmpty, isa)
            XCTAssertEqual(try r.code(), before, "\(isa): nothing written")
            // Release the spinner: it returns, and the same action goes through.
            try r.image.machine.memory.writeUInt64(r.spinFlag, 0)
            guard case .returned = r.runner.wait(for: 0, timeout: 2) else { return XCTFail("\(isa): spinner did not return") }
            engine.timeout = 5
            let applied = try engine.apply(batch: r.loader.items(of: loaded[0]))
            XCTAssertEqual(applied.count, r.patcher.active.count)
            Thread.sleep(forTimeInterval: 0.02)
            r.runner.stop()
            let (x, v) = try r.newestRecord(1)
            XCTAssertEqual(v, x * 3 + 2, "\(isa): vCPU 1 runs the new code")
        }
    }

    /// Before writing, every vCPU walks its own stack at its safe point: `workload` (the
    /// loop that calls the safe point) is live on all of them, so a non-stop apply of it is
    /// refused with each frame named and nothing written; `gcd`, never called, goes in.
    func testANonStopApplyOfALiveFunctionIsRefusedWithTheFramesNamed() throws {
        for isa in PayloadTests.isas {
            let (r, _) = try RendezvousTests.start(isa, vcpus: 2, payloads: [])
            let engine = NonStopEngine(runner: r.runner, patcher: r.patcher)
            engine.timeout = 5
            let before = try r.code()
            let target = RedirectTarget.address(try r.image.function(named: "identity").value)
            XCTAssertThrowsError(try engine.apply(batch: [LivePatcher.BatchItem(function: "workload", target: target)])) { error in
                let frames = (error as? StackCheck.FunctionLive)?.frames ?? []
                XCTAssertEqual(Set(frames.map(\.vcpu)), [0, 1], "\(isa): \(error)")
                XCTAssertTrue(frames.allSatisfy { $0.function == "workload" && $0.depth > 0 }, "\(isa): \(error)")
                XCTAssertTrue("\(error)".contains("vCPU 0: workload (return address 0x"), "\(isa): \(error)")
            }
            XCTAssertEqual(try r.code(), before, "\(isa): nothing written")
            XCTAssertTrue(r.patcher.active.isEmpty, isa)
            let applied = try engine.apply(batch: [LivePatcher.BatchItem(function: "gcd", target: target)])
            XCTAssertEqual(applied.count, 1, isa)
            r.runner.stop()
        }
    }

    struct InjectedSyncFailure: Error, Equatable { var sync: Int }

    /// A sync that fails at any point of a non-stop sequence (apply or revert) leaves memory
    /// byte-for-byte as before the action, and the patcher's table as before.
    func testASyncFailingAtAnyStepIsRolledBack() throws {
        for isa in PayloadTests.isas {
            let (p02, _, _) = try PayloadTests.build("02-scaled-plus-two", isa)
            let (image, loader) = try PayloadTests.machine(isa)
            let patcher = loader.patcher
            func snapshot() throws -> [String: UInt64] { try PayloadTests.memory(image) }
            let loaded = try loader.load(p02)
            let items = loader.items(of: loaded)
            let pristine = try snapshot()
            // How many syncs a whole apply makes.
            var total = 0
            let applied = try patcher.applyNonStop(batch: items) { if case .sync = $0 { total += 1 } }
            let appliedState = try snapshot()
            XCTAssertNotEqual(appliedState, pristine)
            for a in applied.reversed() { try patcher.revertNonStop(id: a.id) { _ in } }
            XCTAssertEqual(try snapshot(), pristine, "\(isa): non-stop revert restores everything")
            XCTAssertGreaterThan(total, 2, isa)
            for failing in 0..<total {
                var n = 0
                XCTAssertThrowsError(try patcher.applyNonStop(batch: items) { step in
                    if case .sync = step { n += 1; if n - 1 == failing { throw InjectedSyncFailure(sync: failing) } }
                }) { XCTAssertEqual($0 as? InjectedSyncFailure, InjectedSyncFailure(sync: failing), isa) }
                XCTAssertEqual(try snapshot(), pristine, "\(isa): apply failing at sync \(failing)")
                XCTAssertTrue(patcher.active.isEmpty, "\(isa): apply failing at sync \(failing)")
            }
            // Now revert, failing at each sync of the revert sequence of the last redirect.
            let again = try patcher.applyNonStop(batch: items) { _ in }
            XCTAssertEqual(try snapshot(), appliedState, isa)
            let last = try XCTUnwrap(again.last)
            var revertSyncs = 0
            for s in patcher.nonStopRevertSteps(for: last) { if case .sync = s { revertSyncs += 1 } }
            for failing in 0..<revertSyncs {
                var n = 0
                XCTAssertThrowsError(try patcher.revertNonStop(id: last.id) { step in
                    if case .sync = step { n += 1; if n - 1 == failing { throw InjectedSyncFailure(sync: failing) } }
                }) { XCTAssertEqual($0 as? InjectedSyncFailure, InjectedSyncFailure(sync: failing), isa) }
                XCTAssertEqual(try snapshot(), appliedState, "\(isa): revert failing at sync \(failing)")
                XCTAssertEqual(patcher.active.map(\.id), again.map(\.id), isa)
            }
            for a in again.reversed() { try patcher.revertNonStop(id: a.id) { _ in } }
            XCTAssertEqual(try snapshot(), pristine, isa)
            print("\(isa): roll-back checked at each of \(total) apply syncs and \(revertSyncs) revert syncs")
        }
    }

    /// The whole life cycle behind `LivePatchService` on the non-stop engine, while 3
    /// vCPUs run: apply, REPLACE (by a cumulative payload and back), revert, 10 rounds;
    /// the actions use no rendezvous (only check and unload do: they map and unmap); hooks
    /// run on a vCPU at its safe point; every record is the old or the new value.
    func testTheLifeCycleServiceOnTheNonStopEngine() throws {
        for isa in PayloadTests.isas {
            let (_, b02, _) = try PayloadTests.build("02-scaled-plus-two", isa)
            let (_, b05, _) = try PayloadTests.build("05-hooks", isa)
            let cumulative = try ReplaceTests.cumulativeBytes(isa)
            let (r, _) = try RendezvousTests.start(isa, vcpus: 3, payloads: [])
            r.runner.rendezvous.timeoutMicroseconds = 5_000_000
            let engine = NonStopEngine(runner: r.runner, patcher: r.patcher)
            engine.timeout = 5
            r.loader.engine = engine
            let service = LivePatchService(loader: r.loader)
            let pristine = try r.code()
            try service.upload(id: "p02", bytes: b02)
            try service.upload(id: "cumulative", bytes: cumulative)
            try service.upload(id: "hooks", bytes: b05)
            for id in ["p02", "cumulative", "hooks"] { try service.perform(.check, id: id) }
            let slot = try XCTUnwrap(r.image.elf.symbol(named: "observed_toc")).value
            XCTAssertEqual(try r.image.machine.memory.readUInt64(slot), 0x10ad, "\(isa): load hook ran")
            let rendezvousAfterChecks = r.runner.rendezvous.completed
            let actionsBefore = engine.actions
            for _ in 0..<10 {
                try service.perform(.apply, id: "p02")
                try service.perform(.replace, id: "cumulative")
                XCTAssertEqual(try service.get("p02").state, .reverted, isa)
                XCTAssertEqual(try service.get("cumulative").state, .applied, isa)
                try service.perform(.replace, id: "p02")
                XCTAssertEqual(try service.get("cumulative").state, .reverted, isa)
                try service.perform(.revert, id: "p02")
                XCTAssertEqual(try r.code(), pristine, "\(isa): text as at the start after each revert")
            }
            try service.perform(.apply, id: "hooks")
            try service.perform(.revert, id: "hooks")
            XCTAssertEqual(engine.actions - actionsBefore, 42, "\(isa): every action went through the non-stop engine")
            XCTAssertEqual(r.runner.rendezvous.completed, rendezvousAfterChecks, "\(isa): no rendezvous for apply/replace/revert")
            try service.perform(.unload, id: "hooks")
            XCTAssertEqual(try r.image.machine.memory.readUInt64(slot), 0xdead, "\(isa): unload hook ran")
            try service.perform(.apply, id: "p02")
            Thread.sleep(forTimeInterval: 0.02)
            r.runner.stop()
            try checkRecords(r, isa)
            for i in 0..<r.vcpus {
                let (x, s) = try r.newestRecord(i)
                XCTAssertEqual(s, x * 3 + 2, "\(isa) vCPU \(i): the new code after the last apply")
            }
        }
    }

    /// A non-stop REPLACE of the cumulative payload by p02: `scaled`, patched by both, goes
    /// from the old code to the new without its site ever holding the unpatched bytes in
    /// between; functions only the cumulative payload patched are back as they were; and a
    /// sync failing at any step leaves memory and the redirect table as before the REPLACE.
    func testANonStopReplaceGoesStraightFromTheOldCodeToTheNew() throws {
        for isa in PayloadTests.isas {
            let (p02, _, _) = try PayloadTests.build("02-scaled-plus-two", isa)
            let (image, loader) = try PayloadTests.machine(isa)
            let patcher = loader.patcher
            let old = try loader.load(try ReplaceTests.cumulative(isa)), new = try loader.load(p02)
            let oldFunctions = Set(loader.items(of: old).map(\.function)), newFunctions = Set(loader.items(of: new).map(\.function))
            XCTAssertTrue(newFunctions.isSubset(of: oldFunctions), "\(isa): \(newFunctions) in \(oldFunctions)")
            XCTAssertFalse(oldFunctions.subtracting(newFunctions).isEmpty, isa)
            func siteBytes(_ f: String) throws -> [UInt8] {
                let site = try patcher.site(of: f)
                return try image.machine.memory.read(site.address, count: isa == "x86_64" ? 5 : 4)
            }
            let unpatched = try Dictionary(uniqueKeysWithValues: oldFunctions.map { ($0, try siteBytes($0)) })
            let pristine = try PayloadTests.memory(image)
            let oldRedirects = try patcher.applyNonStop(batch: loader.items(of: old)) { _ in }
            let before = try PayloadTests.memory(image), table = patcher.active.map(\.id)
            // Fail at every sync of the REPLACE in turn: nothing changes.
            var syncs = 0
            for failing in 0... {
                var n = 0
                do {
                    _ = try patcher.replaceNonStop(reverting: oldRedirects.map(\.id), with: loader.items(of: new)) { step in
                        if case .sync = step { n += 1; if n - 1 == failing { throw InjectedSyncFailure(sync: failing) } }
                    }
                    syncs = n
                    break
                } catch {
                    XCTAssertEqual(error as? InjectedSyncFailure, InjectedSyncFailure(sync: failing), isa)
                    XCTAssertEqual(try PayloadTests.memory(image), before, "\(isa): REPLACE failing at sync \(failing)")
                    XCTAssertEqual(patcher.active.map(\.id), table, "\(isa): REPLACE failing at sync \(failing)")
                }
            }
            // The REPLACE that went through (the last iteration) is undone, and made again
            // with its sites watched at every step.
            try patcher.revertAll()
            XCTAssertEqual(try PayloadTests.memory(image), pristine, isa)
            let again = try patcher.applyNonStop(batch: loader.items(of: old)) { _ in }
            var steps = 0
            let applied = try patcher.replaceNonStop(reverting: again.map(\.id), with: loader.items(of: new)) { _ in
                steps += 1
                for f in newFunctions {
                    XCTAssertNotEqual(try siteBytes(f), unpatched[f], "\(isa): \(f) unpatched in the middle of the REPLACE")
                }
            }
            XCTAssertEqual(Set(applied.map(\.function)), newFunctions, isa)
            XCTAssertEqual(patcher.active.map(\.id), applied.map(\.id), "\(isa): only the new redirects are listed")
            for f in oldFunctions.subtracting(newFunctions) {
                XCTAssertEqual(try siteBytes(f), unpatched[f], "\(isa): \(f), only in the old payload, is as it was")
            }
            XCTAssertEqual(try image.call("scaled", [10]).signedValue, 32, "\(isa): the new code runs")
            try patcher.revertAll()
            XCTAssertEqual(try PayloadTests.memory(image).filter { !$0.key.hasPrefix("stack") },
                           pristine.filter { !$0.key.hasPrefix("stack") }, isa)
            print("\(isa): non-stop REPLACE: \(steps) steps, \(syncs) syncs, roll-back checked at each")
        }
    }

    /// Where a vCPU trapped on an in-flight x86-64 write goes on: the jump's target, past a
    /// NOP fill, or nowhere (a `ret`: refused).
    func testX86TrapRedirectTargets() throws {
        let backend = try Architectures.backend(named: "x86_64")
        let at: UInt64 = 0x40_1000
        let near = try XCTUnwrap(X86_64TrampolineEncoder.nearJump(from: at, to: 0x40_0000))
        XCTAssertEqual(backend.trapRedirect(at: at, final: near), 0x40_0000)
        XCTAssertEqual(backend.trapRedirect(at: at, final: X86_64TrampolineEncoder.absoluteJump(to: 0x1234_5678_9abc)), 0x1234_5678_9abc)
        for n in [2, 5, 9, 14] { XCTAssertEqual(backend.trapRedirect(at: at, final: X86_64TrampolineEncoder.nopFill(n)), at + UInt64(n)) }
        XCTAssertNil(backend.trapRedirect(at: at, final: [0xc3] + X86_64TrampolineEncoder.nopFill(4)))
        XCTAssertNil(backend.trapRedirect(at: at, final: [0xe8, 0, 0, 0, 0]), "a call is not a jump")
    }
}

