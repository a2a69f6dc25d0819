import ArgumentParser
import Foundation
import Splice

@main
struct SpliceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "splice",
        abstract: "Live patching for x86-64 and ppc64le, verified by running real code in Unicorn.",
        subcommands: [DemoCommand.self, Inspect.self, Call.self, Disasm.self, Build.self, Patch.self, Stress.self, Bench.self,
                      MachineCommand.self, Upload.self, List.self, Get.self, ActionCommand<CheckVerb>.self,
                      ActionCommand<ApplyVerb>.self, ActionCommand<RevertVerb>.self, ActionCommand<ReplaceVerb>.self,
                      ActionCommand<UnloadVerb>.self, Load.self, Sign.self, Keygen.self, Run.self, MatrixCommand.self, Trace.self, Soak.self])

    /// As ArgumentParser's, but bad arguments exit 1, the code documented for them (and
    /// xen-livepatch's "error"), instead of sysexits' EX_USAGE (64).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            if exitCode(for: error).rawValue == 64 {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(1)
            }
            exit(withError: error)
        }
    }
}

/// Formats numbers the way porting engineers read them.

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Errors reach the user as one line naming what and where, and exit code 1.
struct CommandError: Error, CustomStringConvertible {
    let description: String
}

func reportingErrors<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let e as ExitCode { throw e } catch {
        FileHandle.standardError.write(Data("splice: error: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List an ELF image's functions: entries, live-patching sites, prologue disassembly.",
        discussion: """
        With --redirect FUNCTION=TARGET the redirect is applied in an emulated machine and the function's \
        bytes and disassembly are shown before and after it, with the patch site, the undo buffer and any \
        far-jump slot. TARGET is a function of the image, a 0x address, or 0 (make FUNCTION a no-op). \
        --args runs FUNCTION with those arguments before and after.
        """)

    @Argument(help: "An ELF executable (x86-64 or ppc64le).") var image: String
    @Option(name: .shortAndLong, help: "Only these functions (repeatable).") var function: [String] = []
    @Option(help: "Prologue instructions to disassemble per function.") var instructions = 6
    @Option(help: "The patch backend to use (x86_64, ppc64le); default: the image's machine.") var arch: String?
    @Option(help: "Show a redirect before and after: FUNCTION=TARGET.") var redirect: String?
    @Option(parsing: .upToNextOption, help: "Arguments to call FUNCTION with before and after the redirect.")
    var args: [String] = []
    @Option(help: "Another image to load into the same machine (repeatable); TARGET may be one of its functions.")
    var load: [String] = []
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        if let spec = redirect {
            try showRedirect(spec)
            return
        }
        let report = try reportingErrors {
            var r = try Inspector.report(try ELFFile(contentsOf: image), prologueInstructions: instructions)
            if !function.isEmpty {
                let missing = function.filter { name in !r.functions.contains { $0.name == name } }
                if !missing.isEmpty { throw CommandError(description: "no function named \(missing.joined(separator: ", ")) in \(image)") }
                r.functions = r.functions.filter { function.contains($0.name) }
            }
            return r
        }
        if json { try printJSON(report); return }
        print("\(report.file): \(report.architecture), entry \(hex(report.entry)), build id \(report.buildID ?? "none")")
        for s in report.segments {
            print("  LOAD \(hex(s.address)) memsz \(hex(s.memorySize)) filesz \(hex(s.fileSize)) \(s.permissions)")
        }
        print("\(report.functions.count) functions:")
        for f in report.functions {
            var entries = "global \(hex(f.globalEntry))"
            if let local = f.localEntry { entries += ", local \(hex(local)) (+\(local - f.globalEntry))" }
            print("\n\(f.name)  \(hex(f.address))  size \(f.size)  entries: \(entries)")
            for s in f.sites {
                print("  site \(s.kind.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0)) \(hex(s.address)) (+\(s.offset))  \(s.note)")
            }
            for i in f.prologue {
                print("    \(hex(i.address)):  \(i.bytes.padding(toLength: 24, withPad: " ", startingAt: 0)) \(i.text)")
            }
        }
    }
}

