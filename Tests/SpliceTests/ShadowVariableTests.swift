import Splice
import XCTest

/// Shadow variables (the xSplice prototype): storage attached to an existing guest object by address,
/// from the host API and from a payload's code through host calls, on both ISAs.
final class ShadowVariableTests: XCTestCase {
    func testHostAPIAttachesGetsAndFrees() throws {
        let image = try loadImage(path: PayloadTests.targetPath("x86_64"))
        let shadows = try PayloadLoader(patcher: try LivePatcher(image: image, backend: try Architectures.backend(for: image.elf))).services.shadows
        let memory = image.machine.memory
        let full = shadows.freeBytes
        let a = try XCTUnwrap(shadows.attach(object: 0x1000, id: 7, size: 12))
        XCTAssertEqual(try memory.read(a, count: 16), [UInt8](repeating: 0, count: 16), "zeroed, 16-byte granules")
        XCTAssertNil(shadows.attach(object: 0x1000, id: 7, size: 8), "one variable per (object, id)")
        XCTAssertEqual(shadows.get(object: 0x1000, id: 7), a)
        XCTAssertNil(shadows.get(object: 0x1000, id: 8))
        XCTAssertNil(shadows.get(object: 0x1008, id: 7))
        let b = try XCTUnwrap(shadows.getOrAttach(object: 0x2000, id: 7, size: 8))
        XCTAssertEqual(shadows.getOrAttach(object: 0x2000, id: 7, size: 8), b, "found again, not attached twice")
        let c = try XCTUnwrap(shadows.attach(object: 0x2000, id: 9, size: 32))
        XCTAssertEqual(Set([a, b, c]).count, 3)
        XCTAssertEqual(shadows.all.map(\.id), [7, 7, 9])
        shadows.freeAll(id: 7)
        XCTAssertNil(shadows.get(object: 0x1000, id: 7))
        XCTAssertNil(shadows.get(object: 0x2000, id: 7))
        XCTAssertEqual(shadows.get(object: 0x2000, id: 9), c, "other ids stay")
        shadows.free(object: 0x2000, id: 9)
        XCTAssertTrue(shadows.all.isEmpty)
        XCTAssertEqual(shadows.freeBytes, full, "every byte back, free ranges merged")
        // Refusals: zero size, more than the heap.
        XCTAssertNil(shadows.attach(object: 1, id: 1, size: 0))
        XCTAssertNil(shadows.attach(object: 1, id: 1, size: Int(ShadowVariables.heapSize) + 1))
        // The heap fills up and is reused after frees.
        let chunk = Int(ShadowVariables.heapSize) / 4
        let big = (0..<4).compactMap { shadows.attach(object: UInt64($0), id: 2, size: chunk) }
        XCTAssertEqual(big.count, 4)
        XCTAssertNil(shadows.attach(object: 9, id: 2, size: 16), "full")
        shadows.free(object: 1, id: 2)
        XCTAssertEqual(shadows.attach(object: 9, id: 2, size: 16), big[1], "the freed range is used again")
    }

    /// Each host-call entry is the ISA's return followed by traps, as Capstone reads it back.
    func testHostCallEntriesDisassembleAsReturnThenTraps() throws {
        for (isa, ret, trap) in [("x86_64", "ret", "int3"), ("ppc64le", "blr", "trap")] {
            let image = try loadImage(path: PayloadTests.targetPath(isa))
            let calls = try PayloadLoader(patcher: try LivePatcher(image: image, backend: try Architectures.backend(for: image.elf))).services.hostCalls
            let d = try Disassembler(mode: image.machine.architecture.disassemblyMode)
            XCTAssertEqual(calls.functions.map(\.name).sorted(), ["splice_shadow_any", "splice_shadow_attach", "splice_shadow_free", "splice_shadow_free_all", "splice_shadow_get", "splice_shadow_get_or_attach", "splice_state_prev"], isa)
            for f in calls.functions {
                let at = try XCTUnwrap(calls.address(of: f.name))
                XCTAssertEqual(calls.symbols[f.name], at, isa)
                let insns = d.decode(try image.machine.memory.read(at, count: Int(HostCalls.entrySize)), address: at)
                XCTAssertEqual(insns.first?.mnemonic, ret, "\(isa) \(f.name)")
                XCTAssertEqual(Set(insns.dropFirst().map(\.mnemonic)), [trap], "\(isa) \(f.name): \(insns.map(\.text))")
            }
        }
    }

