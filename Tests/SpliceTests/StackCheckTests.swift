import Splice
import XCTest

final class StackCheckTests: XCTestCase {
    func testLiveFunctionsAreFoundAndTheApplyWaits() throws {
        for isa in PayloadTests.isas {
            let image = try loadImage(path: PayloadTests.targetPath(isa))
            let backend = try Architectures.backend(for: image.elf)
            let patcher = try LivePatcher(image: image, backend: backend)
            let scheduler = DeterministicScheduler(machine: image.machine, backend: backend)
            let scaled = try image.function(named: "scaled"), twice = try image.function(named: "scaled_twice")
            let gcd = try image.function(named: "gcd")
            try scheduler.start(vcpu: 0, entry: try image.entries(of: "scaled_twice")[0], arguments: [10])
            // Step until the vCPU is inside scaled, called from scaled_twice.
            var inside = false
            for _ in 0..<200 {
                guard case let .running(pc) = try scheduler.step(0) else { break }
                if pc >= scaled.value && pc < scaled.value + scaled.size { inside = true; break }
            }
            XCTAssertTrue(inside, isa)
            let frames = try StackCheck.liveFrames(of: [scaled, twice, gcd], machine: image.machine, vcpus: [0])
            XCTAssertEqual(frames.first?.function, "scaled", "\(isa): pc in scaled")
            XCTAssertEqual(frames.first?.depth, 0)
            XCTAssertTrue(frames.contains { $0.function == "scaled_twice" && $0.depth > 0 }, "\(isa): \(frames)")
            XCTAssertFalse(frames.contains { $0.function == "gcd" }, "\(isa)")
            // A non-stop apply of scaled waits: refused with the frame named, nothing written.
            let item = LivePatcher.BatchItem(function: "scaled", target: .address(try image.function(named: "checked_double").value))
            XCTAssertThrowsError(try StackCheck.require(notLive: [scaled], machine: image.machine, vcpus: [0])) { error in
                XCTAssertTrue("\(error)".contains("vCPU 0: scaled (pc 0x"), "\(error)")
            }
            // gcd is not live: it may go in now.
            try StackCheck.require(notLive: [gcd], machine: image.machine, vcpus: [0])
            try scheduler.runToCompletion()
            XCTAssertEqual(scheduler.states[0], .returned(94))
            try StackCheck.require(notLive: [scaled], machine: image.machine, vcpus: [0])
            let text = try PayloadTests.imageCode(image)
            let applied = try patcher.applyNonStop(batch: [item]) { s in
                try scheduler.handle(s, changed: [(scaled.value, Int(scaled.size))])
            }
            XCTAssertEqual(try image.call("scaled", [10]).signedValue, 20, isa)
            // And back, non-stop too: the text is as it was.
            var steps = 0
            try patcher.revertNonStop(id: applied[0].id) { s in
                steps += 1
                try scheduler.handle(s, changed: [(scaled.value, Int(scaled.size))])
            }
            XCTAssertGreaterThan(steps, 1, isa)
            XCTAssertEqual(try image.call("scaled", [10]).signedValue, 31, isa)
            XCTAssertEqual(try PayloadTests.imageCode(image), text, "\(isa): text bytes back")
            XCTAssertTrue(patcher.active.isEmpty, isa)
        }
    }
}