extension Inspect {
    func showRedirect(_ spec: String) throws {
        let preview = try reportingErrors { () -> RedirectPreview in
            let (name, target) = try RedirectPreview.parse(spec)
            let backend = try arch.map { try Architectures.backend(named: $0) }
                ?? Architectures.backend(for: try ELFFile(contentsOf: image))
            return try RedirectPreview.make(imagePath: image, backend: backend, function: name, target: target,
                                            arguments: args.isEmpty ? nil : try args.map(parseInteger),
                                            instructions: instructions, extraImages: load)
        }
        if json { try printJSON(preview); return }
        func show(_ l: RedirectPreview.Listing) {
            for i in l.instructions {
                print("    \(hex(i.address)):  \(i.bytes.padding(toLength: 30, withPad: " ", startingAt: 0)) \(i.text)")
            }
        }
        let p = preview
        print("redirect \(p.function) -> \(p.target)   [\(p.architecture), \(p.image)]")
        print("  site:   \(p.site.kind.rawValue) at \(hex(p.site.address)) (\(p.function)+\(p.site.address - p.site.functionAddress)), "
              + "room \(p.site.room) bytes: \(p.site.note)")
        print("  method: \(p.method)" + (p.extraInstructions.map { "; +\($0) guest instruction(s) per call" } ?? ""))
        print("  undo:   \(p.undoBuffer)")
        print("  before:")
        show(p.before)
        print("  after:")
        show(p.after)
        for other in p.otherWrites {
            if let data = other.data {
                print("  also written: \(hex(other.address)) = \(data)   (\(other.purpose ?? "data"))")
            } else {
                print("  also written: \(other.purpose ?? "code") at \(hex(other.address))")
                show(other)
            }
        }
        for line in p.runtime { print("  runtime: \(line)") }
        if let c = p.call {
            let call = "\(p.function)(\(c.arguments.map(String.init).joined(separator: ", ")))"
            print("  run:    \(call) = \(c.before) in \(c.instructionsBefore) instructions before; "
                  + "\(c.after) in \(c.instructionsAfter) after")
        }
        if !p.site.isReservedSlot && p.target != "0 (no-op)" {
            print("  (the old instructions after the jump are no longer reached from the entry: they decode as whatever the cut leaves)")
        }
    }
}

/// Parses a signed integer in decimal or 0x-hex.
func parseInteger(_ text: String) throws -> Int64 {
    let negative = text.hasPrefix("-")
    let body = negative ? String(text.dropFirst()) : text
    let magnitude: UInt64?
    if body.lowercased().hasPrefix("0x") { magnitude = UInt64(body.dropFirst(2), radix: 16) } else { magnitude = UInt64(body) }
    guard let m = magnitude else { throw CommandError(description: "not an integer: \(text)") }
    return negative ? -Int64(bitPattern: m) : Int64(bitPattern: m)
}

struct Call: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Call a function of an ELF executable inside the emulated machine.",
        discussion: "Loads the image's PT_LOAD segments, follows the ISA's ABI (SysV x86-64, ELFv2 ppc64le), and prints the return value and the number of guest instructions executed. No entry point is run.")

    @Argument(help: "A static ELF executable (x86-64 or ppc64le).") var image: String
    @Argument(help: "The function's symbol name.") var function: String
    @Argument(parsing: .allUnrecognized, help: "Integer arguments (decimal or 0x hex; negatives allowed).")
    var arguments: [String] = []
    @Option(help: "Which entry to use: global or local (ppc64le functions that use the TOC have both).")
    var entry: EntryKind = .global
    @Option(help: "Wall-clock limit in milliseconds.") var timeoutMs: UInt64 = 10_000
    @Option(help: "Instruction limit (0: none).") var maxInstructions = 0
    @Flag(help: "Print JSON.") var json = false

    struct Output: Codable {
        var image: String, architecture: String, function: String, entry: String, entryAddress: UInt64
        var arguments: [Int64]
        var result: Int64, resultHex: String, instructions: UInt64?
    }

    func run() throws {
        let args = try reportingErrors { try arguments.map(parseInteger) }
        let (result, arch) = try reportingErrors { () -> (CallResult, String) in
            let loaded = try loadImage(path: image)
            let r = try loaded.call(function, args, entry: entry, limits: .init(
                timeoutMicroseconds: timeoutMs * 1000, instructions: maxInstructions))
            return (r, loaded.machine.architecture.name)
        }
        let out = Output(image: image, architecture: arch, function: function, entry: result.entry.kind.rawValue,
                         entryAddress: result.entry.address, arguments: args, result: result.signedValue,
                         resultHex: hex(result.value), instructions: result.instructions)
        if json { try printJSON(out); return }
        let call = "\(function)(\(args.map(String.init).joined(separator: ", ")))"
        print("\(call) = \(out.result)  [\(out.resultHex)]")
        print("  \(arch), \(out.entry) entry \(hex(out.entryAddress)), \(out.instructions.map(String.init) ?? "?") guest instructions")
    }
}


