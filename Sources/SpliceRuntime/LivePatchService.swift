import SplicePatching
import SplicePayload

/// The payload life cycle of Xen's livepatch (xen-xsplice): upload, get, list, and the actions
/// check / apply / revert / replace / unload, with only these transitions:
///
/// | action  | from                 | to                                        |
/// |---------|----------------------|-------------------------------------------|
/// | upload  | (new id)             | LOADED                                    |
/// | check   | LOADED               | CHECKED (placed, relocated, verified)     |
/// | apply   | CHECKED, REVERTED    | APPLIED                                   |
/// | revert  | APPLIED              | REVERTED                                  |
/// | replace | CHECKED, REVERTED    | APPLIED; every other APPLIED → REVERTED   |
/// | unload  | LOADED, CHECKED, REVERTED | (gone)                               |
///
/// Anything else is refused and changes nothing. An action that fails keeps the state
/// and records a negative errno in `rc` (the xSplice design's "negative errno" status). Actions
/// complete before the call returns. While vCPUs run, apply / revert / replace are one
/// rendezvous each, or one non-stop sequence when the loader's engine is a
/// `NonStopEngine`; check and unload place or remove memory, always in a rendezvous.
public final class LivePatchService {
    public enum State: String, Sendable, CaseIterable, Codable {
        case loaded = "LOADED", checked = "CHECKED", applied = "APPLIED", reverted = "REVERTED"
    }

    public enum Action: String, Sendable, CaseIterable, Codable {
        case check, apply, revert, replace, unload
    }

    public struct Status: Sendable, Equatable, Codable {
        public var id: String
        public var state: State
        /// 0, or the negative errno of the last failed action.
        public var rc: Int32
        public var buildID: String
    }


    /// Ids are 1 to 40 characters from [A-Za-z0-9._-]: short enough for a status line,
    /// safe in file names and shells.
    public static let maximumIDLength = 40
    static let idCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


    final class Entry {
        let id: String
        let payload: Payload
        var state: State = .loaded
        var rc: Int32 = 0
        var loaded: LoadedPayload?
        init(id: String, payload: Payload) {
            self.id = id
            self.payload = payload
        }
    }

    public let loader: PayloadLoader
    private var entries: [Entry] = []
    /// Changes on every mutation, so a paged `list` can tell it raced with one.
    public private(set) var version: UInt64 = 0

    public init(loader: PayloadLoader) { self.loader = loader }

    /// Refuses an id that is not 1-40 of A-Z a-z 0-9 . _ - (the message shows it escaped).
    public static func validateID(_ id: String) throws {
        guard !id.isEmpty, id.count <= maximumIDLength else {
            throw LivePatchServiceError.badID(String(id.debugDescription.prefix(100)), reason: "must be 1 to \(maximumIDLength) characters")
        }
        guard id.allSatisfy(idCharacters.contains) else {
            throw LivePatchServiceError.badID(String(id.debugDescription.prefix(100)), reason: "may only use A-Z a-z 0-9 . _ -")
        }
    }

    public func upload(id: String, bytes: [UInt8]) throws {
        try Self.validateID(id)
        guard !entries.contains(where: { $0.id == id }) else { throw LivePatchServiceError.exists(id) }
        let payload = try Payload(bytes: bytes, name: id)
        entries.append(Entry(id: id, payload: payload))
        version += 1
    }

    public func get(_ id: String) throws -> Status { status(try entry(id)) }

    /// Statuses `start..<start+count` in upload order, with the version they belong to.
    public func list(start: Int = 0, count: Int = 100) -> (version: UInt64, total: Int, statuses: [Status]) {
        let slice = entries.dropFirst(max(start, 0)).prefix(max(count, 0))
        return (version, entries.count, slice.map(status))
    }

    static let allowed: [Action: Set<State>] = [
        .check: [.loaded], .apply: [.checked, .reverted], .revert: [.applied],
        .replace: [.checked, .reverted], .unload: [.loaded, .checked, .reverted],
    ]

    /// Throws what `perform` would refuse before doing anything (no such id, a state the
    /// action does not start from), without doing it: a front end that runs actions in
    /// the background answers these at once.
    public func validate(_ action: Action, id: String) throws {
        let e = try entry(id)
        guard Self.allowed[action]!.contains(e.state) else {
            throw LivePatchServiceError.invalidTransition(id: id, state: e.state, action: action)
        }
    }

    public func perform(_ action: Action, id: String) throws {
        try validate(action, id: id)
        let e = try entry(id)
        do {
            switch action {
            case .check:
                e.loaded = try loader.load(e.payload)
                e.state = .checked
            case .apply:
                try loader.apply(e.loaded!)
                e.state = .applied
            case .revert:
                try loader.revert(e.loaded!)
                e.state = .reverted
            case .replace:
                try loader.replace(with: e.loaded!)
                for other in entries where other !== e && other.state == .applied { other.state = .reverted }
                e.state = .applied
            case .unload:
                if let l = e.loaded { try loader.unload(l) }
                entries.removeAll { $0 === e }
            }
            e.rc = 0
            version += 1
        } catch {
            e.rc = Self.errno(of: error)
            reconcile()
            version += 1
            throw LivePatchServiceError.actionFailed(id: id, action: action, errno: e.rc, reason: "\(error)")
        }
    }

    /// After a failed action: each payload's state says whether its redirects are in,
    /// also when an action could not be taken back (the loader says so in its error).
    private func reconcile() {
        for e in entries {
            guard let l = e.loaded else { continue }
            if l.isApplied { e.state = .applied } else if e.state == .applied { e.state = .reverted }
        }
    }

    /// -EBUSY when the machine could not be brought to do it now (a rendezvous or a
    /// non-stop sync timed out, a function to replace is on a stack): the same action
    /// may succeed later. -EINVAL for everything else.
    public static func errno(of error: Error) -> Int32 {
        if let r = error as? RendezvousError { return r.errno }
        // A hook's own negative errno (Xen and Linux pass it on as the payload's rc).
        if let p = error as? PayloadError, case let .hookRefused(_, _, rc) = p.reason, rc < 0 { return rc }
        if error is MachineRunner.SyncTimeout || error is StackCheck.FunctionLive { return Errno.busy.rc }
        return Errno.invalid.rc
    }

    private func entry(_ id: String) throws -> Entry {
        guard let e = entries.first(where: { $0.id == id }) else { throw LivePatchServiceError.noSuchPayload(id) }
        return e
    }

    private func status(_ e: Entry) -> Status {
        Status(id: e.id, state: e.state, rc: e.rc, buildID: e.payload.buildIDHex)
    }
}

public enum LivePatchServiceError: Error, Equatable, CustomStringConvertible {
    case badID(String, reason: String)
    case exists(String)
    case noSuchPayload(String)
    case invalidTransition(id: String, state: LivePatchService.State, action: LivePatchService.Action)
    case actionFailed(id: String, action: LivePatchService.Action, errno: Int32, reason: String)

    public var description: String {
        switch self {
        case let .badID(id, why): return "payload id \(id) \(why)"
        case let .exists(id): return "payload id \(id) is already uploaded (EEXIST)"
        case let .noSuchPayload(id): return "no payload with id \(id) (ENOENT)"
        case let .invalidTransition(id, state, action):
            return "cannot \(action.rawValue) payload \(id): it is \(state.rawValue) (EINVAL)"
        case let .actionFailed(id, action, errno, reason):
            return "\(action.rawValue) of payload \(id) failed (\(errno)): \(reason)"
        }
    }
}
