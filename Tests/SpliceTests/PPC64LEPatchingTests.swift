import Splice
import XCTest

/// ppc64le redirects, run in Unicorn: the kernel sample plus a "patch module" image with
/// its own TOC in one machine.
final class PPC64LEPatchingTests: XCTestCase {
    struct Setup {
        let machine: Machine
        let kernel: LoadedImage
        let patch: LoadedImage
        let patcher: LivePatcher
        var toc: UInt64 { kernel.elf.symbol(named: ".TOC.")!.value }
        func address(_ f: String) throws -> UInt64 { try patch.function(named: f).value }
        func value(_ f: String, _ args: [Int64], entry: EntryKind = .global) throws -> Int64 {
            try kernel.call(f, args, entry: entry, limits: .init(instructions: 1_000_000)).signedValue
        }
        /// What the guest recorded as its r2 after a call (0 before each probe).
        func observedTOC(after f: String, _ args: [Int64]) throws -> (Int64, UInt64) {
            let slot = kernel.elf.symbol(named: "observed_toc")!.value
            try machine.memory.writeUInt64(slot, 0)
            let v = try value(f, args)
            return (v, try machine.memory.readUInt64(slot))
        }
        func code() throws -> [String: [UInt8]] {
            var out: [String: [UInt8]] = [:]
            for r in machine.memory.regions where r.permissions.contains(.execute) {
                out[r.name] = try machine.memory.read(r.base, count: Int(r.size))
            }
            return out
        }
    }

    func setup(_ backend: any PatchBackend = PPC64LEPatchBackend()) throws -> Setup {
        let machine = try Machine(architecture: PPC64LEArchitecture())
        let kernel = try machine.load(try ELFFile(contentsOf: samplePath(Samples.ppc64le)))
        let patch = try machine.load(try ELFFile(contentsOf: samplePath("patch-ppc64le.elf")))
        return Setup(machine: machine, kernel: kernel, patch: patch,
                     patcher: try LivePatcher(image: kernel, backend: backend))
    }

    func testMachineStartTurnsEveryMcountCallIntoANop() throws {
        let s = try setup()
        var sites = 0
        for f in s.kernel.elf.functions where !["_start", "_mcount"].contains(f.name) {
            let site = try s.patcher.site(of: f.name)
            XCTAssertEqual(try s.machine.memory.readUInt32(site.address), PPC64LEInstruction.nop, f.name)
            sites += 1
        }
        XCTAssertGreaterThanOrEqual(sites, 20)
        // The kernel still computes the same, with two instructions fewer per call (no _mcount round trip).
        let fresh = try loadImage(path: samplePath(Samples.ppc64le))
        let before = try fresh.call("scaled", [10]), after = try s.kernel.call("scaled", [10])
        XCTAssertEqual(after.signedValue, before.signedValue)
        XCTAssertEqual(before.instructions! - after.instructions!, 4, "bl _mcount + its 4-instruction stub - nop")
    }

    func testRedirectToAnotherTOCRestoresTheCallersTOC() throws {
        for strategy in ReturnStrategy.allCases {
            let s = try setup(PPC64LEPatchBackend(strategy: strategy))
            let pristine = try s.code()
            XCTAssertEqual(try s.value("scaled", [10]), 31)
            let r = try s.patcher.redirect("scaled", toAddress: try s.address("scaled_v2"), label: "scaled_v2")
            XCTAssertEqual(r.plan.writes.map(\.purpose).first, "site table: the new address")
            // Global calls: the host at the global entry, and the kernel through a pointer.
            XCTAssertEqual(try s.value("scaled", [10]), 1050, "\(strategy)")
            XCTAssertEqual(try s.value("apply_unary", [0, 10]), 1050, "\(strategy)")
            var (v, toc) = try s.observedTOC(after: "toc_after_pointer_call", [0, 10])
            XCTAssertEqual(v, 2100, "\(strategy)")
            XCTAssertEqual(toc, s.toc, "\(strategy): r2 after a global call")
            // Local calls: r2 must come back as the caller's own TOC.
            (v, toc) = try s.observedTOC(after: "toc_after_local_call", [10])
            XCTAssertEqual(v, 1050, "\(strategy)")
            XCTAssertEqual(toc, s.toc, "\(strategy): r2 after a local call")
            XCTAssertEqual(try s.value("scaled_twice", [10]), 6250, "\(strategy): two nested local calls")
            // The host as a local caller: r2 (the TOC it passed) is back when it returns.
            XCTAssertEqual(try s.value("scaled", [10], entry: .local), 1050, "\(strategy)")
            XCTAssertEqual(try s.machine.vcpus[0].read(PPC64LERegisters.r2), s.toc, "\(strategy)")
            // Disable: results and every code byte as before.
            try s.patcher.revert("scaled")
            XCTAssertEqual(try s.value("scaled", [10]), 31)
            XCTAssertEqual(try s.value("scaled_twice", [10]), 94)
            XCTAssertEqual(try s.code(), pristine, "\(strategy): text byte-identical after disable")
        }
    }