struct Disasm: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Disassemble a function (or N instructions at an address).")
    @Argument(help: "An ELF file.") var image: String
    @Argument(help: "A function name or a 0x address.") var location: String
    @Option(name: .shortAndLong, help: "Instructions (default: the whole function).") var count: Int?

    func run() throws {
        try reportingErrors {
            let elf = try ELFFile(contentsOf: image)
            let arch = try Architectures.forELF(elf)
            let disassembler = try Disassembler(mode: arch.disassemblyMode)
            let (address, bytes): (UInt64, [UInt8])
            if location.hasPrefix("0x") {
                let a = UInt64(try parseInteger(location))
                guard let section = elf.sections.first(where: { $0.contains(address: a) && $0.type != ELFSection.typeNoBits }) else {
                    throw CommandError(description: "\(location) is in no section with contents")
                }
                address = a
                bytes = Array(section.data[Int(a - section.address)...])
            } else {
                guard let symbol = elf.symbol(named: location) else { throw CommandError(description: "no symbol \(location) in \(image)") }
                address = symbol.value
                bytes = try elf.bytes(of: symbol)
            }
            let names = elf.functionNames
            for i in disassembler.decode(bytes, address: address, count: count ?? (location.hasPrefix("0x") ? 16 : nil)) {
                print("  \(hex(i.address)):  \(i.bytesHex.padding(toLength: 24, withPad: " ", startingAt: 0)) \(Inspector.annotate(i.text, names))")
            }
        }
    }
}

struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the bundled samples on every ISA: prologues, patch sites, entries, faults, calls checked against the oracles, payloads, a live patch taken back, and the demo scenario on running vCPUs.")

    func run() throws {
        try reportingErrors { try Demo().run() }
    }
}

