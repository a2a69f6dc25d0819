import SpliceBytes
/// Why a payload was refused. Each names the payload and the section, symbol, record or
/// relocation at fault; a refused payload leaves guest memory exactly as it was.
public struct PayloadError: Error, Equatable, CustomStringConvertible {
    public enum Reason: Equatable, Sendable {
        case notRelocatable(String)
        case wrongMachine(payload: UInt16, target: UInt16)
        case missingSection(String)
        case badRecordSize(size: UInt64, recordSize: Int)
        case badRecordVersion(record: Int, version: UInt8)
        case badRecord(record: Int, reason: String)
        case noTargetBuildID
        /// Its build-id note is not the hash of its contents: it was edited after it was
        /// built (or the note was copied from another payload).
        case buildIDNotContents(note: String, contents: String)
        case buildIDMismatch(expected: String, target: String)
        case missingDependency(buildID: String)
        case undefinedSymbol(symbol: String, section: String, relocation: Int)
        case unknownFunction(record: Int, name: String)
        case oldSizeMismatch(function: String, expected: UInt64, actual: UInt64)
        case expectedBytesMismatch(function: String, expected: [UInt8], found: [UInt8])
        case duplicateFunction(name: String, records: [Int])
        case deniedFunction(name: String, why: String)
        case relocation(section: String, index: Int, reason: String)
        case alreadyLoaded(buildID: String)
        case sectionTooLarge(section: String, size: UInt64, alignment: UInt64, limit: UInt64, alignmentLimit: UInt64)
        case symbolOutsideSection(symbol: String, section: String, value: UInt64, size: UInt64)
        /// A pre hook vetoed the action, or an action hook failed: it returned `rc`.
        case hookRefused(hook: String, address: UInt64, rc: Int32)
        /// Its states do not fit those of the applied payloads (Linux's klp_state rules).
        case incompatibleState(String)
        case elf(String)
        case patch(String)
    }

    public var payload: String
    public var reason: Reason

    public init(_ payload: String, _ reason: Reason) {
        self.payload = payload
        self.reason = reason
    }

    public var description: String {
        let what: String
        switch reason {
        case let .notRelocatable(type): what = "is \(type), not a relocatable object (ET_REL)"
        case let .wrongMachine(p, t): what = "is for e_machine \(p), the target is \(t)"
        case let .missingSection(s): what = "has no \(s) section"
        case let .badRecordSize(size, rs): what = "\(PayloadFormat.funcsSection) is \(size) bytes, not a multiple of the \(rs)-byte record"
        case let .badRecordVersion(r, v): what = "\(PayloadFormat.funcsSection) record \(r) has version \(v), expected \(PayloadFormat.recordVersion)"
        // Record -1: not about one record (a hook or state section); the reason names it.
        case let .badRecord(r, why): what = r < 0 ? why : "\(PayloadFormat.funcsSection) record \(r): \(why)"
        case let .buildIDNotContents(note, contents):
            what = "has build id \(note) in \(PayloadFormat.buildIDSection), but its contents hash to \(contents): it was changed after it was built"
        case .noTargetBuildID: what = "has no target build id note in \(PayloadFormat.dependsSection)"
        case let .buildIDMismatch(e, t): what = "was built against build id \(e), the target's is \(t)"
        case let .missingDependency(id): what = "depends on payload \(id), which is not loaded"
        case let .undefinedSymbol(sym, sec, i): what = "relocation \(i) of \(sec): undefined symbol \(sym) (not in the target, the payload or its dependencies)"
        case let .unknownFunction(r, n): what = "\(PayloadFormat.funcsSection) record \(r): the target has no function \(n)"
        case let .oldSizeMismatch(f, e, a): what = "\(f): expected old size \(e), the target's is \(a)"
        case let .expectedBytesMismatch(f, e, found):
            what = "\(f): expected its first bytes to be [\(e.hexBytes)], found [\(found.hexBytes)]"
        case let .duplicateFunction(n, rs): what = "patches \(n) twice (records \(rs.map(String.init).joined(separator: ", ")))"
        case let .deniedFunction(n, why): what = "may not patch \(n): \(why)"
        case let .relocation(sec, i, why): what = "relocation \(i) of \(sec): \(why)"
        case let .alreadyLoaded(id): what = "is already loaded (build id \(id))"
        case let .symbolOutsideSection(symbol, section, value, size):
            what = "symbol \(symbol) is at offset \(hex(value)) of \(section), which has \(hex(size)) bytes"
        case let .sectionTooLarge(section, size, alignment, limit, alignmentLimit):
            what = "section \(section) asks for \(hex(size)) bytes aligned to \(hex(alignment)); "
                + "a payload may place at most \(hex(limit)) bytes, aligned to at most \(hex(alignmentLimit))"
        case let .hookRefused(hook, address, rc):
            let role = hook.hasPrefix("pre") ? "vetoed the action" : "failed, so the action did not happen"
            what = "\(hook) hook at \(hex(address)) \(role): it returned \(rc)"
        case let .incompatibleState(why): what = why
        case let .elf(e): what = "is not a valid ELF file: \(e)"
        case let .patch(e): what = e
        }
        return "payload \(payload) \(what)"
    }
}