    func testSiteAndMarkBytesBeforeAndAfter() throws {
        let s = try setup()
        let site = try s.patcher.site(of: "scaled")
        let mark = try XCTUnwrap(site.globalEntryMark)
        XCTAssertEqual(site.address - mark, 8)
        let d = try Disassembler(mode: .ppc64le)
        func text(_ a: UInt64) throws -> String { d.decodeOne(try s.machine.memory.read(a, count: 4), address: a)!.text }
        XCTAssertEqual(try text(site.address), "nop")
        XCTAssertEqual(try text(mark), "addi r2, r2, 0x7f00")
        try s.patcher.redirect("scaled", toAddress: try s.address("scaled_v2"))
        let rt = try XCTUnwrap(s.patcher.runtime as? PPC64LERuntime)
        XCTAssertEqual(try text(site.address), "bl \(hex(rt.ftraceCaller))")
        XCTAssertEqual(try text(mark), "addi r2, r2, 0x7f01")
    }

    func testLeafFunctionsNeedNoMark() throws {
        let s = try setup()
        for name in ["add", "boundary_leaf"] {
            let site = try s.patcher.site(of: name)
            XCTAssertNil(site.globalEntryMark, name)
            let r = try s.patcher.redirect(name, toAddress: try s.address("scaled_v2"))
            XCTAssertEqual(r.plan.writes.count, 2, "\(name): table entry and branch, no mark")
        }
        let boundary = try s.kernel.function(named: "boundary_leaf")
        XCTAssertEqual(boundary.value & 0xffff, 0, "starts on a 64 KiB boundary")
        XCTAssertTrue(try s.patcher.site(of: "boundary_leaf").note.contains("64 KiB"))
        XCTAssertEqual(try s.value("add", [10, 99]), 1050)
        XCTAssertEqual(try s.value("boundary_leaf", [10]), 1050)
        // kernel_main is 111 on a fresh machine, with add(1, 2) = 3 in it; now add is scaled_v2(1) = 1005.
        XCTAssertEqual(try s.value("kernel_main", []), 111 - 3 + 1005)
    }

    func testOlderPrologueMarksSiteMinus12() throws {
        let s = try setup()
        XCTAssertEqual(try s.value("old_prologue_scaled", [10]), 32)
        let site = try s.patcher.site(of: "old_prologue_scaled")
        XCTAssertEqual(site.address - (try XCTUnwrap(site.globalEntryMark)), 12)
        XCTAssertTrue(site.note.contains("older prologue"))
        try s.patcher.redirect("old_prologue_scaled", toAddress: try s.address("scaled_v2"))
        XCTAssertEqual(try s.value("old_prologue_scaled", [10]), 1050)
        XCTAssertEqual(try s.value("old_prologue_scaled", [10], entry: .local), 1050)
        XCTAssertEqual(try s.machine.vcpus[0].read(PPC64LERegisters.r2), s.toc)
        try s.patcher.revertAll()
        XCTAssertEqual(try s.value("old_prologue_scaled", [10]), 32)
    }

