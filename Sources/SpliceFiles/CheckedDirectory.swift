import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why a file operation was refused or failed: the path, what was wrong, and the errno
/// when the system said no.
public struct FileSafetyError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: Sendable, Equatable {
        /// The directory's owner or mode lets someone else replace what is in it, or it is
        /// not a directory (a symlink, a file).
        case untrustedDirectory
        /// Something else is at the name (a symlink, a key that must not be overwritten,
        /// a file of another user).
        case unexpectedEntry
        /// A system call failed.
        case system(errno: Int32)
    }

    public var path: String
    public var kind: Kind
    public var reason: String

    public var description: String { "\(path): \(reason)" }

    static func system(_ path: String, _ call: String, _ code: Int32 = errno) -> FileSafetyError {
        FileSafetyError(path: path, kind: .system(errno: code), reason: "\(call): \(String(cString: strerror(code)))")
    }
}

/// Who may own what Splice trusts: the user it runs as, or root.
public func isTrustedOwner(_ uid: uid_t) -> Bool { uid == geteuid() || uid == 0 }

/// A directory opened after its owner and mode were checked, held by its descriptor so
/// that every later step (create, append, bind, unlink) acts on the directory that was
/// checked, even if its path is swapped meanwhile.
///
/// The check: `lstat` says it is a directory (not a symlink to one), `open(O_DIRECTORY |
/// O_NOFOLLOW)` gives the descriptor, and `fstat` on it says it is the same inode, owned by
/// the user or root, with a mode the policy allows.
public final class CheckedDirectory {
    public enum Policy: Sendable {
        /// Only its owner can change it: writable by neither group nor others. For state a
        /// daemon keeps (the control socket, its log).
        case ownerOnly
        /// Writable by others only if sticky (as /tmp), where no one can rename or remove
        /// another user's entry. For files the user asked for by path.
        case stickyIfShared

        func allows(_ mode: mode_t) -> Bool {
            switch self {
            case .ownerOnly: return mode & 0o022 == 0
            case .stickyIfShared: return mode & 0o022 == 0 || mode & S_ISVTX != 0
            }
        }

        var requirement: String {
            switch self {
            case .ownerOnly: return "writable by no one else"
            case .stickyIfShared: return "writable by no one else (or sticky, as /tmp)"
            }
        }
    }

    public let path: String
    public let descriptor: Int32

