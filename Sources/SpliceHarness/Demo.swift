import SpliceArchitectures
import SpliceBytes
import SpliceDisassembly
import SpliceELF
import SpliceMachine
import SplicePatching
import SplicePayload
import Foundation

/// The main demo on the bundled samples, for each ISA with a backend: prologues and patch
/// sites, calls through each entry, a fault, every call checked against the compiled
/// oracle, payloads built from the sample patches, a live patch taken back byte for byte,
/// and the demo scenario on a running machine. Each line goes to `say`; a disagreement
/// throws after its line.
public struct Demo {
    public var say: (String) -> Void

    public init(say: @escaping (String) -> Void = { print($0) }) { self.say = say }

    func printFunction(_ report: ImageReport, _ name: String) {
        guard let f = report.functions.first(where: { $0.name == name }) else { return }
        say("  \(name) at \(hex(f.address)), \(f.size) bytes" + (f.localEntry.map { ", local entry \(hex($0))" } ?? ""))
        for s in f.sites { say("    site \(s.kind.rawValue) \(hex(s.address)): \(s.note)") }
        for i in f.prologue { say("      \(hex(i.address)):  \(i.bytes.padding(toLength: 15, withPad: " ", startingAt: 0)) \(i.text)") }
    }

    public func run() throws {
        do {
            let dir = try Samples.directory()
            // Per sample kernel, the functions whose prologue and sites are worth a look (one
            // from a sibling image built with other flags).
            let shown: [String: [(String, String)]] = [
                Samples.x86_64: [(Samples.x86_64, "identity"), (Samples.x86_64, "checked_double"),
                                 (Samples.x86_64Fentry, "checked_double")],
                Samples.ppc64le: [(Samples.ppc64le, "scaled"), (Samples.ppc64le, "add")],
            ]
            let plans = Architectures.backends.map(\.architecture.name).map { isa in
                (image: Samples.kernel(isa: isa), oracle: "oracle-\(isa).txt", show: shown[Samples.kernel(isa: isa)] ?? [])
            }
            for plan in plans {
                let path = dir + "/" + plan.image
                let report = try Inspector.report(try ELFFile(contentsOf: path), prologueInstructions: 4)
                say("== \(plan.image): \(report.architecture), build id \(report.buildID ?? "none")")
                for (image, name) in plan.show {
                    let r = image == plan.image ? report : try Inspector.report(try ELFFile(contentsOf: dir + "/" + image), prologueInstructions: 3)
                    if image != plan.image { say("  (\(image))") }
                    printFunction(r, name)
                }
                let loaded = try loadImage(path: path)
                let entries = try loaded.entries(of: "scaled")
                if entries.count > 1 {
                    say("  scaled(10) through each entry:")
                    for e in entries {
                        let r = try loaded.call(e, [10])
                        let r2 = e.kind == .local ? "r2 = TOC \(hex(e.tocPointer ?? 0))" : "r2 poisoned, r12 = \(hex(e.address))"
                        say("    \(e.kind.rawValue) \(hex(e.address)) (\(r2)): \(r.signedValue) in \(r.instructions ?? 0) instructions")
                    }
                }
                do {
                    _ = try loaded.call("peek", [0xdead_0000])
                } catch {
                    say("  peek(0xdead0000): \(error)")
                }
                let cases = try OracleCase.parse(file: dir + "/" + plan.oracle)
                var agreed = 0
                for c in cases {
                    let r = try loaded.call(c.function, c.arguments)
                    let same = r.signedValue == c.expected
                    if same { agreed += 1 }
                    say("  \(same ? "ok  " : "DIFF") \(c.function)(\(c.arguments.map(String.init).joined(separator: ", "))) = \(r.signedValue)"
                          + "  oracle \(c.expected)  \(r.instructions ?? 0) insns")
                }
                say("  \(agreed)/\(cases.count) calls agree with the \(plan.oracle.dropLast(4)) oracle\n")
                if agreed != cases.count {
                    throw Mismatch(description: "\(plan.image): \(cases.count - agreed) calls disagree with the oracle")
                }
                try payloads(dir: dir, image: path, isa: report.architecture)
                let backend = try Architectures.backend(for: loaded.elf)
                let patchImage = dir + "/patch-\(report.architecture).elf"
                if FileManager.default.fileExists(atPath: patchImage) {
                    try livePatchAcrossTOCs(kernel: path, patch: patchImage)
                } else {
                    try livePatch(loaded, backend)
                }
            }
        }
    }
}

