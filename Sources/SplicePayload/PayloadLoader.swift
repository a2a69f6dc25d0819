import SpliceBytes
import SpliceELF
import SpliceMachine
import SplicePatching

/// A payload placed in guest memory, relocated, ready to apply.
public final class LoadedPayload {
    public struct Resolved: Sendable {
        public var function: Payload.Function
        public var old: ELFSymbol
        /// The new function's (global) entry in guest memory; nil for a NOP patch.
        public var newAddress: UInt64?
    }

    public let payload: Payload
    public let regions: [GuestRegion]
    /// Guest address of each placed section, by the payload's section index.
    public let sectionAddresses: [Int: UInt64]
    /// The payload's own symbols (for payloads that depend on it).
    public let exports: [String: UInt64]
    public let toc: UInt64?
    public let functions: [Resolved]
    public let hooks: [PayloadFormat.HookKind: [UInt64]]
    public internal(set) var redirects: [ActiveRedirect] = []
    /// Applied: its redirects are in (or its apply action hook succeeded).
    public internal(set) var isApplied = false
    /// Orders applied payloads, newest highest (whose state `splice_state_prev` gives).
    var appliedSequence = 0
    /// Guest address of each of its `.livepatch.states` records, by state id.
    public var stateRecords: [UInt64: UInt64] {
        guard let section = payload.elf.section(named: PayloadFormat.statesSection),
              let base = sectionAddresses[section.index] else { return [:] }
        return Dictionary(uniqueKeysWithValues: payload.states.map { ($0.id, base + UInt64($0.offset)) })
    }
    /// The redirects the payload makes, as a batch for the patcher (made once: REPLACE
    /// applies the same payload many times).
    public private(set) lazy var items: [LivePatcher.BatchItem] = {
        let file = payload.name.split(separator: "/").last.map(String.init) ?? ""
        return functions.map {
            .init(function: $0.function.name, target: $0.function.target(newAddress: $0.newAddress),
                  label: file + ":" + $0.function.name)
        }
    }()

    init(payload: Payload, regions: [GuestRegion], sectionAddresses: [Int: UInt64], exports: [String: UInt64],
         toc: UInt64?, functions: [Resolved], hooks: [PayloadFormat.HookKind: [UInt64]]) {
        self.payload = payload
        self.regions = regions
        self.sectionAddresses = sectionAddresses
        self.exports = exports
        self.toc = toc
        self.functions = functions
        self.hooks = hooks
    }
}

/// The common payload loader (as Xen's livepatch: copy sections, resolve symbols, relocate), with
/// the checks of the xSplice design. Everything is decided and relocated in host memory first;
/// guest memory is written only when all of it succeeded.
public final class PayloadLoader {
    public let patcher: LivePatcher
    public internal(set) var payloads: [LoadedPayload] = []
    /// Functions no payload may patch, besides the runtime's own.
    public var denyList: Set<String> = []
    /// The image's entry point: never patched (nor, by the backend's word, the functions
    /// its ISA's tracing calls: `PatchBackend.runtimeSymbols`).
    public static let entryPoint = "_start"
    /// The most guest memory one payload may ask for, and the largest section alignment:
    /// far above any real payload, low enough that no sum of sizes can overflow.
    public static let maximumPlacedBytes: UInt64 = 64 << 20
    public static let maximumAlignment: UInt64 = 1 << 16

    public var machine: Machine { patcher.machine }
    var image: LoadedImage { patcher.image }
    var backend: any PatchBackend { patcher.backend }

    /// Where the actions go: the patcher itself (the rendezvous engine) unless set to
    /// another engine on the same patcher (the non-stop engine). Placing and removing a
    /// payload's memory always goes through the patcher's executor: Unicorn changes the
    /// memory map only of engines that are not running.
    public var engine: any PatchEngine {
        didSet { precondition(engine.patcher === patcher, "an engine on another patcher") }
    }
    /// Shadow variables, payload states and the host calls that reach them.
    public let services: PayloadServices

    /// A loader for `patcher`'s machine. It maps the host calls payloads use, so the vCPUs
    /// must not be running yet.
    public init(patcher: LivePatcher) throws {
        self.patcher = patcher
        engine = patcher
        services = try PayloadServices(patcher: patcher)
    }

