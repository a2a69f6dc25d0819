import Foundation
import Splice
import XCTest

final class LiveMachineTests: XCTestCase {
    func payloadBytes(_ isa: String, target: ELFFile) throws -> [UInt8] {
        try Samples.payload(original: "02-scaled-plus-two", patched: "02-scaled-plus-two", isa: isa, target: target,
                            backend: try Architectures.backend(named: isa), directory: samplesDirectory).bytes
    }

    /// While an action runs it reads PROGRESS, and other actions and uploads are refused
    /// with EBUSY. A vCPU that never reaches its safe point (spinning with "interrupts
    /// off") makes the rendezvous time out: the action fails with -EBUSY and its reason,
    /// the payload keeps its state and the text is byte for byte as before.
    func testAnActionInProgressShowsProgressAndATimeoutChangesNothing() throws {
        for isa in ["x86_64", "ppc64le"] {
            let live = try LiveMachine(configuration: .init(image: samplePath("kernel-\(isa).elf"), cpus: 1, workload: nil,
                                                            rendezvousTimeoutMicroseconds: 300_000))
            let bytes = try payloadBytes(isa, target: live.image.elf)
            try live.upload(id: "p02", bytes: bytes)
            try live.perform(.check, id: "p02")
            let text = try live.executableText()
            // spin_while(&scale_factor): scale_factor is 3, so it never returns.
            try live.runner.start(vcpu: 0, entry: try live.image.entries(of: "spin_while")[0],
                                  arguments: [Int64(try live.address(of: "scale_factor"))])
            let versionBefore = live.list().version
            try live.begin(.apply, id: "p02")
            let during = try live.get("p02")
            XCTAssertEqual(during.state, .progress)
            XCTAssertEqual(during.action, .apply)
            XCTAssertEqual(live.list().statuses.map(\.state), [.progress])
            XCTAssertGreaterThan(live.list().version, versionBefore)
            assertThrows(LiveMachineError.busy(id: "p02", action: .apply)) { try live.begin(.unload, id: "p02") }
            assertThrows(LiveMachineError.busy(id: "p02", action: .apply)) { try live.upload(id: "other", bytes: bytes) }

            live.waitUntilIdle()
            let after = try live.get("p02")
            XCTAssertEqual(after.state, .checked, isa)
            XCTAssertEqual(after.rc, -16)
            XCTAssertTrue(after.error?.contains("rendezvous timed out (EBUSY): 0 of 1 vCPUs reached the safe point") ?? false,
                          after.error ?? "no reason")
            XCTAssertEqual(try live.executableText(), text, "\(isa): a timed-out apply changed the text")
            live.shutdown()
        }
    }

    /// Starting an action the state does not allow is refused at once, not in the
    /// background.
    func testAnInvalidActionIsRefusedBeforeItStarts() throws {
        let live = try LiveMachine(configuration: .init(image: samplePath(Samples.x86_64), cpus: 1))
        defer { live.shutdown() }
        try live.upload(id: "p02", bytes: try payloadBytes("x86_64", target: live.image.elf))
        assertThrows(LivePatchServiceError.invalidTransition(id: "p02", state: .loaded, action: .apply)) {
            try live.begin(.apply, id: "p02")
        }
        assertThrows(LivePatchServiceError.noSuchPayload("nope")) { try live.begin(.check, id: "nope") }
        XCTAssertEqual(try live.get("p02").state, .loaded)
        try live.begin(.check, id: "p02")
        live.waitUntilIdle()
        XCTAssertEqual(try live.get("p02").state, .checked)
    }

    /// Paging through the list starts over when the version changes between pages, so
    /// the result is one version's list, never a mix (the xSplice design's toolstack duty).
    func testPagingStartsOverWhenTheListChanges() {
        func status(_ id: String) -> LiveMachine.PayloadStatus {
            LiveMachine.PayloadStatus(id: id, state: .loaded, buildID: "")
        }
        // Version 1 holds a, b, c; after the first page z is uploaded in front (version 2).
        // Pages glued across the change would read a, a, b, c.
        let lists: [UInt64: [LiveMachine.PayloadStatus]] = [1: ["a", "b", "c"].map(status), 2: ["z", "a", "b", "c"].map(status)]
        var calls = 0
        let page = LiveMachine.Page.collect(pageSize: 1) { start, count in
            calls += 1
            let version: UInt64 = calls == 1 ? 1 : 2
            let all = lists[version]!
            return LiveMachine.Page(version: version, total: all.count, start: start, statuses: Array(all.dropFirst(start).prefix(count)))
        }
        XCTAssertEqual(page?.statuses.map(\.id), ["z", "a", "b", "c"], "a read that raced a change mixed two versions")
        XCTAssertEqual(page?.version, 2)
        XCTAssertEqual(calls, 1 + 1 + 4, "one page of version 1, the mismatch, then all of version 2 from the start")
        // A list that changes on every call is given up on.
        var v: UInt64 = 0
        XCTAssertNil(LiveMachine.Page.collect(pageSize: 1, tries: 3) { start, _ in
            v += 1
            return LiveMachine.Page(version: v, total: 2, start: start, statuses: [status("x")])
        })
    }
}
