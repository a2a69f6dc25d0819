import SpliceBytes
/// Why a patch was refused. Every refusal leaves guest memory byte-for-byte as it was.
public enum PatchError: Error, Equatable, CustomStringConvertible {
    /// The function has fewer bytes at its site than the smallest redirect needs.
    case functionTooShort(function: String, room: Int, needed: Int, method: String)
    /// The bytes at the site are not what the patcher expected (someone else wrote
    /// there, or the image is not the one the site was computed from).
    case unexpectedBytes(function: String, address: UInt64, expected: [UInt8], found: [UInt8])
    /// The site holds nothing this backend knows how to patch.
    case unrecognisedSite(function: String, address: UInt64, found: [UInt8], reason: String)
    case noSuchFunction(String)
    case notRedirected(String)
    /// Revert of a redirect that has others stacked on top of it.
    case notTopmost(function: String, id: Int, top: Int)
    case noSuchRedirect(Int)
    /// A NOP range that does not cover whole instructions or leaves the function.
    case badNopRange(function: String, offset: UInt64, length: Int, reason: String)
    /// No free guest address within reach of the site for a far-jump slot.
    case noCodeSpaceInReach(near: UInt64, reach: UInt64, size: Int)
    /// A relocation whose value does not fit its field, or whose type is unknown.
    case relocationOverflow(section: String, index: Int, symbol: String, type: String, value: Int64)
    case unsupportedRelocation(section: String, index: Int, type: UInt32)
    /// No backend for this ISA (yet).
    case noBackend(String)
    /// A return strategy the backend does not offer.
    case noSuchReturnStrategy(String, architecture: String, offered: [String])

    public var description: String {
        switch self {
        case let .functionTooShort(function, room, needed, method):
            return "\(function) is too short to patch: \(room) bytes at its patch site, \(method) needs \(needed)"
        case let .unexpectedBytes(function, address, expected, found):
            return "\(function): bytes at \(hex(address)) are [\(found.hexBytes)], expected [\(expected.hexBytes)]; nothing written"
        case let .unrecognisedSite(function, address, found, reason):
            return "\(function): cannot patch at \(hex(address)) [\(found.hexBytes)]: \(reason)"
        case let .noSuchFunction(name):
            return "no function named \(name)"
        case let .notRedirected(name):
            return "\(name) is not redirected"
        case let .notTopmost(function, id, top):
            return "redirect #\(id) of \(function) has redirect #\(top) stacked on top of it: revert #\(top) first"
        case let .noSuchRedirect(id):
            return "no active redirect #\(id)"
        case let .badNopRange(function, offset, length, reason):
            return "\(function)+\(offset) length \(length): \(reason)"
        case let .noCodeSpaceInReach(near, reach, size):
            return "no free guest memory for \(size) bytes within \(hex(reach)) of \(hex(near))"
        case let .relocationOverflow(section, index, symbol, type, value):
            return "relocation \(index) of \(section) (\(type) against \(symbol)): value \(value) does not fit"
        case let .unsupportedRelocation(section, index, type):
            return "relocation \(index) of \(section): type \(type) is not supported"
        case let .noBackend(name):
            return "no patch backend for \(name)"
        case let .noSuchReturnStrategy(name, architecture, offered):
            return "\(architecture) has no return strategy '\(name)'"
                + (offered.isEmpty ? ": it has only one way to return" : "; it offers " + offered.joined(separator: ", "))
        }
    }
}
