import Splice
import XCTest

/// Payloads built by `splice build` from the sample patches, loaded and applied in the
/// machine; the patched program's oracle output is the reference.
final class PayloadTests: XCTestCase {
    static let isas = ["x86_64", "ppc64le"]

    static func targetPath(_ isa: String) -> String { samplePath(isa == "x86_64" ? Samples.x86_64 : Samples.ppc64le) }

    static func build(_ name: String, _ isa: String, dependencies: [Payload] = [], target image: String = "kernel",
                      configure: (inout PayloadBuilder) -> Void = { _ in }) throws -> (Payload, [UInt8], PayloadBuilder.Report) {
        let dir = samplePath("patches/\(name)")
        let target = try ELFFile(contentsOf: samplePath("\(image)-\(isa).elf"))
        var b = PayloadBuilder(original: try ELFFile(contentsOf: "\(dir)/orig-\(isa).o"),
                               patched: try ELFFile(contentsOf: "\(dir)/patched-\(isa).o"),
                               target: target, backend: try Architectures.backend(for: target))
        b.dependencies = dependencies
        configure(&b)
        let (bytes, report) = try b.build()
        return (try Payload(bytes: bytes, name: "\(name)-\(isa).lp"), bytes, report)
    }

    static func machine(_ isa: String) throws -> (LoadedImage, PayloadLoader) {
        let image = try loadImage(path: targetPath(isa))
        return (image, try PayloadLoader(patcher: try LivePatcher(image: image, backend: try Architectures.backend(for: image.elf))))
    }

    /// Every mapped byte of the machine, as an FNV-1a hash per region (a failure message
    /// stays readable).
    static func memory(_ image: LoadedImage) throws -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        for r in image.machine.memory.regions {
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for b in try image.machine.memory.read(r.base, count: Int(r.size)) { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            out[r.name] = h
        }
        return out
    }

    /// The target image's own executable regions.
    static func imageCode(_ image: LoadedImage) throws -> [String: UInt64] {
        let text = Set(image.regions.filter { $0.permissions.contains(.execute) }.map(\.name))
        return try memory(image).filter { text.contains($0.key) }
    }

    func assertOracle(_ image: LoadedImage, _ file: String, _ label: String) throws {
        for c in try OracleCase.parse(file: file) {
            let r = try image.call(c.function, c.arguments, limits: .init(instructions: 1_000_000))
            XCTAssertEqual(r.signedValue, c.expected, "\(label): \(c.function)(\(c.arguments))")
        }
    }

    func testEverySamplePatchMatchesThePatchedOracleAndRevertsExactly() throws {
        for isa in Self.isas {
            for name in ["01-greeting-len-fix", "02-scaled-plus-two", "03-greeting-sum-helper", "05-hooks", "06-shadow-write-count"] {
                let (payload, _, report) = try Self.build(name, isa)
                XCTAssertFalse(report.changed.isEmpty, "\(name) \(isa)")
                let (image, loader) = try Self.machine(isa)
                let code = try Self.imageCode(image)
                let lp = try loader.load(payload)
                try loader.apply(lp)
                try assertOracle(image, samplePath("patches/\(name)/oracle-\(isa).txt"), "\(name) \(isa) applied")
                try loader.revert(lp)
                try loader.unload(lp)
                XCTAssertEqual(try Self.imageCode(image), code, "\(name) \(isa): text bytes back")
                // The original output again (tick_count reset: the oracle starts from 0).
                try image.machine.memory.writeUInt64(try XCTUnwrap(image.elf.symbol(named: "tick_count")).value, 0)
                try assertOracle(image, samplePath("oracle-\(isa).txt"), "\(name) \(isa) reverted")
                XCTAssertFalse(image.machine.memory.regions.contains { $0.name.hasPrefix("payload:") }, "unloaded")
            }
        }
    }