    func testFtraceCallerBeyond32MBIsReachedThroughAStub() throws {
        let s = try setup(PPC64LEPatchBackend(runtimeAddress: 0x5000_0000))
        let pristine = try s.code()
        let r = try s.patcher.redirect("scaled", toAddress: try s.address("scaled_v2"))
        XCTAssertTrue(r.plan.method.hasPrefix("bl stub"), r.plan.method)
        let stub = try XCTUnwrap(r.plan.allocations.first)
        let d = try Disassembler(mode: .ppc64le)
        let listing = d.decode(try s.machine.memory.read(stub.address, count: stub.size), address: stub.address).map(\.text)
        let rt = try XCTUnwrap(s.patcher.runtime as? PPC64LERuntime)
        XCTAssertEqual(listing, ["lis r12, 0x5000", "ori r12, r12, \(hex(rt.ftraceCaller & 0xffff))",
                                 "mtctr r12", "bctr"])
        XCTAssertEqual(try s.value("scaled", [10]), 1050)
        XCTAssertEqual(try s.value("scaled_twice", [10]), 6250)
        try s.patcher.revert("scaled")
        XCTAssertEqual(try s.code(), pristine, "stub released, bytes back")
    }

    /// The ppc64 RFC's sibling-call hazard, run: a module with its own TOC calls a kernel function through a
    /// pointer; that function sibling-calls a redirected function at its local entry.
    func testSiblingCallHazardFramelessVersusShadowStack() throws {
        var results: [ReturnStrategy: Int64] = [:]
        for strategy in ReturnStrategy.allCases {
            let s = try setup(PPC64LEPatchBackend(strategy: strategy))
            try s.patcher.redirect("scaled", toAddress: try s.address("scaled_v2"))
            let sibling = try s.kernel.function(named: "sibling_scaled").value
            results[strategy] = try s.patch.call("module_call", [Int64(sibling), 10]).signedValue
        }
        let correct: Int64 = (11 * 5 + 1000) + 1_000_000 // scaled_v2(11) + module_bias
        XCTAssertEqual(results[.shadowStack], correct, "the livepatch stack returns correctly")
        // Frameless: the kernel TOC lands in the module's TOC save slot; after the call the
        // module reloads it and reads module_bias through the wrong TOC.
        XCTAssertNotEqual(results[.frameless], correct)
        XCTAssertEqual(results[.frameless], 11 * 5 + 1000, "module_bias read as 0 through the kernel's TOC")
    }

    /// The same hazard with the strategy chosen the way common code chooses it: by name,
    /// through the registry. Each name must give that strategy's behaviour, not only its name.
    func testTheRegistryChoosesTheReturnStrategyByName() throws {
        let correct: Int64 = (11 * 5 + 1000) + 1_000_000
        let expected: [String: Int64] = ["frameless": 11 * 5 + 1000, "shadow-stack": correct]
        XCTAssertEqual(Set(try Architectures.backend(named: "ppc64le").returnStrategies), Set(expected.keys))
        for (name, value) in expected {
            let backend = try Architectures.backend(named: "ppc64le", returnStrategy: name)
            XCTAssertEqual(backend.returnStrategy, name)
            let s = try setup(backend)
            try s.patcher.redirect("scaled", toAddress: try s.address("scaled_v2"))
            let sibling = try s.kernel.function(named: "sibling_scaled").value
            XCTAssertEqual(try s.patch.call("module_call", [Int64(sibling), 10]).signedValue, value, name)
        }
        // A name the backend does not offer, and a backend that offers none: refused, saying what there is.
        XCTAssertThrowsError(try Architectures.backend(named: "ppc64le", returnStrategy: "trampoline")) {
            XCTAssertEqual("\($0)", "ppc64le has no return strategy 'trampoline'; it offers frameless, shadow-stack")
        }
        XCTAssertThrowsError(try Architectures.backend(named: "x86_64", returnStrategy: "frameless")) {
            XCTAssertEqual("\($0)", "x86_64 has no return strategy 'frameless': it has only one way to return")
        }
    }

