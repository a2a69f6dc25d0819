import Splice
import XCTest

/// Malformed or mismatched payloads: each is refused with its own error, and the
/// machine's memory (every mapped byte, and the region list) is exactly as before.
final class MalformedPayloadTests: XCTestCase {
    typealias Mutation = (inout [UInt8], ELFFile) throws -> Void

    /// A valid payload (02: scaled + 2) for `isa`, changed by `mutate`.
    func mutated(_ isa: String = "x86_64", _ mutate: Mutation) throws -> [UInt8] {
        var (_, bytes, _) = try PayloadTests.build("02-scaled-plus-two", isa)
        let elf = try ELFFile(bytes: bytes)
        try mutate(&bytes, elf)
        return bytes
    }

    static func sectionHeader(_ elf: ELFFile, _ bytes: [UInt8], _ name: String) throws -> Int {
        let s = try XCTUnwrap(elf.section(named: name), name)
        return Int(bytes.get64(40)) + 64 * s.index
    }

    /// Replaces a NUL-delimited name (first occurrence inside `section`).
    static func rename(_ bytes: inout [UInt8], _ elf: ELFFile, in section: String, _ old: String, _ new: String) throws {
        precondition(new.utf8.count <= old.utf8.count)
        let s = try XCTUnwrap(elf.section(named: section), section)
        let needle = Array(old.utf8) + [0]
        let range = Int(s.offset)..<Int(s.offset + s.size)
        // A whole name: at the start of the section or right after a NUL.
        guard let start = (range.lowerBound..<(range.upperBound - needle.count + 1)).first(where: {
            Array(bytes[$0..<$0 + needle.count]) == needle && ($0 == range.lowerBound || bytes[$0 - 1] == 0)
        }) else {
            struct NotFound: Error, CustomStringConvertible { let description: String }
            throw NotFound(description: "test setup: \(old) not found in \(section)")
        }
        let replacement = Array(new.utf8) + [UInt8](repeating: 0, count: old.utf8.count - new.utf8.count)
        bytes.replaceSubrange(start..<(start + old.utf8.count), with: replacement)
    }

    /// File offset of relocation `i` of the RELA section named `name`.
    static func relocation(_ elf: ELFFile, _ name: String, where match: (ELFRelocation) -> Bool) throws -> Int {
        let rs = try XCTUnwrap(elf.relocationSections.first { $0.name == name }, name)
        let i = try XCTUnwrap(rs.entries.firstIndex(where: match), "no matching relocation in \(name)")
        return Int(elf.sections[rs.sectionIndex].offset) + 24 * i
    }

    enum Expect {
        case reason(PayloadError.Reason)
        case contains(String)
    }

    /// Loads `bytes` into a fresh machine of `isa` and checks the refusal. The bytes are
    /// sealed first (their build id computed again, when they parse) unless `seal` is
    /// false: a hostile author can do that, so each malformation must be refused for what
    /// it is, not for its stale build id.
    func refuse(_ label: String, _ bytes: [UInt8], isa: String = "x86_64", seal: Bool = true, expect: Expect,
                setup: (PayloadLoader) throws -> Void = { _ in }, file: StaticString = #filePath, line: UInt = #line) throws {
        let bytes = seal ? (try? PayloadFormat.sealed(bytes)) ?? bytes : bytes
        let (image, loader) = try PayloadTests.machine(isa)
        try setup(loader)
        let before = try PayloadTests.memory(image)
        do {
            let payload = try Payload(bytes: bytes, name: label)
            _ = try loader.load(payload)
            XCTFail("\(label): loaded", file: file, line: line)
        } catch let error as PayloadError {
            switch expect {
            case let .reason(r): XCTAssertEqual(error.reason, r, label, file: file, line: line)
            case let .contains(text): XCTAssertTrue("\(error)".contains(text), "\(label): \(error)", file: file, line: line)
            }
            XCTAssertTrue("\(error)".hasPrefix("payload \(label) "), "\(label): names the payload: \(error)", file: file, line: line)
        }
        XCTAssertEqual(try PayloadTests.memory(image), before, "\(label): guest memory unchanged", file: file, line: line)
    }