    func testRevertBringsBackTheOriginalOutput() throws {
        for isa in Self.isas {
            let (payload, _, _) = try Self.build("03-greeting-sum-helper", isa)
            let (image, loader) = try Self.machine(isa)
            let lp = try loader.load(payload)
            try loader.apply(lp)
            XCTAssertEqual(try image.call("greeting_sum", [1]).signedValue, 40108)
            try loader.revert(lp)
            try assertOracle(image, samplePath("oracle-\(isa).txt"), "\(isa) reverted")
        }
    }

    func testReportSaysWhatWasCarried() throws {
        let (_, _, report) = try Self.build("03-greeting-sum-helper", "ppc64le")
        XCTAssertEqual(report.changed, ["greeting_sum"])
        XCTAssertEqual(report.newFunctions, ["weighted_sum"])
        XCTAssertTrue(report.carriedData.contains { $0.hasPrefix(".rodata") }, "the new string: \(report.carriedData)")
        XCTAssertTrue(report.external.contains("greetings"), "the kernel's table stays the kernel's")
        // ppc64le: scaled_twice calls scaled with no TOC-restore slot: scaled comes along.
        let (p02, _, _) = try Self.build("02-scaled-plus-two", "ppc64le")
        let (_, _, r04) = try Self.build("04-scaled-twice-stacked", "ppc64le", dependencies: [p02])
        XCTAssertEqual(r04.changed, ["scaled_twice"])
        XCTAssertEqual(r04.carriedCallees, ["scaled"])
        let (_, _, x04) = try Self.build("04-scaled-twice-stacked", "x86_64", dependencies: [p02])
        XCTAssertEqual(x04.carriedCallees, [], "x86-64 calls the kernel's scaled directly")
    }

    func testStackedPayloadNeedsItsDependency() throws {
        for isa in Self.isas {
            let (p02, _, _) = try Self.build("02-scaled-plus-two", isa)
            let (p04, _, _) = try Self.build("04-scaled-twice-stacked", isa, dependencies: [p02])
            XCTAssertEqual(p04.dependencies, [p02.buildID])
            let (image, loader) = try Self.machine(isa)
            let before = try Self.memory(image)
            XCTAssertThrowsError(try loader.load(p04)) { error in
                XCTAssertEqual((error as? PayloadError)?.reason, .missingDependency(buildID: p02.buildIDHex))
            }
            XCTAssertEqual(try Self.memory(image), before, "refused: memory unchanged")
            let l02 = try loader.load(p02)
            try loader.apply(l02)
            let l04 = try loader.load(p04)
            try loader.apply(l04)
            try assertOracle(image, samplePath("patches/04-scaled-twice-stacked/oracle-\(isa).txt"), "\(isa) 02+04")
            XCTAssertThrowsError(try loader.unload(l02), "04 depends on 02")
            try loader.revert(l04)
            try loader.unload(l04)
            try loader.revert(l02)
            try loader.unload(l02)
        }
    }

    /// ppc64le: a call from payload code into another module's function (another TOC)
    /// goes through a stub, and the nop after it becomes ld r2,24(r1).
    func testCrossTOCCallGoesThroughAStubAndRestoresR2() throws {
        let (payload, _, _) = try Self.build("03-greeting-sum-helper", "ppc64le")
        let (image, loader) = try Self.machine("ppc64le")
        let lp = try loader.load(payload)
        let f = try XCTUnwrap(payload.elf.symbol(named: "greeting_sum"))
        let address = try XCTUnwrap(lp.sectionAddresses[Int(f.sectionIndex)]) + f.value
        let listing = try image.machine.disassemble(at: address, count: Int(f.size / 4)).map(\.text)
        let call = try XCTUnwrap(listing.indices.dropLast().first { listing[$0].hasPrefix("bl ") && listing[$0 + 1] == "ld r2, 0x18(r1)" },
                                 "\(listing)")
        let stub = UInt64(listing[call].dropFirst(5), radix: 16)!
        let stubListing = try image.machine.disassemble(at: stub, count: 5).map(\.text)
        XCTAssertEqual(stubListing.first, "std r2, 0x18(r1)")
        XCTAssertTrue(stubListing.contains("mtctr r12") && stubListing.contains("bctr"), "\(stubListing)")
        try loader.apply(lp)
        XCTAssertEqual(try image.call("greeting_sum", [0]).signedValue, 7584, "returns through the stub with the payload's TOC")
    }