struct Build: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Build a payload from an original and a patched object (like kpatch's create-diff-object).",
        discussion: """
        Both objects must be compiled with the target's flags plus -ffunction-sections -fdata-sections. \
        Changed functions are carried with the new functions, strings and data they need; references to \
        unchanged code and data become relocations against the target's symbols. The format is described \
        in docs/payload-format.md.
        """)

    @Option(help: "The object built from the original source.") var original: String
    @Option(help: "The object built from the patched source.") var patched: String
    @Option(help: "The running image the payload is for (symbols, build id).") var target: String
    @Option(name: .shortAndLong, help: "Where to write the payload.") var output: String
    @Option(help: "A payload this one depends on (repeatable).") var depends: [String] = []
    @Option(help: "Also make this function a no-op (new_addr 0; repeatable).") var nop: [String] = []
    @Option(help: "Record this many of each old function's first bytes as expected bytes.") var expect = 0
    @Flag(help: "Print JSON.") var json = false

    struct Output: Codable {
        var payload: String, buildID: String, targetBuildID: String, bytes: Int
        var changed: [String], newFunctions: [String], carriedCallees: [String], carriedData: [String], external: [String]
    }

    func run() throws {
        let out = try reportingErrors { () -> Output in
            let targetELF = try ELFFile(contentsOf: target)
            var builder = PayloadBuilder(original: try ELFFile(contentsOf: original), patched: try ELFFile(contentsOf: patched),
                                         target: targetELF, backend: try Architectures.backend(for: targetELF))
            builder.dependencies = try depends.map { try Payload(contentsOf: $0) }
            builder.nopFunctions = nop
            builder.expectBytes = expect
            let (bytes, report) = try builder.build()
            let payload = try Payload(bytes: bytes, name: output) // the loader's own checks, before writing
            try SafeFile.write(bytes, to: output)
            return Output(payload: output, buildID: payload.buildIDHex, targetBuildID: targetELF.buildIDHex ?? "",
                          bytes: bytes.count, changed: report.changed, newFunctions: report.newFunctions,
                          carriedCallees: report.carriedCallees, carriedData: report.carriedData, external: report.external)
        }
        if json { try printJSON(out); return }
        print("\(out.payload): \(out.bytes) bytes, build id \(out.buildID), for target \(out.targetBuildID)")
        print("  changed:          \(out.changed.joined(separator: ", "))")
        if !out.newFunctions.isEmpty { print("  new functions:    \(out.newFunctions.joined(separator: ", "))") }
        if !out.carriedCallees.isEmpty { print("  carried callees:  \(out.carriedCallees.joined(separator: ", ")) (calls that need the same TOC)") }
        if !out.carriedData.isEmpty { print("  carried sections: \(out.carriedData.joined(separator: ", "))") }
        print("  target symbols:   \(out.external.joined(separator: ", "))")
    }
}

struct Patch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load and apply payloads into a machine running an image, then call functions or check an oracle.")

    @Argument(help: "The target image.") var image: String
    @Argument(help: "Payloads, loaded and applied in order.") var payloads: [String]
    @Option(help: "A function call to run after applying: NAME or NAME=ARG,ARG (repeatable).") var call: [String] = []
    @Option(help: "An oracle output file: every case is run and compared.") var oracle: String?
    @Flag(help: "Revert and unload everything at the end and check the code bytes are as before.") var revert = false

    func run() throws {
        try reportingErrors {
            let loaded = try loadImage(path: image)
            let loader = PayloadLoader(patcher: try LivePatcher(image: loaded, backend: try Architectures.backend(for: loaded.elf)))
            let code = try loaded.machine.memory.regions.filter { $0.permissions.contains(.execute) }
                .map { try loaded.machine.memory.read($0.base, count: Int($0.size)) }
            var applied: [LoadedPayload] = []
            for path in payloads {
                let p = try loader.load(try Payload(contentsOf: path))
                try loader.apply(p)
                applied.append(p)
                print("applied \(path): " + p.functions.map { f in
                    "\(f.function.name) -> " + (f.newAddress.map { hex($0) } ?? "no-op")
                }.joined(separator: ", ") + " (regions " + p.regions.map { "\(hex($0.base)) \($0.permissions)" }.joined(separator: ", ") + ")")
            }
            for spec in call {
                let parts = spec.split(separator: "=", maxSplits: 1)
                let args = try parts.count > 1 ? parts[1].split(separator: ",").map { try parseInteger(String($0)) } : []
                let r = try loaded.call(String(parts[0]), args)
                print("\(parts[0])(\(args.map(String.init).joined(separator: ", "))) = \(r.signedValue)")
            }
            if let oracle {
                let cases = try OracleCase.parse(file: oracle)
                var bad = 0
                for c in cases where try loaded.call(c.function, c.arguments).signedValue != c.expected { bad += 1 }
                print("\(cases.count - bad)/\(cases.count) calls agree with \(oracle)")
                if bad > 0 { throw CommandError(description: "\(bad) calls disagree with the oracle") }
            }
            if revert {
                for p in applied.reversed() {
                    try loader.revert(p)
                    try loader.unload(p)
                }
                let after = try loaded.machine.memory.regions.filter { $0.permissions.contains(.execute) }
                    .map { try loaded.machine.memory.read($0.base, count: Int($0.size)) }
                print("reverted and unloaded: code bytes \(after == code ? "identical to before" : "DIFFERENT")")
                if after != code { throw CommandError(description: "code differs after revert") }
            }
        }
    }
}

