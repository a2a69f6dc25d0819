import Foundation
import Splice
import XCTest

/// What the fuzzers found, kept as inputs (fuzz/regressions/TARGET/NAME), and the corpus
/// they grew from (fuzz/corpus/TARGET), replayed through the same fuzz targets: each must
/// come back as an error or a success, never a crash.
final class FuzzRegressionTests: XCTestCase {
    let fuzzDirectory = samplesDirectory + "/../../fuzz"

    func files(_ folder: String) throws -> [String] {
        let dir = fuzzDirectory + "/" + folder
        return try FileManager.default.contentsOfDirectory(atPath: dir).sorted().map { dir + "/" + $0 }
    }

    func bytes(_ path: String) throws -> [UInt8] { [UInt8](try XCTUnwrap(FileManager.default.contents(atPath: path))) }

    /// A found or edited payload as the payload fuzz target feeds it to the loader: with its
    /// build id computed again, as a hostile author would, so that it reaches the check it
    /// was found for instead of the build-id check.
    func sealed(_ bytes: [UInt8], name: String) throws -> Payload {
        try Payload(bytes: try PayloadFormat.sealed(bytes), name: name)
    }

    func testTheCommittedCorpusAndFindingsReplayWithoutACrash() throws {
        var replayed = 0
        for (folder, target) in [("corpus/elf", FuzzTargets.elf), ("regressions/elf", FuzzTargets.elf),
                                 ("corpus/payload", FuzzTargets.payload), ("regressions/payload", FuzzTargets.payload),
                                 ("corpus/control", FuzzTargets.control), ("regressions/control", FuzzTargets.control)] {
            for path in (try? files(folder)) ?? [] {
                target(try bytes(path))
                replayed += 1
            }
        }
        XCTAssertGreaterThan(replayed, 20, "the corpus is missing")
    }

    /// Found by the ELF fuzzer after 536,182 inputs: a section at 0xfffffffffffffffa of
    /// size 0x24 overflowed `address + size` (a trap). Now refused, naming the section.
    func testASectionWhoseAddressRangeWrapsIsRefused() throws {
        let input = try bytes(fuzzDirectory + "/regressions/elf/section-address-wraps")
        assertThrows(ELFError.addressRangeWraps(what: "section [9] ", address: 0xffff_ffff_ffff_fffa, size: 0x24)) {
            _ = try ELFFile(bytes: input)
        }
        // The same built from a real payload: any section's sh_addr pushed to the top.
        var payload = try bytes(fuzzDirectory + "/corpus/payload/seed-02-scaled-plus-two-x86_64.lp")
        let shoff = Int(payload.get64(0x28)), shentsize = Int(payload.get16(0x3a))
        payload.put64(shoff + 1 * shentsize + 0x10, .max) // section [1]'s sh_addr (its size is not 0)
        XCTAssertThrowsError(try ELFFile(bytes: payload)) { error in
            XCTAssertTrue("\(error)".contains("runs past the top of the 64-bit address space"), "\(error)")
        }
    }

    /// Found by the payload fuzzer after 361 inputs: a payload whose unload hook is not
    /// code (it faults). The documented outcome: unload fails with the hook's fault and
    /// changes nothing (the payload stays loaded, its memory mapped), like any failed
    /// action; the machine goes on working. (The harness asserted every loaded payload
    /// unloads; it now starts from fresh machines after such an input.)
    func testAPayloadWhoseUnloadHookFaultsStaysLoaded() throws {
        let input = try bytes(fuzzDirectory + "/regressions/payload/unload-hook-faults")
        let payload = try sealed(input, name: "found")
        let elf = try ELFFile(contentsOf: samplePath(Samples.ppc64le))
        XCTAssertEqual(payload.elf.header.machine, elf.header.machine)
        let machine = try Machine(architecture: try Architectures.forELF(elf))
        let image = try machine.load(elf)
        let loader = try PayloadLoader(patcher: try LivePatcher(image: image, backend: try Architectures.backend(for: elf)))
        let loaded = try loader.load(payload)
        let regions = machine.memory.regions.map(\.name)
        XCTAssertThrowsError(try loader.unload(loaded)) { error in
            XCTAssertTrue("\(error)".contains("unload hook at 0x"), "\(error)")
            XCTAssertTrue("\(error)".contains("illegal instruction"), "\(error)")
        }
        XCTAssertEqual(loader.payloads.count, 1)
        XCTAssertEqual(machine.memory.regions.map(\.name), regions, "a failed unload unmapped something")
        XCTAssertEqual(try image.call("scaled", [10]).signedValue, 31)
    }

