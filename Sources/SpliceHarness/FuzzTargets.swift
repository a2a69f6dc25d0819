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

/// What the fuzzers feed bytes to (fuzz/, scripts/fuzz.sh). Each accepts any input:
/// bad input must come back as a thrown error, never a crash, a hang or a leak. The
/// tests replay the committed corpus through the same functions.
public enum FuzzTargets {
    /// The ELF reader, and every accessor a caller may use on what it returns.
    public static func elf(_ bytes: [UInt8]) {
        guard let elf = try? ELFFile(bytes: bytes, name: "fuzz") else { return }
        var sink = elf.sections.count &+ elf.segments.count &+ elf.notes.count
        for s in elf.symbols {
            sink &+= s.name.utf8.count
            sink &+= (try? elf.bytes(of: s).count) ?? 0
            sink &+= elf.bytes(at: s.value, count: 16)?.count ?? 0
        }
        for r in elf.relocationSections { sink &+= r.entries.count }
        sink &+= elf.buildID?.count ?? 0
        sink &+= elf.functions.count
        _ = elf.section(named: ".text")
        _ = elf.symbol(named: "scaled")
        blackHole(sink)
    }

    /// The payload path of an upload: the appended signature split off, the payload
    /// parsed and checked, then placed, resolved, relocated and verified against the
    /// sample image of its ISA (and unloaded, so every input starts from the same machine).
    /// A mutated payload no longer hashes to its build id, so it is refused at once; the
    /// harness tries it as it is (that check) and then sealed again (`PayloadFormat.sealed`),
    /// as a hostile author would, to reach everything after it.
    public static func payload(_ bytes: [UInt8]) {
        guard let body = try? PayloadSignature.split(bytes, name: "fuzz").payload else { return }
        _ = try? Payload(bytes: body, name: "fuzz")
        guard let sealed = try? PayloadFormat.sealed(body), let payload = try? Payload(bytes: sealed, name: "fuzz") else { return }
        guard let loader = loaders[payload.elf.header.machine] else { return }
        if let loaded = try? loader.load(payload), (try? loader.unload(loaded)) == nil {
            // Its unload hook failed, so it stays loaded (a failed action changes
            // nothing): the next input starts from fresh machines.
            loaders = makeLoaders()
        }
    }

    /// The control protocol: a stream of request lines, as an admitted client's, each
    /// through the daemon's decoder, validation and dispatch into a live machine, each action
    /// waited for before the next line. Afterwards every payload the input left is reverted
    /// and unloaded, so each input starts from the same machine. The machine's one vCPU runs
    /// no workload: each action's rendezvous then costs microseconds instead of a wait for a
    /// running vCPU thread, so the fuzzer explores requests, not the host scheduler (the
    /// daemon with running vCPUs is what LiveMachineCLITests and RedTeamTests drive).
    public static func control(_ bytes: [UInt8]) {
        let machine = dispatcher.machine
        for line in bytes.split(separator: 10, omittingEmptySubsequences: true).prefix(16) {
            let (reply, _) = dispatcher.respond(to: Array(line), from: "fuzz")
            blackHole((try? JSONEncoder().encode(reply))?.count ?? 0)
            machine.waitUntilIdle()
        }
        for s in machine.list(start: 0, count: Int.max).statuses {
            if s.state == .applied { try? machine.perform(.revert, id: s.id) }
            try? machine.perform(.unload, id: s.id)
        }
    }

    nonisolated(unsafe) static var dispatcher: ControlDispatcher = {
        guard let path = try? Samples.path(Samples.x86_64),
              let machine = try? LiveMachine(configuration: .init(image: path, cpus: 1, workload: nil))
        else { fatalError("the fuzz target needs the sample images (run from the checkout or set SPLICE_SAMPLES)") }
        return ControlDispatcher(machine: machine, log: { blackHole($0.utf8.count) })
    }()

    /// One machine per ISA: the sample image with a patcher and loader.
    nonisolated(unsafe) static var loaders = makeLoaders()

    static func makeLoaders() -> [UInt16: PayloadLoader] {
        var out: [UInt16: PayloadLoader] = [:]
        for isa in Architectures.backends.map(\.architecture.name) {
            guard let path = try? Samples.path(Samples.kernel(isa: isa)), let elf = try? ELFFile(contentsOf: path),
                  let arch = try? Architectures.forELF(elf), let machine = try? Machine(architecture: arch),
                  let loaded = try? machine.load(elf), let backend = try? Architectures.backend(for: elf),
                  let patcher = try? LivePatcher(image: loaded, backend: backend),
                  let loader = try? PayloadLoader(patcher: patcher)
            else { fatalError("the fuzz target needs the sample images (run from the checkout or set SPLICE_SAMPLES)") }
            out[elf.header.machine] = loader
        }
        return out
    }

    @inline(never) static func blackHole(_ v: Int) { if v == .min { print("") } }
}