    func testLoadAndUnloadHooksRunInTheGuest() throws {
        for isa in Self.isas {
            let (payload, _, _) = try Self.build("05-hooks", isa)
            XCTAssertEqual(payload.hooks[.load]?.map(\.name), ["patch_on_load"])
            let (image, loader) = try Self.machine(isa)
            let slot = try XCTUnwrap(image.elf.symbol(named: "observed_toc")).value
            let lp = try loader.load(payload)
            XCTAssertEqual(try image.machine.memory.readUInt64(slot), 0x10ad, "\(isa): load hook ran")
            try loader.unload(lp)
            XCTAssertEqual(try image.machine.memory.readUInt64(slot), 0xdead, "\(isa): unload hook ran")
        }
    }
}

final class ReplaceTests: XCTestCase {
    /// A cumulative payload: from the pristine kernel to kernel + 02 + 04 (it patches
    /// scaled again, and scaled_twice).
    static func cumulative(_ isa: String) throws -> Payload {
        try Payload(bytes: try cumulativeBytes(isa), name: "cumulative-\(isa).lp")
    }

    static func cumulativeBytes(_ isa: String) throws -> [UInt8] {
        let target = try ELFFile(contentsOf: PayloadTests.targetPath(isa))
        let b = PayloadBuilder(original: try ELFFile(contentsOf: samplePath("patches/01-greeting-len-fix/orig-\(isa).o")),
                               patched: try ELFFile(contentsOf: samplePath("patches/04-scaled-twice-stacked/patched-\(isa).o")),
                               target: target, backend: try Architectures.backend(for: target))
        return try b.build().bytes
    }

    func testReplaceRevertsEverythingAndAppliesTheNewOneAtOnce() throws {
        for isa in PayloadTests.isas {
            let (image, loader) = try PayloadTests.machine(isa)
            let pristine = try PayloadTests.imageCode(image)
            let (p01, _, _) = try PayloadTests.build("01-greeting-len-fix", isa)
            let (p02, _, _) = try PayloadTests.build("02-scaled-plus-two", isa)
            let l01 = try loader.load(p01), l02 = try loader.load(p02)
            try loader.apply(l01)
            try loader.apply(l02)
            XCTAssertEqual(try image.call("greeting_len", [5]).signedValue, 0)
            let c = try loader.load(try Self.cumulative(isa))
            XCTAssertTrue(Set(c.functions.map(\.function.name)).isSuperset(of: ["scaled", "scaled_twice"]))
            try loader.replace(with: c)
            XCTAssertFalse(l01.isApplied)
            XCTAssertFalse(l02.isApplied)
            XCTAssertTrue(c.isApplied)
            XCTAssertEqual(loader.patcher.active.map(\.id), c.redirects.map(\.id), "only the cumulative payload's redirects")
            XCTAssertEqual(try image.call("greeting_len", [5]).signedValue, -1, "01 reverted")
            try image.machine.memory.writeUInt64(try XCTUnwrap(image.elf.symbol(named: "tick_count")).value, 0)
            for c in try OracleCase.parse(file: samplePath("patches/04-scaled-twice-stacked/oracle-\(isa).txt")) {
                XCTAssertEqual(try image.call(c.function, c.arguments).signedValue, c.expected, "\(isa) \(c.function)(\(c.arguments))")
            }
            try loader.revert(c)
            XCTAssertEqual(try PayloadTests.imageCode(image), pristine, "\(isa): pristine text")
        }
    }
}
