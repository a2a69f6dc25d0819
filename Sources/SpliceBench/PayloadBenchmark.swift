import SpliceArchitectures
import SpliceDaemon
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceHarness
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
import Foundation

/// `splice bench payload`: parse + place + relocate + commit of a generated payload with
/// many functions, next to elfutils' `eu-readelf -r` reading the same file.
public enum PayloadBenchmark {
    public struct Row: Codable, Sendable {
        public var architecture: String
        public var functions: Int
        public var relocations: Int
        public var bytes: Int
        public var spliceSeconds: Double
        public var readelfSeconds: Double?
        public var ratio: Double? { readelfSeconds.map { spliceSeconds / $0 } }
    }


    /// A payload of `count` functions that each return x times the target's `scale_factor`
    /// (the backend's `multiplyByGlobal` fixture, with its relocations), and one record
    /// redirecting `scaled` to the first of them.
    public static func generate(target: ELFFile, count: Int) throws -> [UInt8] {
        let backend = try Architectures.backend(for: target)
        let fixture = backend.fixtures.multiplyByGlobal("scale_factor")
        var w = ELFWriter(machine: target.header.machine, flags: target.header.flags)
        var symbols: [String: Int] = [:]
        for r in fixture.relocations where symbols[r.symbol] == nil {
            symbols[r.symbol] = w.add(.init(name: r.symbol, type: ELFWriter.Symbol.noType, binding: ELFWriter.Symbol.global, section: nil))
        }
        var first = 0
        for i in 0..<count {
            let section = w.add(.init(name: ".text.gen_\(i)", flags: ELFSection.flagAlloc | ELFSection.flagExecInstr,
                                      data: fixture.code, alignment: 16))
            let f = w.add(.init(name: "gen_\(i)", size: UInt64(fixture.code.count), type: ELFWriter.Symbol.function,
                                binding: ELFWriter.Symbol.global, other: fixture.symbolOther, section: section))
            if i == 0 { first = f }
            for r in fixture.relocations {
                w.relocate(section: section, .init(offset: r.offset, type: r.type, symbol: symbols[r.symbol]!, addend: r.addend))
            }
        }
        var metadata = PayloadMetadata(targetBuildID: target.buildID ?? [])
        metadata.records = [.init(name: "scaled", newSymbol: first, newSize: 0, oldSize: 0)]
        return try metadata.write(into: &w, absolute: backend.absoluteAddressRelocation)
    }

    public static func run(samples: String, count: Int = 10_000, rounds: Int = 5) throws -> [Row] {
        try Architectures.backends.map { Samples.kernel(isa: $0.architecture.name) }.map { imageName in
            let imagePath = samples + "/" + imageName
            let target = try ELFFile(contentsOf: imagePath)
            let bytes = try generate(target: target, count: count)
            let file = NSTemporaryDirectory() + "splice-bench-\(getpid())-\(imageName).lp"
            try SafeFile.write(bytes, to: file)
            defer { unlink(file) }
            let image = try loadImage(path: imagePath)
            let loader = try PayloadLoader(patcher: try LivePatcher(image: image, backend: try Architectures.backend(for: target)))
            var best = Double.infinity
            var relocations = 0
            for _ in 0..<rounds {
                let start = DispatchTime.now().uptimeNanoseconds
                let payload = try Payload(bytes: bytes, name: file)
                let loaded = try loader.load(payload)
                let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                best = min(best, seconds)
                relocations = payload.elf.relocationSections.reduce(0) { $0 + $1.entries.count }
                try loader.unload(loaded)
            }
            var readelf: Double?
            if let tool = ["/usr/bin/eu-readelf", "/bin/eu-readelf"].first(where: FileManager.default.isExecutableFile) {
                for _ in 0..<rounds {
                    let p = Process()
                    p.executableURL = URL(fileURLWithPath: tool)
                    p.arguments = ["-r", file]
                    p.standardOutput = FileHandle.nullDevice
                    let start = DispatchTime.now().uptimeNanoseconds
                    try p.run()
                    p.waitUntilExit()
                    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                    guard p.terminationStatus == 0 else { throw BenchmarkError(description: "eu-readelf -r failed on \(file)") }
                    readelf = min(readelf ?? .infinity, seconds)
                }
            }
            return Row(architecture: try Architectures.forELF(target).name, functions: count,
                       relocations: relocations, bytes: bytes.count, spliceSeconds: best, readelfSeconds: readelf)
        }
    }
}
