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
/// `splice bench redirect`: what one redirected call costs in guest instructions, per
/// redirect method, measured by running both the redirected function and its target.
public enum RedirectBenchmark {
    public struct Row: Codable, Sendable {
        public var name: String
        public var method: String
        public var targetInstructions: UInt64
        public var redirectedInstructions: UInt64
        public var overhead: Int { Int(redirectedInstructions) - Int(targetInstructions) }
        public var goal: String
    }


    struct Case {
        var name: String, image: String, function: String, target: String, arguments: [Int64]
        var farCode: Bool = false
        var goal: String
    }


    public static func run(samples: String) throws -> [Row] {
        let cases = [
            Case(name: "x86_64 near: scaled -> checked_double", image: Samples.x86_64, function: "scaled",
                 target: "checked_double", arguments: [10], goal: "+1"),
            Case(name: "x86_64 after endbr64", image: Samples.x86_64, function: "checked_double", target: "scaled",
                 arguments: [10], goal: "+2 (the kept endbr64, then jmp)"),
            Case(name: "x86_64 fentry slot", image: Samples.x86_64Fentry, function: "scaled", target: "checked_double",
                 arguments: [10], goal: "+1"),
            Case(name: "x86_64 patchable nops", image: "kernel-x86_64-pfe.elf", function: "scaled",
                 target: "checked_double", arguments: [10], goal: "+1"),
            Case(name: "x86_64 far, absolute jump", image: Samples.x86_64, function: "fib", target: "far",
                 arguments: [10], farCode: true, goal: "+1"),
            Case(name: "x86_64 far, via a slot", image: Samples.x86_64, function: "scaled", target: "far",
                 arguments: [10], farCode: true, goal: "+2"),
        ]
        return try cases.map { c in try measure(c, samples: samples) } + acrossTOCs(samples: samples)
    }

    /// ppc64le: scaled redirected to scaled_v2 in the patch image (another TOC), entered
    /// at its local entry (r2 = TOC: a local call) and at its global entry (r12: a global
    /// call), against calling scaled_v2 directly.
    static func acrossTOCs(samples: String) throws -> [Row] {
        var rows: [Row] = []
        let kernelELF = try ELFFile(contentsOf: samples + "/" + Samples.ppc64le)
        let base = try Architectures.backend(for: kernelELF)
        for strategy in base.returnStrategies {
            for kind in [EntryKind.local, .global] {
                let backend = try base.using(returnStrategy: strategy)
                let machine = try Machine(architecture: backend.architecture)
                let kernel = try machine.load(kernelELF)
                let patch = try machine.load(try ELFFile(contentsOf: samples + "/patch-ppc64le.elf"))
                let patcher = try LivePatcher(image: kernel, backend: backend)
                let active = try patcher.redirect("scaled", toAddress: try patch.function(named: "scaled_v2").value,
                                                  label: "scaled_v2")
                let direct = try patch.call("scaled_v2", [10])
                let redirected = try kernel.call("scaled", [10], entry: kind)
                guard redirected.value == direct.value else {
                    throw BenchmarkError(description: "ppc64le \(kind) call returned \(redirected.signedValue), scaled_v2 \(direct.signedValue)")
                }
                rows.append(Row(name: "ppc64le \(kind.rawValue) call, \(strategy)", method: active.plan.method,
                                targetInstructions: direct.instructions ?? 0,
                                redirectedInstructions: redirected.instructions ?? 0,
                                goal: kind == .local && strategy == "frameless" ? "<= +40" : "-"))
            }
        }
        return rows
    }

    static func measure(_ c: Case, samples: String) throws -> Row {
        let image = try loadImage(path: samples + "/" + c.image)
        let patcher = try LivePatcher(image: image, backend: try Architectures.backend(for: image.elf))
        let active: ActiveRedirect
        let direct: CallResult
        if c.farCode {
            // A position-independent double placed far away.
            let code = patcher.backend.fixtures.double()
            active = try patcher.redirect(c.function, toCode: code, at: 0x2_0000_0000, label: "far double")
            direct = try image.call(CallEntry(kind: .global, address: 0x2_0000_0000), c.arguments)
        } else {
            active = try patcher.redirect(c.function, to: c.target)
            direct = try image.call(c.target, c.arguments)
        }
        let redirected = try image.call(c.function, c.arguments)
        guard redirected.value == direct.value else {
            throw BenchmarkError(description: "\(c.name): the redirected call returned \(redirected.signedValue), the target \(direct.signedValue)")
        }
        return Row(name: c.name, method: active.plan.method, targetInstructions: direct.instructions ?? 0,
                   redirectedInstructions: redirected.instructions ?? 0, goal: c.goal)
    }
}