    func testTheTable() throws {
        var cases = 0
        func run(_ label: String, _ bytes: [UInt8], isa: String = "x86_64", seal: Bool = true, _ expect: Expect,
                 setup: (PayloadLoader) throws -> Void = { _ in }) throws {
            try refuse(label, bytes, isa: isa, seal: seal, expect: expect, setup: setup)
            cases += 1
        }
        let valid = try mutated { _, _ in }

        // The file itself.
        try run("truncated", Array(valid.prefix(40)), .contains("truncated ELF header"))
        try run("not-elf", Array("#!/bin/sh\n".utf8) + [UInt8](repeating: 0, count: 80), .contains("not an ELF file"))
        try run("executable", try sampleBytes(Samples.x86_64), .reason(.notRelocatable("ET_EXEC (executable)")))
        try run("wrong-machine", valid, isa: "ppc64le", .reason(.wrongMachine(payload: ELFMachine.x86_64, target: ELFMachine.ppc64)))
        try run("section-beyond-file", try mutated { b, e in
            b.put64(try Self.sectionHeader(e, b, PayloadFormat.funcsSection) + 24, UInt64(b.count))
        }, .contains("run past the end of the file"))
        try run("symbol-index", try mutated { b, e in
            let r = try Self.relocation(e, ".rela.text.scaled") { _ in true }
            b.put64(r + 8, 9999 << 32 | UInt64(b.get64(r + 8) & 0xffff_ffff))
        }, .contains("symbol index 9999 beyond"))

        // The records.
        try run("no-funcs", try mutated { b, e in try Self.rename(&b, e, in: ".shstrtab", ".livepatch.funcs", ".livepatch.funcz") },
                .reason(.missingSection(PayloadFormat.funcsSection)))
        try run("record-size", try mutated { b, e in
            b.put64(try Self.sectionHeader(e, b, PayloadFormat.funcsSection) + 32, 95)
        }, .reason(.badRecordSize(size: 95, recordSize: PayloadFormat.recordSize)))
        try run("record-version", try mutated { b, e in
            b[Int(e.section(named: PayloadFormat.funcsSection)!.offset) + 32] = 7
        }, .reason(.badRecordVersion(record: 0, version: 7)))
        try run("expect-len", try mutated { b, e in
            b[Int(e.section(named: PayloadFormat.funcsSection)!.offset) + 33] = 200
        }, .reason(.badRecord(record: 0, reason: "expect_len 200 exceeds 24")))
        try run("name-not-relocated", try mutated { b, e in
            b.put64(try Self.relocation(e, ".rela.livepatch.funcs") { $0.offset == 0 }, 16)
        }, .reason(.badRecord(record: 0, reason: "the name field has no relocation")))
        try run("new-addr-not-function", try mutated { b, e in
            let r = try Self.relocation(e, ".rela.livepatch.funcs") { $0.offset == 8 }
            let strings = try XCTUnwrap(e.symbols.firstIndex { $0.kind == .section
                && e.sections[Int($0.sectionIndex)].name == PayloadFormat.stringsSection })
            b.put64(r + 8, UInt64(strings) << 32 | (b.get64(r + 8) & 0xffff_ffff))
        }, .contains("new_addr must point at a function the payload defines"))
        try run("unknown-function", try mutated { b, e in try Self.rename(&b, e, in: PayloadFormat.stringsSection, "scaled", "scalez") },
                .reason(.unknownFunction(record: 0, name: "scalez")))
        let oldSize = try ELFFile(contentsOf: PayloadTests.targetPath("x86_64")).symbol(named: "scaled")!.size
        try run("old-size", try mutated { b, e in
            b.put32(Int(e.section(named: PayloadFormat.funcsSection)!.offset) + 28, 1)
        }, .reason(.oldSizeMismatch(function: "scaled", expected: 1, actual: oldSize)))
        let oldBytes = Array(try ELFFile(contentsOf: PayloadTests.targetPath("x86_64")).bytes(of:
            try ELFFile(contentsOf: PayloadTests.targetPath("x86_64")).symbol(named: "scaled")!).prefix(4))
        try run("expected-bytes", try mutated { b, e in
            let o = Int(e.section(named: PayloadFormat.funcsSection)!.offset)
            b[o + 33] = 4
            b.replaceSubrange((o + 40)..<(o + 44), with: [0xff, 0xff, 0xff, 0xff])
        }, .reason(.expectedBytesMismatch(function: "scaled", expected: [0xff, 0xff, 0xff, 0xff], found: oldBytes)))
        try run("duplicate", try rawBuild("02-scaled-plus-two") { $0.nopFunctions = ["scaled"] },
                .reason(.duplicateFunction(name: "scaled", records: [0, 1])))

        // Build ids and dependencies.
        let targetID = try XCTUnwrap(try ELFFile(contentsOf: PayloadTests.targetPath("x86_64")).buildIDHex)
        var wrongID = ""
        try run("build-id", try mutated { b, e in
            let s = e.section(named: PayloadFormat.dependsSection)!
            let at = Int(s.offset) + 16 // after the note header and "GNU\0"
            b[at] ^= 0xff
            wrongID = (b[at..<at + 20]).hexDigits
        }, .reason(.buildIDMismatch(expected: wrongID, target: targetID)))
        try run("no-target-build-id", try mutated { b, e in
            try Self.rename(&b, e, in: ".shstrtab", PayloadFormat.dependsSection, ".livepatch.dependz")
        }, .reason(.noTargetBuildID))
        try run("no-own-build-id", try mutated { b, e in
            try Self.rename(&b, e, in: ".shstrtab", PayloadFormat.buildIDSection, ".note.gnu.build-iX")
        }, .reason(.missingSection(PayloadFormat.buildIDSection + " with a 20-byte GNU build-id note")))
        // Edited after it was built: the note is no longer the hash of the contents.
        var editedID = ""
        try run("edited-keeps-its-id", try mutated { b, e in
            editedID = (try XCTUnwrap(e.notes.first { $0.sectionName == PayloadFormat.buildIDSection }).descriptor).hexDigits
            b[Int(try XCTUnwrap(e.section(named: ".text.scaled")).offset)] ^= 0x01
        }, seal: false, .contains("has build id \(editedID) in .note.gnu.build-id, but its contents hash to "))
        // Another payload's id copied into this one's note.
        let (p01, b01, _) = try PayloadTests.build("01-greeting-len-fix", "x86_64")
        try run("copied-build-id", try mutated { b, e in
            let note = try XCTUnwrap(PayloadFormat.buildIDRange(in: e))
            b.replaceSubrange(note, with: p01.buildID)
        }, seal: false, .contains("has build id \(p01.buildIDHex) in .note.gnu.build-id, but its contents hash to "))
        XCTAssertEqual(PayloadFormat.buildID(of: b01, range: try XCTUnwrap(PayloadFormat.buildIDRange(in: p01.elf))), p01.buildID)
        let (p02, _, _) = try PayloadTests.build("02-scaled-plus-two", "x86_64")
        let (_, b04, _) = try PayloadTests.build("04-scaled-twice-stacked", "x86_64", dependencies: [p02])
        try run("missing-dependency", b04, .reason(.missingDependency(buildID: p02.buildIDHex)))
        try run("already-loaded", valid, .reason(.alreadyLoaded(buildID: p02.buildIDHex))) { loader in
            _ = try loader.load(try Payload(bytes: valid, name: "first"))
        }

        // Functions that may not or cannot be patched.
        try run("denied-runtime", try rawBuild("01-greeting-len-fix") { $0.nopFunctions = ["_start"] },
                .reason(.deniedFunction(name: "_start", why: "it is part of the patching runtime")))
        // The functions each ISA's tracing calls, named by its backend.
        try run("denied-fentry", try rawBuild("01-greeting-len-fix") { $0.nopFunctions = ["__fentry__"] },
                .reason(.deniedFunction(name: "__fentry__", why: "it is part of the patching runtime")))
        try run("denied-mcount", try rawBuild("01-greeting-len-fix", "ppc64le") { $0.nopFunctions = ["_mcount"] }, isa: "ppc64le",
                .reason(.deniedFunction(name: "_mcount", why: "it is part of the patching runtime")))
        try run("denied-list", valid, .reason(.deniedFunction(name: "scaled", why: "it is on the deny-list"))) { loader in
            loader.denyList = ["scaled"]
        }
        try run("too-short", try mutated { b, e in
            try Self.rename(&b, e, in: PayloadFormat.stringsSection, "scaled", "peek")
            b.put32(Int(e.section(named: PayloadFormat.funcsSection)!.offset) + 28, 0) // old size: unchecked
        },
                .contains("cannot patch peek: peek is too short to patch: 4 bytes at its patch site, jmp rel32 needs 5"))

        // Relocations.
        try run("unknown-relocation", try mutated { b, e in
            let r = try Self.relocation(e, ".rela.text.scaled") { _ in true }
            b.put64(r + 8, b.get64(r + 8) & ~0xffff_ffff | 200)
        }, .reason(.relocation(section: ".rela.text.scaled", index: 0, reason: "type 200 is not supported")))
        try run("relocation-offset", try mutated { b, e in
            b.put64(try Self.relocation(e, ".rela.text.scaled") { _ in true }, 0xfff0)
        }, .reason(.relocation(section: ".rela.text.scaled", index: 0,
                               reason: "offset 0xfff0 is outside the section it applies to (0xd bytes)")))
        try run("undefined-symbol", try mutated { b, e in try Self.rename(&b, e, in: ".strtab", "scale_factor", "scale_factoX") },
                .contains("undefined symbol scale_factoX"))
        try run("ppc-undefined-symbol", try mutated("ppc64le") { b, e in try Self.rename(&b, e, in: ".strtab", "scale_factor", "nowhere") },
                isa: "ppc64le", .contains("undefined symbol nowhere"))
        try run("ppc-unknown-function", try mutated("ppc64le") { b, e in
            try Self.rename(&b, e, in: PayloadFormat.stringsSection, "scaled", "scaley")
        }, isa: "ppc64le", .reason(.unknownFunction(record: 0, name: "scaley")))

        // Hooks.
        let (_, hooks, _) = try PayloadTests.build("05-hooks", "x86_64")
        var badHook = hooks
        let hookELF = try ELFFile(bytes: hooks)
        let hr = try Self.relocation(hookELF, ".rela.livepatch.hooks.load") { _ in true }
        let stringsSymbol = try XCTUnwrap(hookELF.symbols.firstIndex { $0.kind == .section
            && hookELF.sections[Int($0.sectionIndex)].name == PayloadFormat.stringsSection })
        badHook.put64(hr + 8, UInt64(stringsSymbol) << 32 | (badHook.get64(hr + 8) & 0xffff_ffff))
        try run("hook-not-function", badHook, .contains(".livepatch.hooks.load[0] does not point at a payload function"))

        // What the conformance suite added to the format: NOP records with an offset, states.
        try run("nop-offset-with-new-addr", try mutated { b, e in
            b.put32(Int(e.section(named: PayloadFormat.funcsSection)!.offset) + 36, 4)
        }, .reason(.badRecord(record: 0, reason: "nop_offset is set but new_addr is not 0")))
        let identitySize = try ELFFile(contentsOf: PayloadTests.targetPath("x86_64")).symbol(named: "identity")!.size
        try run("nop-range-outside", try rawBuild("02-scaled-plus-two") {
            $0.nopRanges = [.init(function: "identity", offset: UInt32(identitySize), length: 4)]
        }, .contains("cannot patch identity: identity+\(identitySize) length 4: outside the function"))
        try run("nop-range-mid-instruction", try rawBuild("02-scaled-plus-two") {
            $0.nopRanges = [.init(function: "add", offset: 1, length: 1)]
        }, .contains("does not start on an instruction boundary"))
        let (_, stateful, _) = try PayloadTests.build("conformance/linux-state", "x86_64", target: "conformance")
        let stateELF = try ELFFile(bytes: stateful)
        var readOnlyState = stateful
        readOnlyState.put64(try Self.sectionHeader(stateELF, stateful, PayloadFormat.statesSection) + 8, 0x2) // SHF_ALLOC only
        try run("state-not-writable", readOnlyState, .contains(".livepatch.states must be writable, loaded and a multiple of 24 bytes"))
        var shortState = stateful
        shortState.put64(try Self.sectionHeader(stateELF, stateful, PayloadFormat.statesSection) + 32, 23)
        try run("state-size", shortState, .contains(".livepatch.states must be writable, loaded and a multiple of 24 bytes"))

        let (_, actions, _) = try PayloadTests.build("conformance/xen-action-hooks", "x86_64", target: "conformance")
        var applyHookOnly = actions
        try Self.rename(&applyHookOnly, try ELFFile(bytes: actions), in: ".shstrtab", ".livepatch.hooks.revert", ".livepatch.hooks.rever_")
        try run("apply-hook-alone", applyHookOnly,
                .contains("has an apply action hook but no revert action hook: they come in pairs, each undoing the other"))

        XCTAssertGreaterThanOrEqual(cases, 31)
    }

    /// A payload's bytes straight from the builder (not parsed: it may be refused).
    func rawBuild(_ name: String, _ isa: String = "x86_64", configure: (inout PayloadBuilder) -> Void) throws -> [UInt8] {
        let dir = samplePath("patches/\(name)")
        let target = try ELFFile(contentsOf: PayloadTests.targetPath(isa))
        var b = PayloadBuilder(original: try ELFFile(contentsOf: "\(dir)/orig-\(isa).o"),
                               patched: try ELFFile(contentsOf: "\(dir)/patched-\(isa).o"),
                               target: target, backend: try Architectures.backend(for: target))
        configure(&b)
        return try b.build().bytes
    }
}