    /// Whether the running bytes at the start of `old` are the ones a payload expects.
    /// Bytes live patching itself rewrote are compared as the image file has them, every
    /// other byte as it is in memory: the writes of the redirects active on the function
    /// (a payload may stack on another), and a compiler-reserved site the runtime keeps in
    /// its own state (an mcount call or fentry slot is a nop while unused).
    func matchesExpected(_ found: [UInt8], _ expected: [UInt8], of old: ELFSymbol) throws -> Bool {
        guard found != expected else { return true }
        var owned = patcher.redirects(of: old.name).flatMap { r in
            r.plan.writes.filter { $0.kind == .code }.map { ($0.address, $0.address + UInt64($0.bytes.count)) }
        }
        // A function with no patch site is compared byte for byte (the record's own check
        // refuses it next, with the backend's reason).
        if let site = try? patcher.site(of: old.name), site.isReservedSlot {
            owned.append((site.address, site.address + UInt64(site.room)))
        }
        let file = try image.elf.bytes(of: old)
        for (i, byte) in found.enumerated() where byte != expected[i] {
            let address = old.value + UInt64(i)
            guard i < file.count, owned.contains(where: { $0.0 <= address && address < $0.1 }), file[i] == expected[i] else { return false }
        }
        return true
    }

    // MARK: Life cycle

    /// Redirects every function of the payload, all or none (or, when the payload has an
    /// apply action hook, runs that instead). A pre-apply hook that returns nonzero vetoes
    /// the apply before anything is written; a failing post-apply hook undoes it.
    public func apply(_ p: LoadedPayload) throws {
        guard !p.isApplied else { return }
        try checkStates(of: p, replacing: false)
        try runHooks(.preapply, of: p)
        try putIn(p)
        markApplied([p], true)
        do { try runHooks(.postapply, of: p) } catch {
            try undo(p, error) {
                try takeOut(p)
                markApplied([p], false)
            }
        }
    }

    /// REPLACE: reverts every applied payload and applies `p`, in one action (one
    /// rendezvous while vCPUs run, or one non-stop sequence). As with Xen's REPLACE and
    /// Linux's cumulative patches, `p` takes over: its pre- and post-apply hooks run, the
    /// replaced payloads' pre- and post-revert hooks do not (what they set up, `p` now
    /// owns; `splice_state_prev` hands it their states). `p` must carry every state of
    /// the payloads it replaces, at the same or a newer version.
    ///
    /// Payloads with action hooks take their change out with their revert hook (newest
    /// first) before the engine action, and `p`'s apply hook runs after it. Either all of
    /// it happens or nothing: whatever fails after the first change (a revert or apply
    /// hook, the engine action, the post-apply hook) puts back what was there.
    public func replace(with p: LoadedPayload) throws {
        let others = payloads.filter { $0.isApplied && $0 !== p }.sorted { $0.appliedSequence < $1.appliedSequence }
        try checkStates(of: p, replacing: true)
        try runHooks(.preapply, of: p)
        let byHook = others.filter { $0.hooks[.revert] != nil }
        let native = others.filter { $0.hooks[.revert] == nil }
        let nativeItems = native.map(\.items)
        var reverted: [LoadedPayload] = []
        do {
            for o in byHook.reversed() {
                try takeOut(o)
                reverted.append(o)
            }
            p.redirects = try engine.replace(reverting: native.flatMap { $0.redirects.map(\.id) },
                                             with: p.hooks[.apply] == nil ? items(of: p) : [])
        } catch {
            try undo(p, error) { for o in reverted.reversed() { try putIn(o) } }
        }
        for o in native { o.redirects = [] }
        markApplied(others, false)
        var hookApplied = false
        do {
            if p.hooks[.apply] != nil {
                try runHooks(.apply, of: p)
                hookApplied = true
            }
            markApplied([p], true)
            try runHooks(.postapply, of: p)
        } catch {
            try undo(p, error) {
                if hookApplied { try runHooks(.revert, of: p) }
                var back = try engine.replace(reverting: p.redirects.map(\.id), with: nativeItems.flatMap { $0 })[...]
                p.redirects = []
                markApplied([p], false)
                for (o, items) in zip(native, nativeItems) {
                    o.redirects = Array(back.prefix(items.count))
                    back = back.dropFirst(items.count)
                }
                for o in byHook { try putIn(o) }
                markApplied(others, true)
            }
        }
    }

    /// Puts `p`'s change in: its apply action hook, or its redirects (one engine action).
    /// Action hooks come in pairs (`Payload` refuses one alone), so `takeOut` is the inverse.
    private func putIn(_ p: LoadedPayload) throws {
        if p.hooks[.apply] != nil {
            try runHooks(.apply, of: p)
        } else if !p.items.isEmpty {
            p.redirects = try engine.apply(batch: items(of: p))
        }
    }

