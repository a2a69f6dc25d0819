import SpliceBytes
import SpliceELF
import SpliceMachine

/// One redirect (or NOP patch) in force. A class: REPLACE moves thousands of them around.
/// Made when a batch is prepared; listed, and given its id, once its writes are in memory.
public final class ActiveRedirect: @unchecked Sendable {
    /// Set once, when the redirect goes in force (0 while only prepared).
    public internal(set) var id: Int
    public let function: String
    public let target: RedirectTarget
    /// The target's name when it has one (a function of the image, or a label).
    public let targetName: String?
    public var plan: PatchPlan { encoding.plan }
    /// Marked while a REPLACE that reverts it is prepared and executed.
    var reverting = false
    /// Marked while a REPLACE whose new redirect takes it over in place is executed.
    var takenOver = false
    /// The plan (shared by every redirect of this site to this target) and its writes packed.
    let encoding: Encoding
    /// The plan's writes, and what each of them replaced (the undo buffers), in write
    /// order, packed for the checks and writes made while vCPUs are stopped.
    var packedWrites: [PackedWrite] { encoding.packed }
    let packedUndo: [PackedWrite]
    /// The patcher's entry for `function`'s site.
    let siteEntry: SiteEntry

    /// What each write replaced, in write order: the undo buffers. An undo write carries
    /// the purpose of the write it undoes.
    public var undo: [CodeWrite] {
        zip(plan.writes, packedUndo).map { CodeWrite(address: $0.address, bytes: $1.bytes, purpose: $0.purpose, kind: $0.kind) }
    }

    init(id: Int, function: String, target: RedirectTarget, targetName: String?, encoding: Encoding,
         packedUndo: [PackedWrite], siteEntry: SiteEntry) {
        self.id = id
        self.function = function
        self.target = target
        self.targetName = targetName
        self.encoding = encoding
        self.packedUndo = packedUndo
        self.siteEntry = siteEntry
    }
}

/// What a patcher knows about one function's patch site, and scratch space for the
/// per-function bookkeeping of one action: a REPLACE of 1,000 functions checks "is a newer
/// redirect of this function kept?" and "which reverted redirect does this one take over?"
/// on the entries themselves, with no look-up by name.
final class SiteEntry {
    /// Found from the image's bytes: it never changes.
    let site: PatchSite
    /// The last bytes at the site (as much as a patch may overwrite) the backend
    /// accepted as an unpatched form: its answer depends on nothing else.
    var verifiedBytes: [UInt8]?
    /// The number of the last batch that checked this site (a batch checks it once).
    var checkedInBatch = 0
    /// Encodings that allocated nothing, newest last: they depend only on the image and
    /// the runtime, so applying the same payload again (REPLACE back and forth) reuses them.
    var encodings: [Encoding] = []
    static let encodingLimit = 4

    /// The scratch fields below belong to the pass numbered `pass` (see `begin(pass:)`).
    private(set) var pass = 0
    /// The newest redirect of this function that an action keeps (0: none).
    var newestKept = 0
    /// Which of the redirects an action reverts are this function's.
    var reverted = Reverted.none
    /// How many redirects of this function an action adds.
    var added = 0

    init(site: PatchSite) { self.site = site }

    /// Makes the scratch fields this pass's, cleared if they were another's.
    @inline(__always)
    func begin(pass p: Int) {
        guard pass != p else { return }
        pass = p
        newestKept = 0
        reverted = .none
        added = 0
    }

    /// How many of the redirects an action reverts are at this site.
    enum Reverted: Equatable {
        case none
        /// One: the one at this index of the action's reverted list.
        case one(index: Int)
        case several
    }

    /// Counts the reverted redirect at `index` of the action's list as this site's.
    @inline(__always)
    func noteReverted(at index: Int) { reverted = reverted == .none ? .one(index: index) : .several }
}

/// A plan as encoded once for a site and target, with its writes packed.
final class Encoding {
    let target: RedirectTarget
    let plan: PatchPlan
    let packed: [PackedWrite]
    /// Whether the plan allocated code space (asked per function, many times, by REPLACE:
    /// a stored answer, where `plan.allocations` would copy the whole plan out).
    let allocates: Bool
    init(target: RedirectTarget, plan: PatchPlan) {
        self.target = target
        self.plan = plan
        allocates = !plan.allocations.isEmpty
        packed = plan.writes.map { PackedWrite(address: $0.address, bytes: $0.bytes, kind: $0.kind) }
    }
}
