import Foundation

/// A POSIX error number as live patching reports it. Xen's livepatch and Linux's keep a
/// payload's status as a negative errno (`rc`); this names the few Splice uses, so no
/// code compares against a bare -16.
public struct Errno: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The positive errno value.
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    /// From a status that holds it negated (a payload's rc, a reply's errno).
    public init(rc: Int32) { rawValue = -rc }

    public static let notPermitted = Errno(rawValue: EPERM)
    public static let noEntry = Errno(rawValue: ENOENT)
    public static let permissionDenied = Errno(rawValue: EACCES)
    public static let busy = Errno(rawValue: EBUSY)
    public static let invalid = Errno(rawValue: EINVAL)
    public static let timedOut = Errno(rawValue: ETIME)
    public static let protocolError = Errno(rawValue: EPROTO)
    public static let connectionRefused = Errno(rawValue: ECONNREFUSED)
    /// A payload signed by a key the machine does not know, or a signature that fails.
    public static let noKey = Errno(rawValue: ENOKEY)
    public static let keyRejected = Errno(rawValue: EKEYREJECTED)

    /// As a status holds it: negative.
    public var rc: Int32 { -rawValue }

    public var description: String {
        switch self {
        case .notPermitted: return "EPERM"
        case .noEntry: return "ENOENT"
        case .permissionDenied: return "EACCES"
        case .busy: return "EBUSY"
        case .invalid: return "EINVAL"
        case .timedOut: return "ETIME"
        case .protocolError: return "EPROTO"
        case .connectionRefused: return "ECONNREFUSED"
        case .noKey: return "ENOKEY"
        case .keyRejected: return "EKEYREJECTED"
        default: return "errno \(rawValue)"
        }
    }
}