    /// Found by the payload fuzzer after 1,441 inputs: a section whose size is near 2^64
    /// overflowed the placement arithmetic (a trap). Sizes and alignments are now bounded
    /// first, and such a payload is refused naming the section; nothing is mapped.
    func testAPayloadSectionTooLargeToPlaceIsRefused() throws {
        let payload = try sealed(try bytes(fuzzDirectory + "/regressions/payload/section-size-overflows"), name: "found")
        let elf = try ELFFile(contentsOf: samplePath(payload.elf.header.machine == 62 ? Samples.x86_64 : Samples.ppc64le))
        let machine = try Machine(architecture: try Architectures.forELF(elf))
        let image = try machine.load(elf)
        let loader = try PayloadLoader(patcher: try LivePatcher(image: image, backend: try Architectures.backend(for: elf)))
        let regions = machine.memory.regions.map(\.name)
        XCTAssertThrowsError(try loader.load(payload)) { error in
            XCTAssertTrue("\(error)".contains("a payload may place at most 0x4000000 bytes"), "\(error)")
        }
        XCTAssertEqual(machine.memory.regions.map(\.name), regions)
    }

    /// Loads `payload` into a fresh machine of its ISA; returns the refusal (nothing mapped).
    func refusal(_ payload: Payload, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let elf = try ELFFile(contentsOf: samplePath(payload.elf.header.machine == 62 ? Samples.x86_64 : Samples.ppc64le))
        let machine = try Machine(architecture: try Architectures.forELF(elf))
        let loader = try PayloadLoader(patcher: try LivePatcher(image: try machine.load(elf), backend: try Architectures.backend(for: elf)))
        let regions = machine.memory.regions.map(\.name)
        var text = ""
        XCTAssertThrowsError(try loader.load(payload), file: file, line: line) { text = "\($0)" }
        XCTAssertEqual(machine.memory.regions.map(\.name), regions, "a refused payload left memory mapped", file: file, line: line)
        return text
    }

    /// Found by the payload fuzzer after 5,389 inputs: a relocation offset near 2^64 did
    /// not fit an Int (a trap). Refused now, naming the relocation and the section size.
    /// (The found file also has a symbol outside its section, now refused first; this is
    /// the same relocation fault made on a sample payload.)
    func testARelocationOutsideItsSectionIsRefused() throws {
        var bytes = try bytes(fuzzDirectory + "/corpus/payload/seed-02-scaled-plus-two-ppc64le.lp")
        let elf = try ELFFile(bytes: bytes)
        let rela = try XCTUnwrap(elf.relocationSections.first { !$0.entries.isEmpty })
        let section = elf.sections[rela.sectionIndex]
        bytes.put64(Int(section.offset), 0xfc00_0000_0000_0018) // entry 0's r_offset
        let text = try refusal(try sealed(bytes, name: "found"))
        XCTAssertTrue(text.contains("relocation 0 of \(rela.name): offset 0xfc00000000000018 is outside the section it applies to"), text)
    }

    /// Found by the payload fuzzer after 183,233 inputs: a function symbol at an offset
    /// near 2^64 of its section overflowed "placed address + offset" (a trap).
    func testASymbolOutsideItsSectionIsRefused() throws {
        let text = try refusal(try sealed(try bytes(fuzzDirectory + "/regressions/payload/symbol-outside-section"), name: "found"))
        XCTAssertTrue(text.contains("which has 0x") && text.contains("symbol "), text)
        XCTAssertTrue(try refusal(try sealed(try bytes(fuzzDirectory + "/regressions/payload/relocation-offset-outside"), name: "r"))
            .contains("symbol patch_on_unload is at offset 0x100001f700 of .text.patch_on_unload, which has 0x30 bytes"))
    }

    /// The control fuzzer's life-cycle seed really drives a machine through upload, check,
    /// apply, a call of the patched function, revert and unload (so mutations of it start
    /// from requests that reach every handler), and the log gets one line per change.
    func testTheControlSeedDrivesTheLifeCycle() throws {
        let machine = try LiveMachine(configuration: .init(image: samplePath(Samples.x86_64), cpus: 1))
        defer { machine.shutdown() }
        var log: [String] = []
        let dispatcher = ControlDispatcher(machine: machine) { log.append($0) }
        let lines = try bytes(fuzzDirectory + "/corpus/control/seed-lifecycle").split(separator: 10)
        var replies: [ControlReply] = []
        for line in lines {
            replies.append(dispatcher.respond(to: Array(line), from: "test").reply)
            machine.waitUntilIdle()
        }
        XCTAssertEqual(replies.count, 8)
        XCTAssertTrue(replies.allSatisfy(\.ok), "\(replies.map { $0.error ?? "ok" })")
        XCTAssertEqual(replies[3].value, 32, "scaled(10) with the payload applied")
        XCTAssertEqual(log, ["test: upload p02 (1344 bytes)", "test: check p02", "test: apply p02", "test: call scaled",
                             "test: revert p02", "test: unload p02"])
        XCTAssertEqual(machine.list().total, 0)
    }
}
