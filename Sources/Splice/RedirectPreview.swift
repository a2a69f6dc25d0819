import Foundation

/// A before/after view of one redirect, made by really applying it in a machine: the
/// bytes and disassembly at the function, everything else the patch wrote (far-jump
/// slots), the undo buffer, and optionally the function's result before and after.
public struct RedirectPreview: Codable, Sendable {
    public struct Listing: Codable, Sendable {
        public var address: UInt64
        public var instructions: [InstructionReport]
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

    /// What to redirect: `function=target` where target is a function name, a 0x
    /// address, or 0 (make it a no-op).
    public static func parse(_ spec: String) throws -> (function: String, target: String) {
        let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw PatchError.noSuchFunction("'\(spec)' (write FUNCTION=TARGET, TARGET a function, a 0x address or 0)")
        }
        return (parts[0], parts[1])
    }

    public static func make(imagePath: String, backend: any PatchBackend, function: String, target: String,
                            arguments: [Int64]?, instructions: Int = 6) throws -> RedirectPreview {
        let elf = try ELFFile(contentsOf: imagePath)
        guard elf.header.machine == backend.architecture.elfMachine else {
            throw PatchError.noBackend("\(imagePath) is \(ELFMachine.name(elf.header.machine)), not \(backend.architecture.name)")
        }
        let machine = try Machine(architecture: backend.architecture)
        let image = try machine.load(elf)
        let patcher = try LivePatcher(image: image, backend: backend)
        let symbol = try image.function(named: function)
        let names = Inspector.symbolNames(elf)
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
        } else {
            active = try patcher.redirect(function, to: target)
        }
        let callAfter = try arguments.map { try image.call(function, $0) }
        var call: Call?
        if let args = arguments, let b = callBefore, let a = callAfter {
            call = Call(arguments: args, before: b.signedValue, after: a.signedValue,
                        instructionsBefore: b.instructions ?? 0, instructionsAfter: a.instructions ?? 0)
        }
        let site = active.plan.site
        let siteEnd = site.address + UInt64(active.plan.writes.last?.bytes.count ?? 0)
        return RedirectPreview(
            image: imagePath, architecture: backend.architecture.name, function: function,
            target: target == "0" ? "0 (no-op)" : target, site: site, method: active.plan.method,
            extraInstructions: active.plan.extraInstructions,
            undoBuffer: active.undo.map { $0.bytes.map { String(format: "%02x", $0) }.joined(separator: " ") }
                .joined(separator: " | "),
            before: before, after: try listing(symbol.value, instructions),
            otherWrites: try active.plan.writes.filter { $0.address < site.address || $0.address >= siteEnd }
                .map { try listing($0.address, 2) },
            call: call)
    }
}
