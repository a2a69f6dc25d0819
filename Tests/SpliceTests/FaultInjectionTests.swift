import Foundation
import Splice
import XCTest

/// Things going wrong while a machine runs. For each, the documented outcome (the error
/// names what and where), nothing half-applied (the text is byte for byte as the outcome
/// says), and the machine still usable afterwards.
final class FaultInjectionTests: XCTestCase {
    let isas = ["x86_64", "ppc64le"]

    func payload(_ patch: String, _ isa: String, _ live: LiveMachine, patched: String? = nil, expectBytes: Int = 0) throws -> [UInt8] {
        try Samples.payload(original: patch, patched: patched ?? patch, isa: isa, target: live.image.elf,
                            backend: try Architectures.backend(named: isa), directory: samplesDirectory, expectBytes: expectBytes).bytes
    }

    func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

    func expectWorkload(_ live: LiveMachine, _ a: Int64, _ b: Int64, _ what: String,
                        file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertNoThrow(try live.checkWorkload(expect: LinearResult("\(a)x+\(b)")), what, file: file, line: line)
    }

    /// A vCPU spinning with "interrupts off" (spin_while never reaches the safe point):
    /// the rendezvous (or the non-stop sync) times out, the apply fails with -EBUSY and
    /// writes nothing; once the vCPU lets go, the same apply goes through.
    func testAVCPUStuckWithInterruptsOff() throws {
        for isa in isas {
            for engine in PatchEngineKind.allCases {
                let what = "\(isa) \(engine)"
                let live = try LiveMachine(configuration: .init(image: samplePath("kernel-\(isa).elf"), cpus: 2, workload: nil,
                                                                engine: engine, rendezvousTimeoutMicroseconds: 200_000))
                defer { live.shutdown() }
                live.nonStop?.timeout = 0.3
                // Mapped before any vCPU runs: vCPU 0's ring and vCPU 1's flag.
                let page = try live.machine.map(name: "test", at: 0x5900_0000, size: 0x2000, permissions: [.read, .write])
                let flag = page.base + 0x1000
                try live.machine.memory.write(flag, le64(1))
                try live.upload(id: "p02", bytes: try payload("02-scaled-plus-two", isa, live))
                try live.perform(.check, id: "p02")
                let text = try live.executableText()
                try live.runner.start(vcpu: 0, entry: try live.image.entries(of: "workload")[0], arguments: [Int64(page.base), 0])
                try live.runner.start(vcpu: 1, entry: try live.image.entries(of: "spin_while")[0], arguments: [Int64(flag)])

                XCTAssertThrowsError(try live.perform(.apply, id: "p02"), what) { error in
                    XCTAssertTrue("\(error)".contains("(-16)"), "\(what): \(error)")
                }
                let s = try live.get("p02")
                XCTAssertEqual([s.state.rawValue, String(s.rc)], ["CHECKED", "-16"], what)
                XCTAssertTrue(s.error?.contains("vCPU") ?? false, "\(what): the reason does not say which vCPUs: \(s.error ?? "")")
                XCTAssertEqual(try live.executableText(), text, "\(what): a timed-out apply wrote")

                try live.machine.memory.write(flag, le64(0)) // let go
                let deadline = Date(timeIntervalSinceNow: 10)
                while live.runner.state(of: 1) == .running && Date() < deadline { Thread.sleep(forTimeInterval: 0.001) }
                guard case .returned = live.runner.state(of: 1) else { return XCTFail("\(what): vCPU 1 is \(live.runner.state(of: 1))") }
                try live.perform(.apply, id: "p02")
                XCTAssertEqual(try live.call("scaled", [10]), 32, what)
                XCTAssertEqual(live.runner.state(of: 0), .running, what)
            }
        }
    }

