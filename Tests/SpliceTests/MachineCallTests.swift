import Foundation
import Splice
import XCTest

/// Real compiled code called inside the emulated machine, checked against the oracle
/// programs (the same C run natively and under qemu-ppc64le).
final class MachineCallTests: XCTestCase {
    /// The oracle's output for an ISA: run live when possible, else the committed copy.
    func oracle(_ isa: String) throws -> [OracleCase] {
        try OracleCase.parse(file: samplePath("oracle-\(isa).txt"))
    }

    func checkAgainstOracle(image: String, isa: String) throws {
        let loaded = try loadImage(path: samplePath(image))
        let cases = try oracle(isa)
        XCTAssertGreaterThanOrEqual(Set(cases.map(\.function)).count, 8, "at least 8 distinct functions")
        for c in cases {
            let r = try loaded.call(c.function, c.arguments)
            XCTAssertEqual(r.signedValue, c.expected, "\(isa) \(c.function)(\(c.arguments))")
            XCTAssertGreaterThan(r.instructions ?? 0, 0)
        }
    }

    func testX86_64CallsMatchNativeOracle() throws { try checkAgainstOracle(image: Samples.x86_64, isa: "x86_64") }
    func testX86_64FentryImageCallsMatchOracle() throws { try checkAgainstOracle(image: Samples.x86_64Fentry, isa: "x86_64") }
    func testPPC64LECallsMatchQemuOracle() throws { try checkAgainstOracle(image: Samples.ppc64le, isa: "ppc64le") }

    /// The committed oracle outputs are what the oracle programs print today.
    func testOracleProgramsStillPrintTheCommittedOutput() throws {
        XCTAssertEqual(try runProgram(samplePath("oracle-x86_64"), []), try String(contentsOfFile: samplePath("oracle-x86_64.txt")))
        guard let qemu = which("qemu-ppc64le") else {
            throw XCTSkip("qemu-ppc64le is not installed (Debian package qemu-user); scripts/test.sh installs it")
        }
        XCTAssertEqual(try runProgram(qemu, [samplePath("oracle-ppc64le")]),
                       try String(contentsOfFile: samplePath("oracle-ppc64le.txt")))
    }

    func testPPC64LEGlobalAndLocalEntries() throws {
        let loaded = try loadImage(path: samplePath(Samples.ppc64le))
        let entries = try loaded.entries(of: "scaled")
        XCTAssertEqual(entries.map(\.kind), [.global, .local])
        XCTAssertEqual(entries[1].address - entries[0].address, 8)
        XCTAssertEqual(entries[1].tocPointer, loaded.elf.symbol(named: ".TOC.")?.value)
        // Global entry: r2 is poisoned, the function computes its own TOC from r12.
        let global = try loaded.call("scaled", [10], entry: .global)
        XCTAssertEqual(global.signedValue, 31)
        // Local entry: r2 must already be the TOC; two instructions fewer.
        let local = try loaded.call("scaled", [10], entry: .local)
        XCTAssertEqual(local.signedValue, 31)
        XCTAssertEqual(global.instructions! - local.instructions!, 2, "the addis/addi pair")
        // The local entry with a wrong r2 really depends on it: the TOC load faults.
        var wrong = entries[1]
        wrong.tocPointer = PPC64LEArchitecture.poisonedTOC
        XCTAssertThrowsError(try loaded.call(wrong, [10])) { error in
            guard let fault = error as? GuestFault, case .memory(let access, _, _) = fault.kind else {
                return XCTFail("expected a memory fault, got \(error)")
            }
            XCTAssertEqual(access, "read of unmapped memory")
            XCTAssertTrue((entries[0].address..<entries[0].address + 48).contains(fault.pc), "pc \(fault.pc) inside scaled")
        }
        // Leaf functions have only a global entry, and asking for a local one says so.
        XCTAssertEqual(try loaded.entries(of: "add").map(\.kind), [.global])
        assertThrows(MachineError.noSuchEntry(function: "add", kind: .local, available: [.global])) {
            _ = try loaded.call("add", [1, 2], entry: .local)
        }
    }

    func testLocalCallsInsideTOCFunctions() throws {
        // scaled_twice calls scaled through its local entry; apply_op(3) reaches op_scaled
        // and then scaled through a function pointer (global entry): both must agree.
        let loaded = try loadImage(path: samplePath(Samples.ppc64le))
        XCTAssertEqual(try loaded.call("scaled_twice", [10], entry: .local).signedValue, 94)
        XCTAssertEqual(try loaded.call("apply_op", [3, 4, 5], entry: .local).signedValue, 18)
    }

