import Splice
import XCTest

/// x86-64 redirects, run in Unicorn: every assertion about a patch is a call of real code.
final class X86_64PatchingTests: XCTestCase {
    let backend = X86_64PatchBackend()

    func patcher(_ image: String = Samples.x86_64) throws -> LivePatcher {
        try LivePatcher(image: try loadImage(path: samplePath(image)), backend: backend)
    }

    /// Every byte of every executable region of the machine, for before/after checks.
    func codeSnapshot(_ p: LivePatcher) throws -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        for r in p.machine.memory.regions where r.permissions.contains(.execute) {
            out[r.name] = try p.machine.memory.read(r.base, count: Int(r.size))
        }
        return out
    }

    func value(_ p: LivePatcher, _ f: String, _ args: [Int64]) throws -> Int64 {
        try p.image.call(f, args).signedValue
    }

    func count(_ p: LivePatcher, _ f: String, _ args: [Int64]) throws -> UInt64 {
        try XCTUnwrap(p.image.call(f, args).instructions)
    }

    func decode(_ p: LivePatcher, at address: UInt64, count: Int = 1) throws -> [DecodedInstruction] {
        try p.machine.disassemble(at: address, count: count)
    }

    func testNearRedirectReachesEveryCaller() throws {
        let p = try patcher()
        let before = try codeSnapshot(p)
        XCTAssertEqual(try value(p, "scaled", [10]), 31)
        let target = try p.image.function(named: "checked_double")
        let r = try p.redirect("scaled", to: "checked_double")
        XCTAssertEqual(r.plan.method, "jmp rel32")
        // The site now holds exactly `jmp checked_double`, 5 bytes (Capstone referee).
        let jmp = try XCTUnwrap(decode(p, at: r.plan.site.address).first)
        XCTAssertEqual(jmp.text, "jmp \(hex(target.value))")
        XCTAssertEqual(jmp.size, 5)
        // Directly, through a function pointer, and from other functions.
        XCTAssertEqual(try value(p, "scaled", [10]), 20)
        XCTAssertEqual(try value(p, "apply_unary", [0, 10]), 20)
        XCTAssertEqual(try value(p, "scaled_twice", [10]), 40)
        XCTAssertEqual(try value(p, "apply_op", [3, 4, 5]), 13)
        // One extra guest instruction: the jmp.
        XCTAssertEqual(try count(p, "scaled", [10]) - count(p, "checked_double", [10]), 1)

        try p.revert("scaled")
        XCTAssertEqual(try value(p, "scaled", [10]), 31)
        XCTAssertEqual(try value(p, "apply_unary", [0, 10]), 31)
        XCTAssertEqual(try value(p, "scaled_twice", [10]), 94)
        XCTAssertEqual(try value(p, "apply_op", [3, 4, 5]), 18)
        XCTAssertEqual(try codeSnapshot(p), before, "text byte-identical after revert")
        XCTAssertTrue(p.active.isEmpty)
    }

    func testShortFunctionIsRefusedAndNothingChanges() throws {
        let p = try patcher()
        let before = try codeSnapshot(p)
        let regions = p.machine.memory.regions.map(\.name)
        assertThrows(PatchError.functionTooShort(function: "identity", room: 4, needed: 5, method: "jmp rel32")) {
            try p.redirect("identity", to: "add")
        }
        // Also when the target is new code: the region allocated for it goes away again.
        assertThrows(PatchError.functionTooShort(function: "peek", room: 4, needed: 5, method: "jmp rel32")) {
            try p.redirect("peek", toCode: [0xc3])
        }
        XCTAssertEqual(try codeSnapshot(p), before)
        XCTAssertEqual(p.machine.memory.regions.map(\.name), regions, "no region left behind")
        XCTAssertEqual(try value(p, "identity", [7]), 7)
        // `add` is exactly 5 bytes: just enough.
        try p.redirect("add", to: "gcd")
        XCTAssertEqual(try value(p, "add", [1071, 462]), 21)
    }

    /// `mov rax, 777; ret`
    let farCode: [UInt8] = [0x48, 0xc7, 0xc0, 0x09, 0x03, 0x00, 0x00, 0xc3]
    let farAddress: UInt64 = 0x2_0000_0000 // 8 GiB: far beyond ±2 GB of the image at 4 MiB

    func testFarTargetWithAbsoluteJump() throws {
        let p = try patcher()
        let before = try codeSnapshot(p)
        let r = try p.redirect("fib", toCode: farCode, at: farAddress)
        XCTAssertTrue(r.plan.method.hasPrefix("jmp [rip] absolute"), r.plan.method)
        let site = r.plan.site.address
        let jump = try XCTUnwrap(decode(p, at: site).first)
        XCTAssertEqual(jump.text, "jmp qword ptr [rip]")
        XCTAssertEqual(try p.machine.memory.readUInt64(site + 6), farAddress)
        XCTAssertEqual(try value(p, "fib", [10]), 777)
        // kernel_main returns 3 + fib(10) + ... + tick_count, and bumps tick_count: on a fresh
        // machine that is 111 with fib(10) = 55.
        XCTAssertEqual(try value(p, "kernel_main", []), 111 - 55 + 777, "fib called from kernel_main")
        XCTAssertEqual(try count(p, "fib", [10]), 3, "jmp [rip], mov, ret")
        try p.revert("fib")
        XCTAssertEqual(try value(p, "fib", [10]), 55)
        XCTAssertEqual(try codeSnapshot(p), before)
    }

    func testFarTargetThroughASlotWhenTheFunctionIsShort() throws {
        let p = try patcher()
        let before = try codeSnapshot(p)
        let regionsBefore = p.machine.memory.regions.map(\.name)
        let r = try p.redirect("scaled", toCode: farCode, at: farAddress)
        XCTAssertEqual(r.plan.writes.count, 2)
        let slot = try XCTUnwrap(r.plan.allocations.first { $0.address != self.farAddress })
        let site = r.plan.site.address
        // Site: jmp rel32 to the slot (within ±2 GB); slot: jmp [rip] to the far code.
        XCTAssertEqual(try XCTUnwrap(decode(p, at: site).first).text, "jmp \(hex(slot.address))")
        XCTAssertLessThan(slot.address > site ? slot.address - site : site - slot.address, 1 << 31)
        XCTAssertEqual(try XCTUnwrap(decode(p, at: slot.address).first).text, "jmp qword ptr [rip]")
        XCTAssertEqual(try p.machine.memory.readUInt64(slot.address + 6), farAddress)
        XCTAssertEqual(try value(p, "scaled", [10]), 777)
        XCTAssertEqual(try value(p, "scaled_twice", [10]), 777)
        XCTAssertEqual(try count(p, "scaled", [10]), 4, "jmp slot, jmp [rip], mov, ret")
        try p.revert("scaled")
        XCTAssertEqual(try value(p, "scaled", [10]), 31)
        XCTAssertEqual(try codeSnapshot(p), before)
        XCTAssertEqual(p.machine.memory.regions.map(\.name), regionsBefore, "slot and code regions unmapped")
    }

    func testNoOpPatches() throws {
        let p = try patcher()
        let before = try codeSnapshot(p)
        // Whole function: counter_add returns at once and counts nothing.
        let r = try p.makeNoOp("counter_add")
        XCTAssertEqual(try XCTUnwrap(decode(p, at: r.plan.site.address).first).text, "ret")
        _ = try value(p, "counter_add", [5])
        XCTAssertEqual(try value(p, "counter_get", [0]), 0)
        try p.revert("counter_add")
        XCTAssertEqual(try value(p, "counter_add", [5]), 5)
        // A function shorter than a jmp can still be made a no-op.
        try p.makeNoOp("identity")
        try p.revert("identity")
        // Part of a function: the store of counter_add becomes NOPs, the rest runs.
        let add = try p.image.function(named: "counter_add")
        let insns = try decode(p, at: add.value, count: 4)
        let store = try XCTUnwrap(insns.first { $0.mnemonic == "mov" && $0.operands.hasPrefix("qword ptr [rip") })
        let nop = try p.nopOut("counter_add", offset: store.address - add.value, length: store.size)
        let filled = try decode(p, at: store.address, count: 1)
        XCTAssertEqual(filled.map(\.mnemonic), ["nop"])
        XCTAssertEqual(filled.first?.size, store.size, "one NOP instruction of the same length")
        XCTAssertEqual(try value(p, "counter_add", [7]), 12, "computes 5 + 7")
        XCTAssertEqual(try value(p, "counter_get", [0]), 5, "but stores nothing")
        try p.revert(id: nop.id)
        XCTAssertEqual(try value(p, "counter_add", [1]), 6)
        // Ranges that would break the function are refused.
        let offset = store.address - add.value
        XCTAssertThrowsError(try p.nopOut("counter_add", offset: offset + 1, length: 3)) { error in
            XCTAssertTrue("\(error)".contains("does not start on an instruction boundary"), "\(error)")
        }
        XCTAssertThrowsError(try p.nopOut("counter_add", offset: offset, length: store.size + 1)) { error in
            XCTAssertTrue("\(error)".contains("would remove the ret"), "\(error)")
        }
        XCTAssertThrowsError(try p.nopOut("counter_add", offset: 0, length: 100)) { error in
            XCTAssertTrue("\(error)".contains("outside the function"), "\(error)")
        }
        // The calls changed .data only; after the reverts the code is as before.
        XCTAssertEqual(try codeSnapshot(p), before)
    }

    /// A write longer than the 16 bytes a packed write holds inline (a 20-byte NOP fill)
    /// goes in whole, comes out whole, and is put back whole when a later function of the
    /// same batch fails its check while the vCPUs are stopped.
    func testALongNOPFillIsWrittenAndRolledBackWhole() throws {
        let p = try patcher()
        let before = try codeSnapshot(p)
        let main = try p.image.function(named: "kernel_main")
        let insns = try decode(p, at: main.value, count: 5) // push rbx; mov; mov; mov; call add
        XCTAssertEqual(insns.map(\.mnemonic), ["push", "mov", "mov", "mov", "call"])
        let offset = insns[1].address - main.value, length = insns[1...].reduce(0) { $0 + $1.size }
        XCTAssertGreaterThan(length, 16)
        let target = RedirectTarget.nopOut(offset: offset, length: length)
        let nop = try p.apply(batch: [.init(function: "kernel_main", target: target)])[0]
        XCTAssertEqual(nop.plan.writes.map(\.bytes.count), [length], "one write")
        XCTAssertEqual(try p.machine.memory.read(insns[1].address, count: length), nop.plan.writes[0].bytes)
        XCTAssertEqual(Set(try decode(p, at: insns[1].address, count: 2).map(\.mnemonic)), ["nop"])
        try p.revert(id: nop.id)
        XCTAssertEqual(try codeSnapshot(p), before)
        let tampered = try p.site(of: "fib").address
        let original = try p.machine.memory.read(tampered, count: 1)
        p.executor = AtomicityTests.TamperingExecutor(machine: p.machine, address: tampered)
        let add = try p.image.function(named: "add").value
        XCTAssertThrowsError(try p.apply(batch: [.init(function: "kernel_main", target: target),
                                                 .init(function: "fib", target: .address(add))])) { error in
            guard case PatchError.unexpectedBytes("fib", tampered, _, _)? = error as? PatchError else { return XCTFail("\(error)") }
        }
        try p.machine.memory.write(tampered, original)
        XCTAssertEqual(try codeSnapshot(p), before, "the 20 NOP bytes were taken back")
        XCTAssertTrue(p.active.isEmpty)
    }

    func testEndbrFunctionKeepsItsLandingPad() throws {
        let p = try patcher()
        let f = try p.image.function(named: "checked_double")
        let site = try p.site(of: "checked_double")
        XCTAssertEqual(site.kind, .afterLandingPad)
        XCTAssertEqual(site.address, f.value + 4)
        try p.redirect("checked_double", to: "scaled")
        let insns = try decode(p, at: f.value, count: 2)
        XCTAssertEqual(insns.map(\.mnemonic), ["endbr64", "jmp"])
        XCTAssertEqual(try value(p, "checked_double", [10]), 31)
        XCTAssertEqual(try value(p, "apply_unary", [3, 10]), 31, "an indirect call lands on the endbr64")
        try p.revert("checked_double")
        XCTAssertEqual(try value(p, "apply_unary", [3, 10]), 20)
        // A NOP range may not take the endbr64 away.
        XCTAssertThrowsError(try p.nopOut("checked_double", offset: 0, length: 4)) { error in
            XCTAssertTrue("\(error)".contains("endbr64"), "\(error)")
        }
    }

    func testPatchableEntrySitesLeaveTheBodyAlone() throws {
        for (image, form) in [(Samples.x86_64Fentry, "call"), ("kernel-x86_64-pfe.elf", "nop")] {
            let p = try patcher(image)
            let before = try codeSnapshot(p)
            for name in ["scaled", "checked_double"] {
                let f = try p.image.function(named: name)
                let site = try p.site(of: name)
                XCTAssertEqual(site.kind, .patchableEntry, "\(image) \(name)")
                XCTAssertEqual(site.room, 5)
                XCTAssertEqual(site.address - f.value, name == "checked_double" ? 4 : 0)
                XCTAssertEqual(try XCTUnwrap(decode(p, at: site.address).first).mnemonic, form, image)
            }
            let r = try p.redirect("scaled", to: "checked_double")
            XCTAssertEqual(r.plan.writes.map(\.bytes.count), [5])
            XCTAssertEqual(try value(p, "scaled", [10]), 20, image)
            XCTAssertEqual(try value(p, "scaled_twice", [10]), 40, image)
            XCTAssertEqual(try count(p, "scaled", [10]) - count(p, "checked_double", [10]), 1, "\(image): +1 jmp")
            // Everything after the 5-byte slot is untouched.
            let f = try p.image.function(named: "scaled")
            XCTAssertEqual(try p.machine.memory.read(f.value + 5, count: Int(f.size) - 5),
                           Array(try p.image.elf.bytes(of: f).dropFirst(5)))
            // Far code through a short slot: a hop via a far-jump slot.
            let far = try p.redirect("gcd", toCode: farCode, at: farAddress)
            XCTAssertEqual(far.plan.writes.count, 2, image)
            XCTAssertEqual(try value(p, "gcd", [10, 4]), 777)
            try p.revertAll()
            XCTAssertEqual(try codeSnapshot(p), before, image)
        }
    }

    func testSiteVerificationKnowsThePatchableForms() throws {
        let p = try patcher(Samples.x86_64Fentry)
        let site = try p.site(of: "scaled")
        let elf = p.image.elf
        for form in [[0x0f, 0x1f, 0x44, 0x00, 0x00], [0x90, 0x90, 0x90, 0x90, 0x90]] as [[UInt8]] {
            XCTAssertNoThrow(try backend.verifyUnpatched(form, at: site, in: elf))
        }
        XCTAssertThrowsError(try backend.verifyUnpatched([0xe9, 0, 0, 0, 0], at: site, in: elf))
        // Somebody else changed the site behind the patcher's back: refused, nothing written.
        try p.machine.memory.write(site.address, [0x0f, 0x1f, 0x44, 0x00, 0x00])
        let changed = try codeSnapshot(p)
        XCTAssertThrowsError(try p.redirect("scaled", to: "add")) { error in
            guard case PatchError.unexpectedBytes(let f, let a, _, let found)? = error as? PatchError else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual(f, "scaled")
            XCTAssertEqual(a, site.address)
            XCTAssertEqual(found, [0x0f, 0x1f, 0x44, 0x00, 0x00])
        }
        XCTAssertEqual(try codeSnapshot(p), changed)
    }

    func testStackedRedirectsRevertFromTheTop() throws {
        let p = try patcher()
        let before = try codeSnapshot(p)
        let first = try p.redirect("fib", to: "gcd")          // near, 5 bytes
        XCTAssertEqual(try value(p, "fib", [1071, 462]), 21)
        let second = try p.redirect("fib", toCode: farCode, at: farAddress) // absolute, 14 bytes over the first
        XCTAssertEqual(try value(p, "fib", [10]), 777)
        XCTAssertEqual(p.redirects(of: "fib").map(\.id), [first.id, second.id])
        assertThrows(PatchError.notTopmost(function: "fib", id: first.id, top: second.id)) { try p.revert(id: first.id) }
        XCTAssertEqual(try value(p, "fib", [10]), 777, "the refused revert changed nothing")
        try p.revert("fib")
        XCTAssertEqual(try value(p, "fib", [1071, 462]), 21, "back to the redirect below")
        try p.revert("fib")
        XCTAssertEqual(try value(p, "fib", [10]), 55)
        XCTAssertEqual(try codeSnapshot(p), before)
        assertThrows(PatchError.notRedirected("fib")) { try p.revert("fib") }
        assertThrows(PatchError.noSuchRedirect(99)) { try p.revert(id: 99) }
    }

    func testRevertRefusesWhenTheSiteChangedBehindItsBack() throws {
        let p = try patcher()
        let r = try p.redirect("scaled", to: "checked_double")
        try p.machine.memory.write(r.plan.site.address, [0xcc])
        let changed = try codeSnapshot(p)
        XCTAssertThrowsError(try p.revert("scaled")) { error in
            guard case PatchError.unexpectedBytes(_, let address, let expected, _)? = error as? PatchError else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual(address, r.plan.site.address)
            XCTAssertEqual(expected, r.plan.writes[0].bytes)
        }
        XCTAssertEqual(try codeSnapshot(p), changed, "nothing written")
        XCTAssertEqual(p.active.count, 1, "still listed as active")
    }

    func testRevertAllAcrossFunctions() throws {
        let p = try patcher()
        let before = try codeSnapshot(p)
        try p.redirect("scaled", to: "checked_double")
        try p.redirect("gcd", toCode: farCode, at: farAddress)
        try p.makeNoOp("counter_add")
        try p.redirect("scaled", to: "fib")
        XCTAssertEqual(p.active.count, 4)
        try p.revertAll()
        XCTAssertTrue(p.active.isEmpty)
        XCTAssertEqual(try codeSnapshot(p), before)
        let fresh = try loadImage(path: samplePath(Samples.x86_64))
        XCTAssertEqual(try value(p, "kernel_main", []), try fresh.call("kernel_main").signedValue)
    }

    func testRegistrySelectsBackendsByNameAndMachine() throws {
        XCTAssertEqual(try Architectures.backend(named: "x86_64").architecture.name, "x86_64")
        let elf = try ELFFile(contentsOf: samplePath(Samples.x86_64))
        XCTAssertEqual(try Architectures.backend(for: elf).architecture.name, "x86_64")
        XCTAssertEqual(try Architectures.backend(named: "ppc64le").architecture.name, "ppc64le")
        let ppcELF = try ELFFile(contentsOf: samplePath(Samples.ppc64le))
        XCTAssertEqual(try Architectures.backend(for: ppcELF).architecture.name, "ppc64le")
        XCTAssertThrowsError(try Architectures.backend(named: "mips")) { error in
            XCTAssertEqual("\(error)", "no patch backend for mips: Splice knows x86_64, ppc64le")
        }
        // A backend refuses an image of another ISA.
        let ppc = try loadImage(path: samplePath(Samples.ppc64le))
        XCTAssertThrowsError(try LivePatcher(image: ppc, backend: backend))
    }
}
