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

    /// x86-64 built with frame pointers: at every instruction boundary of several calls
    /// (direct, indirect through a table, a tail jump, recursion), the rbp-chain walk gives
    /// exactly the PC and the return addresses of a shadow stack kept by decoding each
    /// executed call and ret. On the -O2 image without frame pointers the walk reads the
    /// frameless leaves and falls back to the conservative scan where a function moved rsp:
    /// every true return address is still named.
    func testX86_64FramePointerWalkGivesTheCallChainAtEveryInstruction() throws {
        let disassembler = try Disassembler(mode: .x86_64)
        for (sample, exact) in [(Samples.x86_64FramePointers, true), (Samples.x86_64, false)] {
            let image = try loadImage(path: samplePath(sample))
            let machine = image.machine, cpu = try machine.vcpu(0)
            let code = image.functionMap
            var boundaries = 0, extra = 0, scanned = 0
            for (name, args) in [("scaled_twice", [10]), ("apply_unary", [0, 7]), ("apply_op", [3, 4, 5]),
                                 ("apply_unary", [2, 6]), ("gcd", [1071, 462]),
                                 ("kernel_main", []), ("toc_after_pointer_call", [5])] as [(String, [Int64])] {
                let entry = try image.entries(of: name)[0]
                try cpu.setInstructionCounting(true)
                try machine.architecture.prepareCall(cpu.emulator, memory: machine.memory, entry: entry,
                                                     arguments: args.map { UInt64(bitPattern: $0) },
                                                     stackTop: cpu.stackTop, returnAddress: cpu.returnSentinel)
                try cpu.emulator.write(machine.architecture.programCounter, entry.address)
                var shadow: [UInt64] = [], pc = entry.address, steps = 0
                while pc != cpu.returnSentinel, steps < 20_000 {
                    let arch = try XCTUnwrap(machine.architecture as? X86_64Architecture)
                    let (walk, framesRead, scannedFrom) = try arch.stackWalk(cpu.emulator, memory: machine.memory,
                                                                 stackTop: cpu.stackTop + 256, functions: code)
                    XCTAssertEqual(walk, try cpu.liveCodeAddresses(memory: machine.memory, functions: code))
                    let truth = [pc] + shadow.reversed()
                    let walked = walk.filter { $0 != cpu.returnSentinel }
                    if exact {
                        XCTAssertEqual(walked.map(hex), truth.map(hex), "\(sample) \(name) at \(hex(pc))")
                        // Every frame read by rbp up to the caller's sentinel (not code of the
                        // image: the scan goes on above it, and finds nothing there).
                        XCTAssertEqual(walk.prefix(framesRead).map(hex), (truth + [cpu.returnSentinel]).map(hex),
                                       "\(sample) \(name) at \(hex(pc)): frames read by rbp (scan from \(scannedFrom.map(hex) ?? "-"))")
                    } else {
                        XCTAssertTrue(Set(truth).isSubset(of: Set(walk)), "\(sample) \(name) at \(hex(pc)): \(walk.map(hex))")
                        extra += Set(walked).subtracting(truth).count
                        if scannedFrom != nil, framesRead <= truth.count { scanned += 1 }
                    }
                    boundaries += 1
                    let insn = try XCTUnwrap(disassembler.decodeOne(try machine.memory.read(pc, count: 16), address: pc))
                    if insn.mnemonic == "call" { shadow.append(pc + UInt64(insn.size)) }
                    if insn.mnemonic == "ret", !shadow.isEmpty { shadow.removeLast() }
                    guard case let .stopped(next) = cpu.step(from: pc, until: cpu.returnSentinel, instructions: 1) else {
                        pc = cpu.returnSentinel
                        break
                    }
                    pc = next
                    steps += 1
                }
                XCTAssertTrue(shadow.isEmpty, "\(sample) \(name): calls and returns pair up")
                XCTAssertEqual(pc, cpu.returnSentinel, "\(sample) \(name) returned")
            }
            print("\(sample): walk checked at \(boundaries) instruction boundaries\(exact ? ", all exact" : ", \(scanned) by the scan, \(extra) stale addresses named over all of them")")
        }
    }

}