    func testGuestFaultsNameTheAddress() throws {
        for image in [Samples.x86_64, Samples.ppc64le] {
            let loaded = try loadImage(path: samplePath(image))
            let peek = try loaded.function(named: "peek")
            // A read of unmapped memory: the data address and the faulting load.
            do {
                _ = try loaded.call("peek", [0xdead_0000])
                XCTFail("\(image): peek of unmapped memory returned")
            } catch let fault as GuestFault {
                XCTAssertEqual(fault.kind, .memory(access: "read of unmapped memory", address: 0xdead_0000, size: 8), image)
                XCTAssertTrue((peek.value..<peek.value + peek.size).contains(fault.pc), "\(image): pc in peek")
                let insn = try XCTUnwrap(loaded.machine.disassemble(at: fault.pc, count: 1).first)
                XCTAssertTrue(insn.mnemonic == "mov" || insn.mnemonic == "ld", "\(image): faulting insn \(insn)")
                XCTAssertTrue(fault.description.contains("at 0xdead0000"), fault.description)
            }
            // A write to read-only text.
            let text = try XCTUnwrap(loaded.elf.section(named: ".text"))
            XCTAssertThrowsError(try loaded.call("poke", [Int64(text.address), 1])) { error in
                XCTAssertEqual((error as? GuestFault)?.kind,
                               .memory(access: "write to write-protected memory", address: text.address, size: 8), image)
            }
            // A fetch from unmapped memory.
            XCTAssertThrowsError(try loaded.call(CallEntry(kind: .global, address: 0xbad_000), [])) { error in
                let fault = error as? GuestFault
                XCTAssertEqual(fault?.kind, .memory(access: "fetch from unmapped memory", address: 0xbad_000,
                                                    size: fault.map { if case let .memory(_, _, s) = $0.kind { return s } else { return -1 } } ?? -1), image)
                XCTAssertEqual(fault?.pc, 0xbad_000, image)
            }
            // A trap: the sentinel page is full of them; enter one past the return address.
            let arch = loaded.machine.architecture
            let trapAddress = loaded.machine.vcpus[0].returnSentinel + UInt64(arch.trapInstruction.count)
            XCTAssertThrowsError(try loaded.call(CallEntry(kind: .global, address: trapAddress), [])) { error in
                guard let fault = error as? GuestFault, case let .interrupt(number, _) = fault.kind else {
                    return XCTFail("\(image): expected an interrupt, got \(error)")
                }
                XCTAssertEqual(number, arch.name == "x86_64" ? 3 : 6, image)
                XCTAssertEqual(fault.pc, trapAddress, "\(image): the trap's own address")
            }
            // The machine is still usable after faults.
            XCTAssertEqual(try loaded.call("add", [2, 3]).signedValue, 5)
        }
    }

    func testLimitsStopRunawayCalls() throws {
        for image in [Samples.x86_64, Samples.ppc64le] {
            let loaded = try loadImage(path: samplePath(image))
            XCTAssertThrowsError(try loaded.call("fib", [40], limits: .init(timeoutMicroseconds: 0, instructions: 5000))) { error in
                XCTAssertEqual((error as? GuestFault)?.kind, .limitReached("instruction limit of 5000 reached"), image)
            }
            XCTAssertThrowsError(try loaded.call("mix_loop", [1 << 40], countInstructions: false,
                                                 limits: .init(timeoutMicroseconds: 20_000))) { error in
                XCTAssertEqual((error as? GuestFault)?.kind, .limitReached("time limit of 20000 µs reached"), image)
            }
        }
    }

    func testVCPUsShareOneMemory() throws {
        for image in [Samples.x86_64, Samples.ppc64le] {
            let elf = try ELFFile(contentsOf: samplePath(image))
            let machine = try Machine(architecture: try Architectures.forELF(elf), vcpuCount: 3)
            let loaded = try machine.load(elf)
            XCTAssertEqual(try loaded.call("counter_add", [5], vcpu: 0).signedValue, 5)
            XCTAssertEqual(try loaded.call("counter_add", [7], vcpu: 1).signedValue, 12)
            XCTAssertEqual(try loaded.call("counter_get", [0], vcpu: 2).signedValue, 12)
            // And the host sees the same bytes.
            let tick = try XCTUnwrap(elf.symbol(named: "tick_count"))
            XCTAssertEqual(try machine.memory.readUInt64(tick.value), 12)
            assertThrows(MachineError.noSuchVCPU(index: 3, count: 3)) { _ = try loaded.call("add", [1, 1], vcpu: 3) }
        }
    }

    func testBadRegionsAreRefused() throws {
        let machine = try Machine(architecture: X86_64Architecture())
        let page = machine.memory.pageSize
        assertThrows(GuestMemoryError.outOfAddressSpace(name: "top", address: UInt64.max - page + 1, size: 2 * page)) {
            try machine.map(name: "top", at: UInt64.max - page + 1, size: 2 * page, permissions: .read)
        }
        assertThrows(GuestMemoryError.unaligned(name: "odd", address: 0x1001, size: page, pageSize: page)) {
            try machine.map(name: "odd", at: 0x1001, size: page, permissions: .read)
        }
        let a = try machine.map(name: "a", at: 0x10_0000, size: page, permissions: .read)
        XCTAssertThrowsError(try machine.map(name: "b", at: 0x10_0000, size: page, permissions: .read)) { error in
            XCTAssertEqual(error as? GuestMemoryError, .overlaps(name: "b", address: 0x10_0000, size: page, existing: a.description))
        }
        assertThrows(GuestMemoryError.unmapped(address: 0x10_0000 + page - 4, length: 8)) {
            _ = try machine.memory.read(0x10_0000 + page - 4, count: 8)
        }
    }

    func testStackArgumentsFollowTheABI() throws {
        // gcd(a, b) with extra arguments the callee ignores: register and stack slots are
        // written without disturbing the two that matter.
        for image in [Samples.x86_64, Samples.ppc64le] {
            let loaded = try loadImage(path: samplePath(image))
            XCTAssertEqual(try loaded.call("gcd", [1071, 462] + Array(repeating: 99, count: 10)).signedValue, 21, image)
        }
    }
}

func which(_ program: String) -> String? {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") {
        let path = "\(dir)/\(program)"
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return nil
}

func runProgram(_ path: String, _ arguments: [String]) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = arguments
    let pipe = Pipe()
    p.standardOutput = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}
