import SpliceArchitectures
import SpliceDaemon
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceHarness
import SpliceMachine
import SplicePPC64LE
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


    /// A payload of `count` functions that each read the target's `scale_factor` (x86-64:
    /// `mov rax,[rip+scale_factor]; imul rax,rdi; ret`; ppc64le: a global entry against
    /// `.TOC.`, then `addis/ld` TOC16_HA/LO_DS of scale_factor, `mulld`, `blr`), and one
    /// record redirecting `scaled` to the first of them.
    public static func generate(target: ELFFile, count: Int) throws -> [UInt8] {
        let backend = try Architectures.backend(for: target)
        let ppc = target.header.machine == ELFMachine.ppc64
        var w = ELFWriter(machine: target.header.machine, flags: target.header.flags)
        let scale = w.add(.init(name: "scale_factor", type: ELFWriter.Symbol.noType, binding: ELFWriter.Symbol.global, section: nil))
        let toc = ppc ? w.add(.init(name: ".TOC.", type: ELFWriter.Symbol.noType, binding: ELFWriter.Symbol.global, section: nil)) : 0
        var first = 0
        for i in 0..<count {
            let code: [UInt8]
            if ppc {
                let words: [UInt32] = [0x3c4c_0000, 0x3842_0000, 0x3d22_0000, 0xe929_0000, 0x7c63_49d2, 0x4e80_0020]
                code = words.flatMap(PPC64LEInstruction.bytes)
            } else {
                code = [0x48, 0x8b, 0x05, 0, 0, 0, 0, 0x48, 0x0f, 0xaf, 0xc7, 0xc3]
            }
            let section = w.add(.init(name: ".text.gen_\(i)", flags: ELFSection.flagAlloc | ELFSection.flagExecInstr,
                                      data: code, alignment: 16))
            let f = w.add(.init(name: "gen_\(i)", size: UInt64(code.count), type: ELFWriter.Symbol.function,
                                binding: ELFWriter.Symbol.global, other: ppc ? 3 << 5 : 0, section: section))
            if i == 0 { first = f }
            if ppc {
                w.relocate(section: section, .init(offset: 0, type: 252, symbol: toc, addend: 0))
                w.relocate(section: section, .init(offset: 4, type: 250, symbol: toc, addend: 4))
                w.relocate(section: section, .init(offset: 8, type: 50, symbol: scale, addend: 0))
                w.relocate(section: section, .init(offset: 12, type: 64, symbol: scale, addend: 0))
            } else {
                w.relocate(section: section, .init(offset: 3, type: 2, symbol: scale, addend: -4))
            }
        }
        var metadata = PayloadMetadata(targetBuildID: target.buildID ?? [])
        metadata.records = [.init(name: "scaled", newSymbol: first, newSize: 0, oldSize: 0)]
        return try metadata.write(into: &w, absolute: backend.absoluteAddressRelocation)
    }

    public static func run(samples: String, count: Int = 10_000, rounds: Int = 5) throws -> [Row] {
        try [Samples.x86_64, Samples.ppc64le].map { imageName in
            let imagePath = samples + "/" + imageName
            let target = try ELFFile(contentsOf: imagePath)
            let bytes = try generate(target: target, count: count)
            let file = NSTemporaryDirectory() + "splice-bench-\(getpid())-\(imageName).lp"
            try SafeFile.write(bytes, to: file)
            defer { unlink(file) }
            let image = try loadImage(path: imagePath)
            let loader = PayloadLoader(patcher: try LivePatcher(image: image, backend: try Architectures.backend(for: target)))
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
            return Row(architecture: target.header.machine == ELFMachine.ppc64 ? "ppc64le" : "x86_64", functions: count,
                       relocations: relocations, bytes: bytes.count, spliceSeconds: best, readelfSeconds: readelf)
        }
    }
}