    /// Opens and checks `path`; with `create`, makes it first (mode 0700) if it is missing.
    public init(_ path: String, policy: Policy, create: Bool = false) throws {
        let path = path.isEmpty ? "." : path
        self.path = path
        if create, mkdir(path, 0o700) != 0, errno != EEXIST {
            throw FileSafetyError.system(path, "cannot create the directory (mkdir)")
        }
        var link = stat()
        guard lstat(path, &link) == 0 else { throw FileSafetyError.system(path, "lstat") }
        guard link.st_mode & S_IFMT == S_IFDIR else {
            let what = link.st_mode & S_IFMT == S_IFLNK ? "a symbolic link" : "not a directory"
            throw FileSafetyError(path: path, kind: .untrustedDirectory,
                                  reason: "is \(what); refusing to use it (it must be a real directory of yours)")
        }
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw FileSafetyError.system(path, "open") }
        var st = stat()
        guard fstat(fd, &st) == 0 else { let e = FileSafetyError.system(path, "fstat"); close(fd); throw e }
        guard st.st_dev == link.st_dev, st.st_ino == link.st_ino else {
            close(fd)
            throw FileSafetyError(path: path, kind: .untrustedDirectory, reason: "was replaced while it was being checked; refusing to use it")
        }
        let mode = st.st_mode & 0o7777
        guard isTrustedOwner(st.st_uid), policy.allows(st.st_mode) else {
            close(fd)
            throw FileSafetyError(path: path, kind: .untrustedDirectory, reason:
                "must be owned by you (uid \(geteuid())) or root and \(policy.requirement); it is owned by uid \(st.st_uid) "
                    + "with mode \(String(mode, radix: 8)); someone else could replace what Splice keeps there, so it is not used")
        }
        descriptor = fd
    }

    deinit { close(descriptor) }

    /// `name` as a path that reaches this directory through its descriptor (for the calls
    /// that take only a path: bind and connect of a Unix socket).
    public func pathThroughDescriptor(_ name: String) -> String { "/proc/self/fd/\(descriptor)/\(name)" }

    /// The type bits of `name` (not following a symlink); nil when nothing is there.
    public func entryType(_ name: String) -> mode_t? {
        var st = stat()
        guard fstatat(descriptor, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return nil }
        return st.st_mode & S_IFMT
    }

    public func remove(_ name: String) { unlinkat(descriptor, name, 0) }

    /// Opens `name` for appending (created 0600 if missing): never through a symlink, and
    /// only a regular file of the user's with one link (not a hard link to someone's file).
    /// Returns the descriptor; the caller closes it.
    public func openForAppending(_ name: String) throws -> Int32 {
        let where_ = path + "/" + name
        // O_NONBLOCK: a FIFO planted at the name must not hang the open.
        let fd = openat(descriptor, name, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0o600)
        guard fd >= 0 else {
            if errno == ELOOP {
                throw FileSafetyError(path: where_, kind: .unexpectedEntry, reason: "is a symbolic link; refusing to write through it")
            }
            throw FileSafetyError.system(where_, "open")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { let e = FileSafetyError.system(where_, "fstat"); close(fd); throw e }
        guard st.st_mode & S_IFMT == S_IFREG, isTrustedOwner(st.st_uid), st.st_nlink == 1 else {
            close(fd)
            throw FileSafetyError(path: where_, kind: .unexpectedEntry, reason:
                "must be a regular file of yours with one link; it is type \(String(st.st_mode & S_IFMT, radix: 8)), uid \(st.st_uid), \(st.st_nlink) links; not written")
        }
        _ = fcntl(fd, F_SETFL, O_WRONLY | O_APPEND)
        if st.st_mode & 0o077 != 0 { fchmod(fd, 0o600) }
        return fd
    }

    /// Creates `name` with `contents`; refuses if anything (a file, a symlink) is there
    /// already. The file has `mode` from the moment it exists (a private key is never
    /// readable by anyone else, even for an instant). On a failed write it is removed.
    public func createNew(_ name: String, contents: [UInt8], mode: mode_t) throws {
        let where_ = path + "/" + name
        let fd = openat(descriptor, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, mode & 0o600)
        guard fd >= 0 else {
            if errno == EEXIST {
                throw FileSafetyError(path: where_, kind: .unexpectedEntry, reason: "already exists; refusing to overwrite it")
            }
            throw FileSafetyError.system(where_, "create")
        }
        do {
            guard fchmod(fd, mode & ~currentUmask()) == 0 else { throw FileSafetyError.system(where_, "fchmod") }
            try writeAll(fd, contents, where_)
            close(fd)
        } catch {
            close(fd)
            unlinkat(descriptor, name, 0)
            throw error
        }
    }

    /// Writes `contents` as `name` atomically: into a new file of a random name (created
    /// exclusively, 0600), then renamed over `name`. A symlink at `name` is replaced, never
    /// followed; a reader sees the old file or the whole new one.
    public func replace(_ name: String, contents: [UInt8], mode: mode_t = 0o644) throws {
        let where_ = path + "/" + name
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/") else {
            throw FileSafetyError(path: where_, kind: .unexpectedEntry, reason: "is not a file name")
        }
        if entryType(name) == S_IFDIR {
            throw FileSafetyError(path: where_, kind: .unexpectedEntry, reason: "is a directory")
        }
        let temporary = "." + String(name.prefix(200)) + ".splice-" + String(UInt64.random(in: .min ... .max), radix: 36)
        let fd = openat(descriptor, temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0o600)
        guard fd >= 0 else { throw FileSafetyError.system(path + "/" + temporary, "create") }
        do {
            try writeAll(fd, contents, where_)
            guard fchmod(fd, mode & ~currentUmask()) == 0 else { throw FileSafetyError.system(where_, "fchmod") }
            close(fd)
            guard renameat(descriptor, temporary, descriptor, name) == 0 else {
                throw FileSafetyError.system(where_, "cannot put the file in place (rename)")
            }
        } catch {
            close(fd)
            unlinkat(descriptor, temporary, 0)
            throw error
        }
    }

    private func writeAll(_ fd: Int32, _ contents: [UInt8], _ where_: String) throws {
        var offset = 0
        while offset < contents.count {
            let n = contents.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw FileSafetyError.system(where_, "write") }
            offset += n
        }
    }
}

/// The process's umask, read from /proc (setting and restoring it would race other threads).
func currentUmask() -> mode_t {
    guard let f = fopen("/proc/self/status", "r") else { return 0o022 }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, Int32(line.count), f) != nil {
        let text = String(cString: line)
        if text.hasPrefix("Umask:") {
            return mode_t(text.dropFirst(6).trimmingCharacters(in: .whitespacesAndNewlines), radix: 8) ?? 0o022
        }
    }
    return 0o022
}

/// Files the user names on the command line (`-o`, `--json-out`, `--junit`, keys).
public enum SafeFile {
    /// The directory part and the name of `path` ("." for a bare name).
    public static func split(_ path: String) -> (directory: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let dir = String(path[..<slash])
        return (dir.isEmpty ? "/" : dir, String(path[path.index(after: slash)...]))
    }

    /// Writes `contents` to `path` atomically, replacing (never following) a symlink there,
    /// in a directory checked first (yours or root's; shared only if sticky).
    public static func write(_ contents: [UInt8], to path: String, mode: mode_t = 0o644) throws {
        let (dir, name) = split(path)
        try CheckedDirectory(dir, policy: .stickyIfShared).replace(name, contents: contents, mode: mode)
    }

    /// Creates the files `files` (path, contents, mode) all or none: each exclusively (an
    /// existing file or symlink is refused, nothing overwritten), with its mode from the
    /// first byte.
    public static func createNew(_ files: [(path: String, contents: [UInt8], mode: mode_t)]) throws {
        // Every directory checked and every name seen free before anything is created; the
        // O_EXCL of each creation still refuses a name taken meanwhile.
        let places = try files.map { f -> (CheckedDirectory, String) in
            let (dir, name) = split(f.path)
            let d = try CheckedDirectory(dir, policy: .stickyIfShared)
            if d.entryType(name) != nil {
                throw FileSafetyError(path: f.path, kind: .unexpectedEntry, reason: "already exists; refusing to overwrite it")
            }
            return (d, name)
        }
        var made: [(CheckedDirectory, String)] = []
        do {
            for (f, (d, name)) in zip(files, places) {
                try d.createNew(name, contents: f.contents, mode: f.mode)
                made.append((d, name))
            }
        } catch {
            for (d, name) in made { d.remove(name) }
            throw error
        }
    }
}
