import Foundation
import Splice
import XCTest

/// The repository's samples/build folder, found from this file's path.
let samplesDirectory: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.appendingPathComponent("samples/build").path
}()

func samplePath(_ name: String) -> String { samplesDirectory + "/" + name }
func sampleBytes(_ name: String) throws -> [UInt8] {
    [UInt8](try XCTUnwrap(FileManager.default.contents(atPath: samplePath(name)), "missing sample \(name)"))
}

let allSampleImages = [Samples.x86_64, Samples.x86_64Fentry, Samples.ppc64le]

/// Asserts that `body` throws exactly `expected`.
func assertThrows<E: Error & Equatable>(_ expected: E, file: StaticString = #filePath, line: UInt = #line,
                                        _ body: () throws -> Void) {
    do {
        try body()
        XCTFail("expected \(expected), nothing was thrown", file: file, line: line)
    } catch let error as E {
        XCTAssertEqual(error, expected, file: file, line: line)
    } catch {
        XCTFail("expected \(expected), got \(type(of: error)): \(error)", file: file, line: line)
    }
}

// Little-endian field access for building and corrupting test inputs.
extension Array where Element == UInt8 {
    mutating func put16(_ offset: Int, _ v: UInt16) { for i in 0..<2 { self[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt16(i))) } }
    mutating func put32(_ offset: Int, _ v: UInt32) { for i in 0..<4 { self[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
    mutating func put64(_ offset: Int, _ v: UInt64) { for i in 0..<8 { self[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
    func get16(_ o: Int) -> UInt16 { UInt16(self[o]) | UInt16(self[o + 1]) << 8 }
    func get64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(self[o + $1]) << (8 * UInt64($1)) } }
}

/// Builds small ELF64 little-endian relocatable files section by section: the tests'
/// way to make inputs no toolchain here produces (SHT_REL on a 64-bit machine) and
/// exact corruptions of them.
struct TestELFBuilder {
    struct Section {
        var name: String
        var type: UInt32
        var data: [UInt8]
        var link: UInt32 = 0
        var info: UInt32 = 0
        var entrySize: UInt64 = 0
        var flags: UInt64 = 0
    }

    var machine: UInt16 = ELFMachine.x86_64
    var sections: [Section] = []

    /// Header, section data, then the section headers; section 0 is the null section and
    /// the last one is .shstrtab.
    func build() -> [UInt8] {
        var names: [UInt8] = [0]
        var nameOffsets: [UInt32] = []
        for s in sections + [Section(name: ".shstrtab", type: 3, data: [])] {
            nameOffsets.append(UInt32(names.count))
            names += Array(s.name.utf8) + [0]
        }
        let all = sections + [Section(name: ".shstrtab", type: 3, data: names)]
        var out = [UInt8](repeating: 0, count: 64)
        var offsets: [Int] = []
        for s in all {
            while out.count % 8 != 0 { out.append(0) }
            offsets.append(out.count)
            out += s.data
        }
        while out.count % 8 != 0 { out.append(0) }
        let shoff = out.count
        out += [UInt8](repeating: 0, count: 64) // null section
        for (i, s) in all.enumerated() {
            var h = [UInt8](repeating: 0, count: 64)
            h.put32(0, nameOffsets[i]); h.put32(4, s.type); h.put64(8, s.flags)
            h.put64(24, UInt64(offsets[i])); h.put64(32, UInt64(s.data.count))
            h.put32(40, s.link); h.put32(44, s.info); h.put64(48, 1); h.put64(56, s.entrySize)
            out += h
        }
        out.replaceSubrange(0..<4, with: [0x7f, 0x45, 0x4c, 0x46])
        out[4] = 2; out[5] = 1; out[6] = 1
        out.put16(16, 1) // ET_REL
        out.put16(18, machine)
        out.put32(20, 1)
        out.put64(40, UInt64(shoff))
        out.put16(52, 64); out.put16(58, 64)
        out.put16(60, UInt16(all.count + 1))
        out.put16(62, UInt16(all.count))
        return out
    }

    /// An ELF64 symbol table entry.
    static func symbol(name: UInt32, info: UInt8, other: UInt8 = 0, section: UInt16, value: UInt64, size: UInt64) -> [UInt8] {
        var e = [UInt8](repeating: 0, count: 24)
        e.put32(0, name); e[4] = info; e[5] = other; e.put16(6, section); e.put64(8, value); e.put64(16, size)
        return e
    }

    /// An Elf64_Rel entry (no addend).
    static func rel(offset: UInt64, symbol: UInt32, type: UInt32) -> [UInt8] {
        var e = [UInt8](repeating: 0, count: 16)
        e.put64(0, offset); e.put64(8, UInt64(symbol) << 32 | UInt64(type))
        return e
    }
}

/// Runs the built `splice` executable (next to the test bundle) with `arguments`.
func runSplice(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
    let dir = try XCTUnwrap(Samples.executableDirectory())
    let path = dir + "/splice"
    guard FileManager.default.isExecutableFile(atPath: path) else { throw XCTSkip("splice not built at \(path)") }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = arguments
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

/// The real-kernel corpus (scripts/kernels.sh, run by scripts/test.sh): Debian 12 and 13
/// kernels for ppc64el and amd64 under .build/kernels. Missing, a test fails and says how to
/// make it; SPLICE_NO_KERNELS=1 (offline use) skips with that reason printed.
enum KernelCorpus {
    static let names = ["debian12-ppc64le", "debian12-amd64", "debian13-ppc64le", "debian13-amd64"]

    static let directory: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.appendingPathComponent(".build/kernels").path
    }()

    static func path(_ name: String) throws -> String {
        if ProcessInfo.processInfo.environment["SPLICE_NO_KERNELS"] == "1" {
            print("skipped: SPLICE_NO_KERNELS=1, so the real-kernel corpus is not used")
            throw XCTSkip("SPLICE_NO_KERNELS=1: the real-kernel corpus is not used")
        }
        let path = directory + "/\(name).elf"
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("\(path) is missing: run scripts/kernels.sh (scripts/test.sh does), or set SPLICE_NO_KERNELS=1 to skip")
            throw XCTSkip("no corpus")
        }
        return path
    }
}
