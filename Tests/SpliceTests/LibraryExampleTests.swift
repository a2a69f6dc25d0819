import Foundation
import Splice
import XCTest

/// The README's library example and `splice stress`, run as written.
final class LibraryExampleTests: XCTestCase {
    func testTheReadmeExampleRuns() throws {
        let elf = try ELFFile(contentsOf: samplePath(Samples.ppc64le))
        let machine = try Machine(architecture: try Architectures.forELF(elf), vcpuCount: 1)
        let image = try machine.load(elf)
        let patcher = try LivePatcher(image: image, backend: try Architectures.backend(for: elf))
        let loader = try PayloadLoader(patcher: patcher)
        let bytes = try Samples.payload(original: "02-scaled-plus-two", patched: "02-scaled-plus-two", isa: "ppc64le",
                                        target: elf, backend: patcher.backend, directory: samplesDirectory).bytes
        let payload = try loader.load(try Payload(bytes: bytes, name: "p02"))
        try loader.apply(payload)
        XCTAssertEqual(try image.call("scaled", [10]).signedValue, 32)
        try loader.revert(payload)
        XCTAssertEqual(try image.call("scaled", [10]).signedValue, 31)

        let live = try LiveMachine(configuration: .init(image: samplePath(Samples.x86_64), cpus: 4, engine: .nonstop))
        defer { live.shutdown() }
        let x86 = try Samples.payload(original: "02-scaled-plus-two", patched: "02-scaled-plus-two", isa: "x86_64",
                                      target: live.image.elf, backend: try Architectures.backend(named: "x86_64"),
                                      directory: samplesDirectory).bytes
        try live.upload(id: "p02", bytes: x86)
        try live.perform(.check, id: "p02")
        try live.perform(.apply, id: "p02")
        XCTAssertEqual(try live.get("p02").state, .applied)
        XCTAssertEqual(try live.call("scaled", [10]), 32)
    }

    func testAShortStressRunChecksEveryRecord() throws {
        for isa in ["x86_64", "ppc64le"] {
            for engine in PatchEngineKind.allCases {
                let r = try StressRun.run(samples: samplesDirectory, isa: isa, vcpus: 2, cycles: 5, engine: engine)
                XCTAssertEqual(r.recordsChecked, 5 * 2 * 64 * 2, "\(isa) \(engine)")
                XCTAssertEqual(r.wrongResults, 0)
                XCTAssertEqual(r.faults, 0)
                XCTAssertTrue(r.textIdenticalAtEnd)
                XCTAssertEqual([r.applies, r.reverts, r.replaces], [5, 10, 10])
            }
        }
    }

    /// A short soak: the random mix runs, every record is checked, the text hash comes back.
    func testAShortSoakChecksEveryRecordAndTheHash() throws {
        for (isa, engine) in [("x86_64", PatchEngineKind.stop), ("ppc64le", .nonstop)] {
            let r = try SoakRun.run(samples: samplesDirectory, isa: isa, vcpus: 2, seconds: 2, engine: engine, seed: 7)
            XCTAssertTrue(r.passed, "\(isa) \(engine): \(r.failures)")
            XCTAssertGreaterThan(r.done.values.reduce(0, +), 20, "\(isa) \(engine)")
            XCTAssertGreaterThan(r.done["apply", default: 0] + r.done["replace", default: 0], 0)
            XCTAssertGreaterThan(r.recordsChecked, 1000)
            XCTAssertEqual(r.pristineHash, r.finalHash)
        }
    }
}
