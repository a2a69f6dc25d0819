import SpliceArchitectures
import SpliceDaemon
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
import Foundation

/// Finds the bundled sample images (samples/build) from the working directory, the
/// `SPLICE_SAMPLES` environment variable, or the executable's location in a checkout.
public enum Samples {
    public static let x86_64 = "kernel-x86_64.elf"
    public static let x86_64Fentry = "kernel-x86_64-fentry.elf"
    /// Built with frame pointers: the stack check follows the rbp chain.
    public static let x86_64FramePointers = "kernel-x86_64-fp.elf"
    public static let ppc64le = "kernel-ppc64le.elf"

    /// The sample kernel built for the ISA the registry names `isa`.
    public static func kernel(isa: String) -> String { "kernel-\(isa).elf" }

    public struct NotFound: Error, CustomStringConvertible {
        public let searched: [String]
        public var description: String {
            "cannot find the bundled samples (samples/build); looked in: " + searched.joined(separator: ", ")
                + ". Run from the Splice checkout or set SPLICE_SAMPLES."
        }
    }

    public static func directory() throws -> String {
        var candidates: [String] = []
        if let env = ProcessInfo.processInfo.environment["SPLICE_SAMPLES"] { candidates.append(env) }
        var dir = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
        for _ in 0..<4 {
            candidates.append(dir.appendingPathComponent("samples/build").path)
            dir.deleteLastPathComponent()
        }
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            var d = URL(fileURLWithPath: exe).deletingLastPathComponent()
            for _ in 0..<6 {
                candidates.append(d.appendingPathComponent("samples/build").path)
                d.deleteLastPathComponent()
            }
        }
        for c in candidates where FileManager.default.fileExists(atPath: c + "/" + x86_64) { return c }
        throw NotFound(searched: candidates)
    }

    public static func path(_ name: String) throws -> String { try directory() + "/" + name }

    /// A payload from the sample patches (samples/build/patches/DIR): `original`'s
    /// unpatched object against `patched`'s patched one (the same folder for one patch,
    /// two for a cumulative payload), built for `target` with `backend`.
    /// `expectBytes`: record that many of each old function's first bytes (checked at load).
    public static func payload(original: String, patched: String, isa: String, target: ELFFile, backend: any PatchBackend,
                               directory: String, expectBytes: Int = 0,
                               configure: (inout PayloadBuilder) throws -> Void = { _ in }) throws -> (bytes: [UInt8], report: PayloadBuilder.Report) {
        var builder = PayloadBuilder(original: try ELFFile(contentsOf: "\(directory)/patches/\(original)/orig-\(isa).o"),
                                     patched: try ELFFile(contentsOf: "\(directory)/patches/\(patched)/patched-\(isa).o"),
                                     target: target, backend: backend)
        builder.expectBytes = expectBytes
        try configure(&builder)
        return try builder.build()
    }

    /// The directory holding the running executable (where SwiftPM puts its siblings).
    public static func executableDirectory() -> String? {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            .map { URL(fileURLWithPath: $0).deletingLastPathComponent().path }
    }
}