extension Demo {
    /// Redirects scaled to checked_double in the running machine, calls it three ways,
    /// reverts, and checks the code is byte-identical to before.
    func livePatch(_ image: LoadedImage, _ backend: any PatchBackend) throws {
        let patcher = try LivePatcher(image: image, backend: backend)
        let codeHash = { () throws -> String in
            var h: UInt64 = 0xcbf2_9ce4_8422_2325 // FNV-1a over every executable byte
            for r in image.machine.memory.regions where r.permissions.contains(.execute) {
                for b in try image.machine.memory.read(r.base, count: Int(r.size)) { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            }
            return String(h, radix: 16)
        }
        func calls() throws -> String {
            let cases: [(String, [Int64])] = [("scaled", [10]), ("apply_unary", [0, 10]), ("scaled_twice", [10])]
            var parts: [String] = []
            for (name, args) in cases {
                let text = args.map { String($0) }.joined(separator: ", ")
                parts.append("\(name)(\(text)) = \(try image.call(name, args).signedValue)")
            }
            return parts.joined(separator: ", ")
        }
        say("  live patch: redirect scaled -> checked_double (\(backend.architecture.name))")
        let hashBefore = try codeHash()
        say("    before: \(try calls())   code hash \(hashBefore)")
        let r = try patcher.redirect("scaled", to: "checked_double")
        let names = image.elf.functionNames
        for i in try image.machine.disassemble(at: r.plan.site.address, count: 1) {
            say("    site \(hex(i.address)): \(i.bytesHex)  \(Inspector.annotate(i.text, names))   (\(r.plan.method), undo \(r.undo[0].bytes.hexBytes))")
        }
        say("    after:  \(try calls())")
        try patcher.revert("scaled")
        let hashAfter = try codeHash()
        say("    revert: \(try calls())   code hash \(hashAfter) \(hashAfter == hashBefore ? "(identical)" : "(DIFFERENT)")\n")
        if hashAfter != hashBefore { throw Mismatch(description: "code differs after revert") }
    }
}

extension Demo {
    /// Every sample source patch: built into a payload, loaded and applied in a fresh
    /// machine, checked against the patched program's oracle, reverted.
    func payloads(dir: String, image: String, isa: String) throws {
        let names = ["01-greeting-len-fix", "02-scaled-plus-two", "03-greeting-sum-helper", "05-hooks"]
        say("  payloads built by splice build from samples/patches/*.patch:")
        for name in names {
            let pd = "\(dir)/patches/\(name)"
            let target = try ELFFile(contentsOf: image)
            let backend = try Architectures.backend(for: target)
            let (bytes, report) = try Samples.payload(original: name, patched: name, isa: isa, target: target, backend: backend,
                                                      directory: dir)
            let loaded = try loadImage(path: image)
            let loader = try PayloadLoader(patcher: try LivePatcher(image: loaded, backend: backend))
            let p = try loader.load(try Payload(bytes: bytes, name: name))
            try loader.apply(p)
            let cases = try OracleCase.parse(file: "\(pd)/oracle-\(isa).txt")
            let agree = try cases.filter { try loaded.call($0.function, $0.arguments).signedValue == $0.expected }.count
            try loader.revert(p)
            try loader.unload(p)
            let extra = report.newFunctions.isEmpty ? "" : " + new \(report.newFunctions.joined(separator: ", "))"
            say("    \(name): \(bytes.count) bytes, changes \(report.changed.joined(separator: ", "))\(extra); "
                  + "\(agree)/\(cases.count) calls agree with the patched oracle; reverted and unloaded")
            if agree != cases.count { throw Mismatch(description: "\(name) on \(isa) disagrees with its oracle") }
        }
        say("")
    }

    /// For a sample with a second image that has its own TOC (ppc64le's patch image):
    /// scaled redirected to scaled_v2 in it, with each return strategy the backend offers;
    /// r2 after a local call; the sibling-call hazard.
    func livePatchAcrossTOCs(kernel: String, patch: String) throws {
        let kernelELF = try ELFFile(contentsOf: kernel)
        let base = try Architectures.backend(for: kernelELF)
        for strategy in base.returnStrategies {
            let backend = try base.using(returnStrategy: strategy)
            let machine = try Machine(architecture: backend.architecture)
            let k = try machine.load(kernelELF)
            let p = try machine.load(try ELFFile(contentsOf: patch))
            let patcher = try LivePatcher(image: k, backend: backend)
            let toc = k.elf.symbol(named: ".TOC.")!.value
            let observed = k.elf.symbol(named: "observed_toc")!.value
            say("  live patch (\(strategy)): redirect scaled -> scaled_v2 (patch image, TOC \(hex(p.elf.symbol(named: ".TOC.")!.value)))")
            let r = try patcher.redirect("scaled", toAddress: try p.function(named: "scaled_v2").value, label: "scaled_v2")
            let names = k.elf.functionNames.merging(patcher.runtime?.symbols ?? [:]) { a, _ in a }
            for w in r.plan.writes {
                let text = w.kind == .data ? "= \(hex(try machine.memory.readUInt64(w.address)))"
                    : (try machine.disassemble(at: w.address, count: 1).first.map { Inspector.annotate($0.text, names) } ?? "")
                say("    \(hex(w.address)): \(text)   (\(w.purpose))")
            }
            try machine.memory.writeUInt64(observed, 0)
            let local = try k.call("toc_after_local_call", [10])
            let r2 = try machine.memory.readUInt64(observed)
            say("    global call apply_unary(0, 10) = \(try k.call("apply_unary", [0, 10]).signedValue); "
                  + "local call from toc_after_local_call(10) = \(local.signedValue), r2 after it \(hex(r2)) "
                  + (r2 == toc ? "(the kernel's TOC)" : "(WRONG: the kernel's TOC is \(hex(toc)))"))
            let sibling = try k.function(named: "sibling_scaled").value
            let hazard = try p.call("module_call", [Int64(sibling), 10]).signedValue
            say("    sibling-call hazard: module_call(sibling_scaled, 10) = \(hazard) "
                  + (hazard == 1_001_055 ? "(correct)" : "(expected 1001055: the module's TOC save slot was overwritten)"))
            try patcher.revert("scaled")
            say("    revert: scaled(10) = \(try k.call("scaled", [10]).signedValue)\n")
        }
    }
}