    /// A replacement function that faults (patch 07 reads address 0x10 when x is 1000):
    /// each vCPU that calls it stops with a fault report naming the address; the others
    /// are not disturbed; the payload can still be reverted and unloaded, after which the
    /// text is pristine and calls work.
    func testAGuestFaultInsideAReplacementFunction() throws {
        for isa in isas {
            let live = try LiveMachine(configuration: .init(image: samplePath("kernel-\(isa).elf"), cpus: 2))
            defer { live.shutdown() }
            let pristine = try live.executableText()
            try live.upload(id: "07", bytes: try payload("07-faulting-fix", isa, live))
            try live.perform(.check, id: "07")
            try live.perform(.apply, id: "07")
            // Every vCPU reaches x = 1000 within 1,024 iterations.
            let deadline = Date(timeIntervalSinceNow: 20)
            var status = try live.status()
            while status.vcpus.contains(where: { $0.state == .running }) && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.005)
                status = try live.status()
            }
            for v in status.vcpus {
                XCTAssertTrue(v.state == .faulted && (v.detail ?? "").contains("at 0x10 "), "\(isa) vCPU \(v.index): \(v.summary)")
            }
            XCTAssertEqual(try live.call("scaled", [999]), 3 * 999 + 2, isa) // the fix itself runs
            try live.perform(.revert, id: "07")
            try live.perform(.unload, id: "07")
            XCTAssertEqual(try live.executableText(), pristine, isa)
            // With no vCPU running, the revert's writes were dropped from every emulator's
            // translations: the host call runs the original code (it ran the payload's
            // stale translation, then faulted in the unmapped payload, before that fix).
            XCTAssertEqual(try live.call("scaled", [1000]), 3001, isa)
        }
    }

    /// A post-apply hook that faults (patch 08): the apply is taken back (the redirects
    /// come out again), the payload stays CHECKED with the hook's failure as its reason,
    /// and the workload never saw more than a glimpse of the new code. The same through a
    /// REPLACE puts the payload that was applied back.
    func testAHookThatFailsTakesTheActionBack() throws {
        for isa in isas {
            for engine in PatchEngineKind.allCases {
                let what = "\(isa) \(engine)"
                let live = try LiveMachine(configuration: .init(image: samplePath("kernel-\(isa).elf"), cpus: 2, engine: engine))
                defer { live.shutdown() }
                let pristine = try live.executableText()
                try live.upload(id: "08", bytes: try payload("08-failing-hook", isa, live))
                try live.upload(id: "p02", bytes: try payload("02-scaled-plus-two", isa, live))
                try live.perform(.check, id: "08")
                try live.perform(.check, id: "p02")

                XCTAssertThrowsError(try live.perform(.apply, id: "08"), what) { error in
                    XCTAssertTrue("\(error)".contains("postapply hook at 0x"), "\(what): \(error)")
                    XCTAssertTrue("\(error)".contains("0x18"), "\(what): the hook's fault address is not named: \(error)")
                }
                XCTAssertEqual(try live.get("08").state, .checked, what)
                XCTAssertEqual(try live.status().activeRedirects, 0, what)
                XCTAssertEqual(try live.executableText(), pristine, "\(what): the failed apply left code behind")
                expectWorkload(live, 3, 1, "\(what) after the failed apply")

                try live.perform(.apply, id: "p02")
                XCTAssertThrowsError(try live.perform(.replace, id: "08"), what)
                XCTAssertEqual(live.list().statuses.map(\.state), [.checked, .applied], what)
                XCTAssertEqual(try live.status().activeRedirects, 1, what)
                expectWorkload(live, 3, 2, "\(what): p02 back after the failed REPLACE")
                try live.perform(.revert, id: "p02")
                XCTAssertEqual(try live.executableText(), pristine, what)
            }
        }
    }

    /// A payload whose second function does not match the target (its first bytes were
    /// changed in the running machine): check refuses it naming that function and the
    /// bytes, maps nothing and patches nothing, not even the first function.
    func testAPayloadWhoseSecondFunctionFailsVerification() throws {
        for isa in isas {
            let live = try LiveMachine(configuration: .init(image: samplePath("kernel-\(isa).elf"), cpus: 1, workload: nil))
            defer { live.shutdown() }
            // Built with the old functions' first 16 bytes recorded (splice build --expect-bytes 16).
            let bytes = try payload("01-greeting-len-fix", isa, live, patched: "04-scaled-twice-stacked", expectBytes: 16)
            let functions = try Payload(bytes: bytes, name: "cumulative").functions
            XCTAssertGreaterThanOrEqual(functions.count, 2, isa)
            let second = functions[1].name
            // A byte no patch writes (offset 8: past x86-64's entry site, the mflr before
            // ppc64le's mcount site).
            let address = try live.address(of: second) + 8
            let original = try live.machine.memory.read(address, count: 1)
            try live.machine.memory.write(address, [original[0] ^ 0xff])
            let before = try live.executableText()
            try live.upload(id: "cumulative", bytes: bytes)

            XCTAssertThrowsError(try live.perform(.check, id: "cumulative"), isa) { error in
                XCTAssertTrue("\(error)".contains("\(second): expected its first bytes to be"), "\(isa): \(error)")
            }
            XCTAssertEqual(try live.get("cumulative").state, .loaded, isa)
            XCTAssertEqual(try live.executableText(), before, isa)
            XCTAssertFalse(live.machine.memory.regions.contains { $0.name.hasPrefix("payload") }, "\(isa): check left payload memory mapped")
            XCTAssertEqual(try live.status().activeRedirects, 0, isa)

            // The target put right, the same payload goes in whole, also on top of another
            // payload built the same way: the bytes live patching rewrote (p02's jump or
            // mcount call and odd-TOC mark, ppc64le's nop'ed mcount sites) are not a mismatch.
            try live.machine.memory.write(address, original)
            try live.upload(id: "p02", bytes: try payload("02-scaled-plus-two", isa, live, expectBytes: 16))
            try live.perform(.check, id: "p02")
            try live.perform(.apply, id: "p02")
            try live.perform(.check, id: "cumulative")
            try live.perform(.apply, id: "cumulative")
            XCTAssertEqual(try live.call("scaled_twice", [2]), 19, isa)
        }
    }

    /// The control client killed at random moments while it starts and waits for actions:
    /// every action the machine accepted finishes, the payload is never left in PROGRESS,
    /// its state always matches the running code, and the machine goes on serving.
    func testTheClientKilledMidAction() throws {
        let dir = NSTemporaryDirectory() + "splice-kill-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socketPath = dir + "/m.sock"
        defer { _ = try? runSplice(["machine", "stop", "--socket", socketPath]) }
        let p02 = dir + "/p02.lp"
        XCTAssertEqual(try runSplice(["build", "--original", samplePath("patches/02-scaled-plus-two/orig-x86_64.o"),
                                      "--patched", samplePath("patches/02-scaled-plus-two/patched-x86_64.o"),
                                      "--target", samplePath(Samples.x86_64), "-o", p02]).status, 0)
        XCTAssertEqual(try runSplice(["machine", "start", "--cpus", "2", "--socket", socketPath]).status, 0)
        XCTAssertEqual(try runSplice(["load", "p02", p02, "--socket", socketPath]).status, 0)
        let exe = try XCTUnwrap(Samples.executableDirectory()) + "/splice"
        let client = MachineClient(socketPath: socketPath)
        var killedBeforeDone = 0
        for round in 0..<24 {
            let state = try XCTUnwrap(client.send(ControlRequest(.get, id: "p02")).payload?.state)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = [state == .applied ? "revert" : "apply", "p02", "--socket", socketPath]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            Thread.sleep(forTimeInterval: Double(round % 8) * 0.003)
            if p.isRunning { killedBeforeDone += 1 }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            // Whatever the client managed to ask is finished by the machine.
            let deadline = Date(timeIntervalSinceNow: 10)
            var s = try XCTUnwrap(client.send(ControlRequest(.get, id: "p02")).payload)
            while s.state == .progress && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.002)
                s = try XCTUnwrap(client.send(ControlRequest(.get, id: "p02")).payload)
            }
            XCTAssertTrue([.applied, .reverted, .checked].contains(s.state), "round \(round): \(s.state)")
            XCTAssertEqual(s.rc, 0, "round \(round): \(s.error ?? "")")
            var call = ControlRequest(.call)
            call.function = "scaled"
            call.arguments = [10]
            XCTAssertEqual(client.send(call).value, s.state == .applied ? 32 : 31, "round \(round): state \(s.state)")
        }
        XCTAssertGreaterThan(killedBeforeDone, 0, "no client was killed while it ran")
        // A client that dies half way through a request: connects, sends part of a line, goes.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in socketPath.utf8.enumerated() { raw[i] = b } }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        XCTAssertEqual(connected, 0)
        _ = Array("{\"op\": \"upl".utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        let page = try XCTUnwrap(client.send(ControlRequest(.list)).page)
        XCTAssertEqual(page.total, 1)
        XCTAssertTrue(try XCTUnwrap(client.send(ControlRequest(.status)).machine).vcpus.allSatisfy { $0.state == .running })
    }
}