    func testConcurrentCallersKeepOneVariablePerObject() throws {
        let image = try loadImage(path: PayloadTests.targetPath("x86_64"))
        let shadows = try PayloadLoader(patcher: try LivePatcher(image: image, backend: try Architectures.backend(for: image.elf))).services.shadows
        let results = UnsafeMutablePointer<UInt64>.allocate(capacity: 8 * 64)
        defer { results.deallocate() }
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            for o in 0..<64 { results[t * 64 + o] = shadows.getOrAttach(object: UInt64(o), id: 1, size: 8) ?? 0 }
        }
        for o in 0..<64 {
            let seen = Set((0..<8).map { results[$0 * 64 + o] })
            XCTAssertEqual(seen.count, 1, "object \(o): every thread got the same variable")
            XCTAssertNotEqual(seen.first, 0)
        }
        XCTAssertEqual(shadows.all.count, 64)
    }

    /// Payload 06 makes `poke` count the writes to each object in a shadow variable: the
    /// payload's code calls splice_shadow_get_or_attach, a host call, on every vCPU.
    func testPayloadCodeAttachesShadowVariablesOnEveryVCPU() throws {
        for isa in PayloadTests.isas {
            let (payload, _, _) = try PayloadTests.build("06-shadow-write-count", isa)
            let image = try loadImage(path: PayloadTests.targetPath(isa), vcpus: 4)
            let patcher = try LivePatcher(image: image, backend: try Architectures.backend(for: image.elf))
            let loader = try PayloadLoader(patcher: patcher)
            let objects = try image.machine.map(name: "objects", at: 0x5000_0000, size: 0x1_0000, permissions: [.read, .write])
            let (a, b) = (Int64(objects.base), Int64(objects.base + 0x100))
            XCTAssertEqual(try image.call("poke", [a, 5]).signedValue, 5, "\(isa): original returns the value")
            let lp = try loader.load(payload)
            try loader.apply(lp)
            XCTAssertEqual(try image.call("poke", [a, 6], vcpu: 0).signedValue, 1, "\(isa)")
            XCTAssertEqual(try image.call("poke", [a, 7], vcpu: 1).signedValue, 2, "\(isa): same variable from vCPU 1")
            XCTAssertEqual(try image.call("poke", [b, 1], vcpu: 2).signedValue, 1, "\(isa): another object")
            XCTAssertEqual(try image.call("poke", [a, 8], vcpu: 3).signedValue, 3, "\(isa)")
            XCTAssertEqual(try image.call("peek", [a]).signedValue, 8, "\(isa): the object itself is written as before")
            let va = try XCTUnwrap(loader.services.shadows.get(object: UInt64(a), id: 1), isa)
            XCTAssertEqual(try image.machine.memory.readUInt64(va), 3, "\(isa): the count, read by the host")
            XCTAssertEqual(loader.services.shadows.all.count, 2, isa)
            XCTAssertEqual(loader.services.hostCalls.callCounts.reduce(0, +), 4, "\(isa): one host call per patched poke")
            // Reverting the code leaves the variables (a later payload may use them) ...
            try loader.revert(lp)
            XCTAssertEqual(try image.call("poke", [a, 9]).signedValue, 9, "\(isa): original again")
            XCTAssertEqual(try image.machine.memory.readUInt64(va), 3, isa)
            // ... and applying again finds them.
            try loader.apply(lp)
            XCTAssertEqual(try image.call("poke", [a, 10]).signedValue, 4, "\(isa): the count went on")
            loader.services.shadows.freeAll(id: 1)
            XCTAssertEqual(try image.call("poke", [a, 11]).signedValue, 1, "\(isa): freed, attached anew")
        }
    }
}