struct Stress: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply / revert / replace payloads over and over while N vCPUs run, checking every result.")
    @Option(help: "The ISA.") var isa = ISAName.first
    @Option(help: "Running vCPUs.") var vcpus = 4
    @Option(help: "Cycles; each one applies, reverts, replaces, replaces back and reverts.")
    var cycles = 1000
    @Option(help: "stop (rendezvous) or nonstop (int3 protocol / word writes, vCPUs never stopped together).")
    var engine = PatchEngineKind.stop
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        guard (1...64).contains(vcpus), cycles >= 1 else { throw ValidationError("--vcpus is 1 to 64, --cycles at least 1") }
    }

    func run() throws {
        let r = try reportingErrors {
            try StressRun.run(samples: try Samples.directory(), isa: isa.name, vcpus: vcpus, cycles: cycles, engine: engine)
        }
        if json { try printJSON(r); return }
        print("splice stress: \(r.architecture), \(r.vcpus) vCPUs, \(r.cycles) cycles, \(r.engine.rawValue) engine, in \(String(format: "%.1f", r.seconds)) s")
        print("  applies \(r.applies), reverts \(r.reverts), replaces \(r.replaces); \(r.rendezvous) rendezvous")
        if engine == .nonstop {
            print("  non-stop: \(r.syncs) syncs, \(r.gracePeriods) grace periods, \(r.trapsTaken) vCPUs sent on from a trap, \(r.staleTraps) stale traps")
        }
        print("  guest iterations \(r.iterations); records checked \(r.recordsChecked); wrong results \(r.wrongResults); faults \(r.faults)")
        print("  text byte-identical to the start after the last revert: \(r.textIdenticalAtEnd ? "yes" : "NO")")
        if r.wrongResults > 0 || r.faults > 0 || !r.textIdenticalAtEnd { throw ExitCode(1) }
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Benchmarks that print what they measure on this machine.",
                                                    subcommands: [Emu.self, Redirect.self, PayloadLoad.self, RendezvousLatency.self,
                                                                  Engines.self, SignatureScan.self, Report.self])

    struct SignatureScan: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "signature",
            abstract: "Finding and checking an upload's appended signature, next to one SHA-256 of the same bytes.")
        @Option(help: "Size of the generated uploads, in MB.") var megabytes = 45
        @Option(help: "Rounds (best of each).") var rounds = 5
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            guard (1...1024).contains(megabytes) else { throw ValidationError("--megabytes is 1 to 1024") }
            guard rounds >= 1 else { throw ValidationError("--rounds is at least 1") }
        }

        func run() throws {
            let rows = try reportingErrors { try SignatureBenchmark.run(megabytes: megabytes, rounds: rounds) }
            if json { try printJSON(rows); return }
            print("splice bench signature: best of \(rounds)")
            print("input                          bytes      split ms   verify ms   SHA-256 of the same bytes ms")
            for r in rows {
                print([r.input.padding(toLength: 28, withPad: " ", startingAt: 0), String(format: "%10d", r.bytes),
                       String(format: "%10.3f", r.splitMilliseconds), r.verifyMilliseconds.map { String(format: "%11.1f", $0) } ?? "          -",
                       String(format: "%14.1f", r.sha256Milliseconds)].joined(separator: " "))
            }
        }
    }

    struct Engines: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The non-stop engine against the rendezvous on the same action (apply + revert of payload 02, vCPUs running).")
        @Option(help: "vCPU counts (comma-separated).") var vcpus = "1,4"
        @Option(help: "Repeats (medians are printed).") var repeats = 60
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let rows = try reportingErrors {
                try EngineBenchmark.run(samples: try Samples.directory(), counts: vcpus.split(separator: ",").compactMap { Int($0) },
                                        repeats: repeats)
            }
            if json { try printJSON(rows); return }
            print("splice bench engines: apply / revert of payload 02 while the vCPUs run, median of \(repeats)")
            print("isa       vCPUs  engine    apply µs   revert µs   vCPUs held µs   syncs/cycle")
            for r in rows {
                print([r.architecture.padding(toLength: 9, withPad: " ", startingAt: 0), String(format: "%5d", r.vcpus),
                       r.engine.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0),
                       String(format: "%9.1f", r.applyMedianMicroseconds), String(format: "%11.1f", r.revertMedianMicroseconds),
                       String(format: "%15.1f", r.heldMedianMicroseconds ?? 0), r.syncsPerCycle.map { String(format: "%13.1f", $0) } ?? "            -"]
                    .joined(separator: " "))
            }
        }
    }

    struct Report: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run every benchmark once and write one markdown report (BENCHMARKS.md): each figure with its command and anchor.",
            discussion: "Build in release mode first (scripts/bench.sh does, and writes BENCHMARKS.md). Takes a few minutes.")
        @Option(name: .shortAndLong, help: "Where to write the report.") var output = "BENCHMARKS.md"
        @Option(help: "Repeats of the rendezvous benchmark.") var rendezvousRepeats = 30

        func run() throws {
            try reportingErrors {
                guard let dir = Samples.executableDirectory() else { throw CommandError(description: "cannot find my own executable") }
                var options = BenchmarkReport.Options(bareExecutable: dir + "/unicorn-bare-bench")
                options.rendezvousRepeats = rendezvousRepeats
                let text = try BenchmarkReport.markdown(samples: try Samples.directory(), options: options) { step in
                    print("measuring: \(step)")
                    fflush(stdout)
                }
                try SafeFile.write(Array(text.utf8), to: output)
                print("wrote \(output)")
            }
        }
    }

    struct RendezvousLatency: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rendezvous",
            abstract: "Apply latency of one function with N running vCPUs, next to an empty rendezvous.")
        @Option(help: "vCPU counts (comma-separated).") var vcpus = "1,4,16,64"
        @Option(help: "Repeats per count (the median is printed).") var repeats = 30
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let counts = vcpus.split(separator: ",").compactMap { Int($0) }
            let rows = try reportingErrors { try RendezvousBenchmark.run(samples: try Samples.directory(), counts: counts, repeats: repeats) }
            if json { try printJSON(rows); return }
            print("splice bench rendezvous: request -> all vCPUs resumed, median of \(repeats), \(ProcessInfo.processInfo.activeProcessorCount) host cores")
            print("isa       vCPUs   empty µs   1 function µs   ratio   REPLACE 1000 µs   added µs/function   (best)   of which: prepare   stopped-writing")
            print("                                               (<=1.2 at 16)                    (target <= 1)               µs/function   µs/function")
            for r in rows {
                print([r.architecture.padding(toLength: 9, withPad: " ", startingAt: 0), String(format: "%5d", r.vcpus),
                       String(format: "%10.1f", r.emptyMedianMicroseconds), String(format: "%15.1f", r.applyMedianMicroseconds),
                       String(format: "%7.2f", r.ratio), String(format: "%17.1f", r.replaceMedianMicroseconds),
                       String(format: "%19.3f", r.replacePerFunctionMicroseconds),
                       String(format: "%8.3f", r.replaceBestPerFunctionMicroseconds),
                       String(format: "%19.3f", r.replacePrepareMedianMicroseconds / 1000),
                       String(format: "%17.3f", r.replaceWriteMedianMicroseconds / 1000)].joined(separator: " "))
            }
        }
    }

    struct PayloadLoad: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "payload",
            abstract: "Load + relocate time of a generated payload, next to eu-readelf -r reading the same file.")
        @Option(help: "Functions in the generated payload.") var functions = 10_000
        @Option(help: "Rounds (best of each side).") var rounds = 5
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let rows = try reportingErrors { try PayloadBenchmark.run(samples: try Samples.directory(), count: functions, rounds: rounds) }
            if json { try printJSON(rows); return }
            print("splice bench payload: parse + place + relocate + map of a generated payload, best of \(rounds)")
            print("isa       functions  relocations  bytes      splice ms   eu-readelf -r ms   ratio")
            for r in rows {
                print([r.architecture.padding(toLength: 9, withPad: " ", startingAt: 0),
                       String(format: "%9d", r.functions), String(format: "%12d", r.relocations), String(format: "%9d", r.bytes),
                       String(format: "%11.1f", r.spliceSeconds * 1000),
                       r.readelfSeconds.map { String(format: "%18.1f", $0 * 1000) } ?? "   (no eu-readelf)",
                       r.ratio.map { String(format: "%7.2f", $0) } ?? ""].joined(separator: " "))
            }
        }
    }

    struct Redirect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Guest instructions one redirected call costs, counted by Unicorn (not timed).",
            discussion: "Each case calls the redirected function and the target directly with the same arguments; the difference is the redirect's own cost.")
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let rows = try reportingErrors { try RedirectBenchmark.run(samples: try Samples.directory()) }
            if json { try printJSON(rows); return }
            print("splice bench redirect: guest instructions per call, counted by Unicorn")
            print("case                                    method                                              target  redirected  overhead  goal")
            for r in rows {
                print([r.name.padding(toLength: 39, withPad: " ", startingAt: 0),
                       r.method.prefix(50).padding(toLength: 50, withPad: " ", startingAt: 0),
                       String(format: "%7d", r.targetInstructions), String(format: "%11d", r.redirectedInstructions),
                       String(format: "%+9d", r.overhead), r.goal].joined(separator: " "))
            }
        }
    }

    struct Emu: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Guest instructions per second through Splice's machine vs. a bare C program on Unicorn.",
            discussion: """
            Both sides call mix_loop (a loop-heavy sample function) in each ISA's sample kernel with no \
            hooks; the instruction count per call comes from one counted run on each side and must agree. \
            The first table gives Splice calls no time bound, like the bare program; the second shows what \
            the default 10 s bound of `splice call` costs (Unicorn runs a timer thread per emu_start).
            """)
        @Option(help: "Loop iterations of mix_loop per call.") var iterations: Int64 = 1_000_000
        @Option(help: "Calls per round.") var runs = 20
        @Option(help: "Rounds (the best of each side is reported).") var rounds = 5
        @Flag(help: "Print JSON.") var json = false

        struct Table: Codable {
            var spliceCallTimeoutMicroseconds: UInt64
            var rows: [EmulatorBenchmark.Row]
        }

        func run() throws {
            let tables = try reportingErrors { () -> [Table] in
                guard let dir = Samples.executableDirectory() else { throw CommandError(description: "cannot find my own executable") }
                var bench = EmulatorBenchmark(bareExecutable: dir + "/unicorn-bare-bench")
                bench.argument = iterations
                bench.runs = runs
                bench.rounds = rounds
                return try [0, VCPU.Limits().timeoutMicroseconds].map { timeout in
                    bench.timeoutMicroseconds = timeout
                    return Table(spliceCallTimeoutMicroseconds: timeout,
                                 rows: try [Samples.x86_64, Samples.ppc64le].map { try bench.measure(imagePath: Samples.path($0)) })
                }
            }
            if json { try printJSON(tables); return }
            print("splice bench emu: mix_loop(\(iterations)) x \(runs) calls per round, best of \(rounds) rounds")
            for t in tables {
                let bound = t.spliceCallTimeoutMicroseconds == 0 ? "no time bound (as bare)" : "the default \(t.spliceCallTimeoutMicroseconds / 1_000_000) s time bound"
                print("\nSplice calls with \(bound); bare Unicorn with none")
                print("isa       insns/call    splice Minsn/s   bare Minsn/s   ratio (target >= 0.90)")
                for r in t.rows {
                    let line = [r.architecture.padding(toLength: 9, withPad: " ", startingAt: 0),
                                String(r.splice.instructionsPerCall).padding(toLength: 13, withPad: " ", startingAt: 0),
                                String(format: "%14.1f", r.splice.instructionsPerSecond / 1e6),
                                String(format: "%14.1f", r.bare.instructionsPerSecond / 1e6),
                                String(format: "%9.3f", r.ratio)]
                    print(line.joined(separator: " "))
                }
            }
        }
    }
}