    /// A redirected function that sibling-calls another redirected one: the second
    /// ftrace_caller sees LR already pointing at the helper (the RFC's emergency exit).
    func testEmergencyExitForNestedSiblingRedirects() throws {
        for strategy in ReturnStrategy.allCases {
            for bailOut in [true, false] {
                let s = try setup(PPC64LEPatchBackend(strategy: strategy, siblingBailOut: bailOut))
                try s.patcher.redirect("scaled_twice", to: "sibling_scaled")
                try s.patcher.redirect("scaled", toAddress: try s.address("scaled_v2"))
                let label = "\(strategy), bail-out \(bailOut)"
                do {
                    let v = try s.value("scaled_twice", [10], entry: .local)
                    XCTAssertEqual(v, 1055, label)
                    XCTAssertEqual(try s.machine.vcpus[0].read(PPC64LERegisters.r2), s.toc, label)
                    XCTAssertTrue(bailOut || strategy == .shadowStack, "\(label): expected to fail")
                } catch let fault as GuestFault {
                    // Frameless without the exit: the helper's saved return address becomes
                    // the helper itself, and the vCPU loops there until the bound stops it.
                    XCTAssertEqual(strategy, .frameless, label)
                    XCTAssertFalse(bailOut, label)
                    XCTAssertEqual(fault.kind, .limitReached("instruction limit of 1000000 reached"), label)
                    let rt = try XCTUnwrap(s.patcher.runtime as? PPC64LERuntime)
                    XCTAssertTrue((rt.returnHelper..<rt.returnHelper + 20).contains(fault.pc), "\(label): looping in the helper")
                }
            }
        }
    }

    func testNoOpAndRefusals() throws {
        let s = try setup()
        let pristine = try s.code()
        try s.patcher.makeNoOp("counter_add")
        _ = try s.value("counter_add", [5])
        XCTAssertEqual(try s.value("counter_get", [0]), 0, "counter_add returned before its body")
        try s.patcher.revert("counter_add")
        XCTAssertEqual(try s.value("counter_add", [5]), 5)
        XCTAssertThrowsError(try s.patcher.nopOut("counter_add", offset: 2, length: 4)) { error in
            XCTAssertTrue("\(error)".contains("whole 4-byte instructions"), "\(error)")
        }
        XCTAssertThrowsError(try s.patcher.nopOut("counter_add", offset: 0, length: 8)) { error in
            XCTAssertTrue("\(error)".contains("entry or the mcount site"), "\(error)")
        }
        // A site that is no longer the machine-start nop is refused, nothing written.
        let site = try s.patcher.site(of: "gcd")
        try s.machine.memory.write(site.address, PPC64LEInstruction.bytes(PPC64LEInstruction.trap))
        let changed = try s.code()
        XCTAssertThrowsError(try s.patcher.redirect("gcd", to: "add")) { error in
            XCTAssertTrue("\(error)".contains("nop the machine start left"), "\(error)")
        }
        XCTAssertEqual(try s.code(), changed)
        try s.machine.memory.write(site.address, PPC64LEInstruction.bytes(PPC64LEInstruction.nop))
        XCTAssertEqual(try s.code(), pristine)
    }

    func testRelocationsWithoutTOC() throws {
        let b = PPC64LEPatchBackend()
        let ctx = RelocationContext(section: ".rela.text", index: 0, symbolName: "f")
        var bytes = PPC64LEInstruction.bytes(0x4800_0001) + [UInt8](repeating: 0, count: 12) // bl .+0
        try b.relocate(type: 10, addend: 0, symbol: 0x1000_0100, place: 0x1000_0000, bytes: &bytes, offset: 0, context: ctx)
        XCTAssertEqual(try Disassembler(mode: .ppc64le).decodeOne(Array(bytes[0..<4]), address: 0x1000_0000)?.text, "bl 0x10000100")
        try b.relocate(type: 38, addend: 8, symbol: 0x3000_0000, place: 0, bytes: &bytes, offset: 4, context: ctx)
        XCTAssertEqual(bytes[4..<12].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }, 0x3000_0008)
        assertThrows(PatchError.relocationOverflow(section: ".rela.text", index: 0, symbol: "f", type: "R_PPC64_REL24",
                                                   value: 0x2000_0000)) {
            try b.relocate(type: 10, addend: 0, symbol: 0x3000_0000, place: 0x1000_0000, bytes: &bytes, offset: 0, context: ctx)
        }
        assertThrows(PatchError.unsupportedRelocation(section: ".rela.text", index: 0, type: 200)) {
            try b.relocate(type: 200, addend: 0, symbol: 0, place: 0, bytes: &bytes, offset: 0, context: ctx)
        }
    }
}
