import SpliceArchitectures
import SpliceBytes
import SpliceDaemon
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
import Foundation

/// A before/after view of one redirect, made by really applying it in a machine: the
/// bytes and disassembly at the function, everything else the patch wrote (far-jump
/// slots), the undo buffer, and optionally the function's result before and after.
public struct RedirectPreview: Codable, Sendable {
    public struct Listing: Codable, Sendable {
        public var address: UInt64
        public var instructions: [InstructionReport]
        /// For data writes: what was written, and why.
        public var data: String?
        public var purpose: String?
    }

    public struct Call: Codable, Sendable {
        public var arguments: [Int64]
        public var before: Int64
        public var after: Int64
        public var instructionsBefore: UInt64
        public var instructionsAfter: UInt64
    }

    public var image: String
    public var architecture: String
    public var function: String
    public var target: String
    public var site: PatchSite
    public var method: String
    public var extraInstructions: Int?
    public var undoBuffer: String
    public var before: Listing
    public var after: Listing
    /// Writes away from the site (far-jump slots), after the patch.
    public var otherWrites: [Listing]
    public var call: Call?
    /// The backend's runtime code in this machine (ppc64le: ftrace_caller and friends).
    public var runtime: [String]

    /// What to redirect: `function=target` where target is a function name, a 0x
    /// address, or 0 (make it a no-op).
    public static func parse(_ spec: String) throws -> (function: String, target: String) {
        let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw PatchError.noSuchFunction("'\(spec)' (write FUNCTION=TARGET, TARGET a function, a 0x address or 0)")
        }
        return (parts[0], parts[1])
    }

    /// `extraImages` are loaded into the same machine (a replacement with its own TOC);
    /// TARGET may name one of their functions.
    public static func make(imagePath: String, backend: any PatchBackend, function: String, target: String,
                            arguments: [Int64]?, instructions: Int = 6, extraImages: [String] = []) throws -> RedirectPreview {
        let elf = try ELFFile(contentsOf: imagePath)
        guard elf.header.machine == backend.architecture.elfMachine else {
            throw PatchError.noBackend("\(imagePath) is \(ELFMachine.name(elf.header.machine)), not \(backend.architecture.name)")
        }
        let machine = try Machine(architecture: backend.architecture)
        let image = try machine.load(elf)
        let extras = try extraImages.map { try machine.load(try ELFFile(contentsOf: $0)) }
        let patcher = try LivePatcher(image: image, backend: backend)
        let symbol = try image.function(named: function)
        var names = elf.functionNames
        for extra in extras { names.merge(extra.elf.functionNames) { a, _ in a } }
        names.merge(patcher.runtime?.symbols ?? [:]) { a, _ in a }
        func listing(_ address: UInt64, _ count: Int) throws -> Listing {
            Listing(address: address, instructions: try machine.disassemble(at: address, count: count).map {
                InstructionReport(address: $0.address, bytes: $0.bytesHex, text: Inspector.annotate($0.text, names))
            })
        }
        let before = try listing(symbol.value, instructions)
        let callBefore = try arguments.map { try image.call(function, $0) }
        let active: ActiveRedirect
        if target == "0" {
            active = try patcher.makeNoOp(function)
        } else if target.hasPrefix("0x"), let address = UInt64(target.dropFirst(2), radix: 16) {
            active = try patcher.redirect(function, toAddress: address, label: target)
        } else if let other = extras.first(where: { $0.elf.symbol(named: target)?.isFunction == true }),
                  image.elf.symbol(named: target) == nil {
            active = try patcher.redirect(function, toAddress: try other.function(named: target).value, label: target)
        } else {
            active = try patcher.redirect(function, to: target)
        }
        let callAfter = try arguments.map { try image.call(function, $0) }
        var call: Call?
        if let args = arguments, let b = callBefore, let a = callAfter {
            call = Call(arguments: args, before: b.signedValue, after: a.signedValue,
                        instructionsBefore: b.instructions ?? 0, instructionsAfter: a.instructions ?? 0)
        }
        let after = try listing(symbol.value, instructions)
        let shown = (after.instructions.first?.address ?? 0)..<(after.instructions.last.map { $0.address + UInt64($0.bytes.split(separator: " ").count) } ?? 0)
        let others = try active.plan.writes.filter { !shown.contains($0.address) }.map { w -> Listing in
            switch w.kind {
            case .code:
                var l = try listing(w.address, 2)
                l.purpose = w.purpose
                return l
            case .data:
                let value = w.bytes.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
                return Listing(address: w.address, instructions: [],
                               data: hex(value) + (names[value].map { " <\($0)>" } ?? ""), purpose: w.purpose)
            }
        }
        let site = active.plan.site
        return RedirectPreview(
            image: imagePath, architecture: backend.architecture.name, function: function,
            target: target == "0" ? "0 (no-op)" : target, site: site, method: active.plan.method,
            extraInstructions: active.plan.extraInstructions,
            undoBuffer: active.undo.map { $0.bytes.hexBytes }
                .joined(separator: " | "),
            before: before, after: after, otherWrites: others, call: call, runtime: patcher.runtime?.summary ?? [])
    }
}