    /// Takes `p`'s change out: its revert action hook, or its redirects (one engine action).
    private func takeOut(_ p: LoadedPayload) throws {
        if p.hooks[.revert] != nil {
            try runHooks(.revert, of: p)
        } else if !p.redirects.isEmpty {
            _ = try engine.replace(reverting: p.redirects.map(\.id), with: [])
        }
        p.redirects = []
    }

    /// Linux's klp_is_patch_compatible: every state of an applied payload must be in `p`
    /// at the same or a newer version; a REPLACE must carry all of them, an apply only the
    /// ones it has.
    func checkStates(of p: LoadedPayload, replacing: Bool) throws {
        for o in payloads where o.isApplied && o !== p {
            for old in o.payload.states {
                let new = p.payload.states.first { $0.id == old.id }
                if let new, new.version >= old.version { continue }
                if new == nil && !replacing { continue }
                let has = new.map { "has version \($0.version)" } ?? "does not have it"
                throw PayloadError(p.payload.name, .incompatibleState(
                    "state \(old.id) is at version \(old.version) (payload \(o.payload.name)) and this payload \(has): "
                    + "it is not compatible with the applied payloads"))
            }
        }
    }

    /// Sets the payloads' applied flags and the states table `splice_state_prev` reads.
    private func markApplied(_ ps: [LoadedPayload], _ applied: Bool) {
        for p in ps {
            p.isApplied = applied
            if applied {
                appliedCount += 1
                p.appliedSequence = appliedCount
            }
        }
        var table: [UInt64: UInt64] = [:]
        for p in payloads.filter(\.isApplied).sorted(by: { $0.appliedSequence < $1.appliedSequence }) {
            table.merge(p.stateRecords) { $1 }
        }
        services.states.set(table)
    }
    private var appliedCount = 0

    /// After a post hook failed: runs `rollback` and rethrows the hook's failure, or says
    /// the action could not be taken back either (the payloads stay as the action left
    /// them, and their state says so).
    private func undo(_ p: LoadedPayload, _ failure: Error, _ rollback: () throws -> Void) throws -> Never {
        do { try rollback() } catch {
            throw PayloadError(p.payload.name, .patch("\(failure); taking the action back failed too, so it stays done: \(error)"))
        }
        throw failure
    }

    /// The redirects `p` makes, as a batch for the patcher.
    public func items(of p: LoadedPayload) -> [LivePatcher.BatchItem] { p.items }

    /// Reverts the payload's redirects, all in one action (or runs its revert action
    /// hook); refused unless all of them are on top. A pre-revert hook returning nonzero
    /// vetoes it.
    public func revert(_ p: LoadedPayload) throws {
        guard p.isApplied else { return }
        for r in p.redirects {
            if let top = patcher.redirects(of: r.function).last, top.id != r.id {
                throw PayloadError(p.payload.name, .patch("\(r.function) has a newer redirect (#\(top.id)) on top: revert that payload first"))
            }
        }
        try runHooks(.prerevert, of: p)
        try takeOut(p)
        markApplied([p], false)
        do { try runHooks(.postrevert, of: p) } catch {
            try undo(p, error) {
                try putIn(p)
                markApplied([p], true)
            }
        }
    }

    /// Removes a reverted payload from guest memory.
    public func unload(_ p: LoadedPayload) throws {
        guard !p.isApplied else { throw PayloadError(p.payload.name, .patch("is applied: revert it first")) }
        if let dependent = payloads.first(where: { $0.payload.dependencies.contains(p.payload.buildID) }) {
            throw PayloadError(p.payload.name, .patch("payload \(dependent.payload.name) depends on it"))
        }
        try runHooks(.unload, of: p)
        try patcher.executor.execute { _ in for r in p.regions { self.machine.unmap(r) } }
        payloads.removeAll { $0 === p }
    }

    /// Calls each hook of `kind` in the guest, in order, where the engine says it is safe.
    /// A hook that returns a result (pre and action hooks) and returns nonzero stops the
    /// action: a veto, or an action hook's failure, with its value.
    func runHooks(_ kind: PayloadFormat.HookKind, of p: LoadedPayload) throws {
        for address in p.hooks[kind] ?? [] {
            let result: Int64
            do {
                result = try engine.callGuest(CallEntry(kind: .global, address: address), [])
            } catch {
                throw PayloadError(p.payload.name, .patch("\(kind.rawValue) hook at \(hex(address)) failed: \(error)"))
            }
            let rc = Int32(truncatingIfNeeded: result)
            if kind.returnsResult && rc != 0 {
                throw PayloadError(p.payload.name, .hookRefused(hook: kind.rawValue, address: address, rc: rc))
            }
        }
    }
}
