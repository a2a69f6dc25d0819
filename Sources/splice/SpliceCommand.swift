import ArgumentParser
import Foundation
import SpliceArchitectures
import SpliceBytes
import SpliceDaemon
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceHarness
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceScenarios

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
    @Option(help: "The patch backend to use; default: the image's machine.") var arch: ISAName?
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
        if let t = report.siteTable {
            print("site table (\(t.source)): \(t.entries) sites, \(t.zeroEntries) zero entries; Splice finds \(t.found) "
                  + String(format: "(%.2f%%)", t.entries == 0 ? 100 : 100 * Double(t.found) / Double(t.entries))
                  + ", \(t.missing.count) missing; \(t.undiscovered.count) of them discovery alone would miss; \(t.extra.count) extra")
            for (what, list) in [("missing", t.missing), ("undiscovered", t.undiscovered), ("extra", t.extra)] {
                for e in list.prefix(10) {
                    print("  \(what) \(hex(e.address)) \(e.location ?? "-") [\(e.section ?? "no section")]: \(e.reason)")
                }
                if list.count > 10 { print("  … \(list.count - 10) more \(what) (--json lists them all)") }
            }
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
            let backend = try arch.map { try Architectures.backend(named: $0.name) }
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

/// Parses a signed integer in decimal or 0x-hex (CallArgument's integer form).
func parseInteger(_ text: String) throws -> Int64 {
    guard case let .integer(v)? = try? CallArgument(parsing: text) else { throw CommandError(description: "not an integer: \(text)") }
    return v
}

struct Call: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Call a function of an ELF executable inside the emulated machine.",
        discussion: "Loads the image's PT_LOAD segments, follows the ISA's ABI (SysV x86-64, ELFv2 ppc64le), and prints the return value and the number of guest instructions executed. No entry point is run.")

    @Argument(help: "A static ELF executable (x86-64 or ppc64le).") var image: String
    @Argument(help: "The function's symbol name.") var function: String
    @Argument(parsing: .allUnrecognized, help: ArgumentHelp(
        "Arguments: an integer (42, -1, 0x2a), s:TEXT (a NUL-terminated string in guest memory; its address is passed), "
            + "x:HEX (those bytes), o:N (N zeroed bytes), &SYMBOL (a symbol's address).", valueName: "argument"))
    var arguments: [String] = []
    @Option(help: "Which entry to use: global or local (ppc64le functions that use the TOC have both).")
    var entry: EntryKind = .global
    @Option(help: "Wall-clock limit in milliseconds.") var timeoutMs: UInt64 = 10_000
    @Option(help: "Instruction limit (0: none).") var maxInstructions = 0
    @Flag(help: "Print JSON.") var json = false

    struct Output: Codable {
        var image: String, architecture: String, function: String, entry: String, entryAddress: UInt64
        /// The values passed (a buffer's or symbol's address for those forms).
        var arguments: [Int64]
        var result: Int64, resultHex: String, instructions: UInt64?
        /// Each buffer an argument placed, with its bytes after the call.
        var buffers: [BufferOutput]
    }

    struct BufferOutput: Codable {
        var argument: Int, address: UInt64, hex: String
    }

    func validate() throws {
        for a in arguments { do { _ = try CallArgument(parsing: a) } catch { throw ValidationError("\(error)") } }
    }

    func run() throws {
        let args = try arguments.map(CallArgument.init(parsing:))
        let (result, buffers, values, arch) = try reportingErrors { () -> (CallResult, [CallBuffer], [Int64], String) in
            let loaded = try loadImage(path: image)
            let (r, values, buffers) = try loaded.call(function, arguments: args, entry: entry, limits: .init(
                timeoutMicroseconds: timeoutMs * 1000, instructions: maxInstructions))
            return (r, buffers, values, loaded.machine.architecture.name)
        }
        let out = Output(image: image, architecture: arch, function: function, entry: result.entry.kind.rawValue,
                         entryAddress: result.entry.address, arguments: values, result: result.signedValue,
                         resultHex: hex(result.value), instructions: result.instructions,
                         buffers: buffers.map { BufferOutput(argument: $0.argument, address: $0.address, hex: $0.bytes.hexDigits) })
        if json { try printJSON(out); return }
        let call = "\(function)(\(args.map(\.description).joined(separator: ", ")))"
        print("\(call) = \(out.result)  [\(out.resultHex)]")
        print("  \(arch), \(out.entry) entry \(hex(out.entryAddress)), \(out.instructions.map(String.init) ?? "?") guest instructions")
        for b in out.buffers { print("  argument \(b.argument + 1) at \(hex(b.address)): \(Array(b.hex.utf8).count / 2) bytes \(b.hex)") }
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
        try reportingErrors {
            let demo = Demo()
            try demo.run()
            try demo.liveMachineScenario(dir: try Samples.directory())
        }
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
    @Option(help: "A function call to run after applying: NAME or NAME=ARG,ARG (repeatable); each ARG as splice call takes it (42, s:TEXT, x:HEX, o:N, &SYMBOL).")
    var call: [String] = []
    @Option(help: "An oracle output file: every case is run and compared.") var oracle: String?
    @Flag(help: "Revert and unload everything at the end and check the code bytes are as before.") var revert = false

    func run() throws {
        try reportingErrors {
            let loaded = try loadImage(path: image)
            let loader = try PayloadLoader(patcher: try LivePatcher(image: loaded, backend: try Architectures.backend(for: loaded.elf)))
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
                let args = try (parts.count > 1 ? parts[1].split(separator: ",").map(String.init) : []).map(CallArgument.init(parsing:))
                let (r, _, buffers) = try loaded.call(String(parts[0]), arguments: args)
                print("\(parts[0])(\(args.map(\.description).joined(separator: ", "))) = \(r.signedValue)")
                for b in buffers { print("  argument \(b.argument + 1) at \(hex(b.address)): \(b.bytes.hexBytes)") }
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
