import SpliceArchitectures
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
import CSpliceSocket
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The Unix-domain stream socket a live machine is controlled through: one JSON request
/// per connection, one JSON reply, each a single line.
///
/// Both ends distrust other local users (docs/security.md):
/// - the server creates its socket mode 0600 in a directory it checked first (its owner's
///   or root's, writable by no one else, not a symlink), and judges every connection's peer
///   credentials (SO_PEERCRED, taken by the kernel at connect time) before reading a byte:
///   only the machine's owner or root may act, whatever the file's mode has become;
/// - the client checks the socket's directory the same way and the server's credentials
///   before it sends anything: a socket someone else serves gets no request.
public enum ControlSocket {

    /// Where `splice machine …` looks when no `--socket` is given:
    /// $SPLICE_SOCKET, else $XDG_RUNTIME_DIR/splice/machine.sock, else /tmp/splice-UID/machine.sock.
    public static func defaultPath() -> String {
        let env = ProcessInfo.processInfo.environment
        if let p = env["SPLICE_SOCKET"], !p.isEmpty { return p }
        if let d = env["XDG_RUNTIME_DIR"], !d.isEmpty { return d + "/splice/machine.sock" }
        return "/tmp/splice-\(getuid())/machine.sock"
    }

    /// The largest request or reply line, checked as the bytes arrive.
    public static let maximumMessage = 64 << 20
    /// How long a whole request may take to arrive (not each read: a client sending a byte
    /// now and then is cut off at this deadline).
    public static let requestDeadline: TimeInterval = 10


    private static func errnoText() -> String { String(cString: strerror(errno)) }

    private static func address(_ path: String) throws -> sockaddr_un {
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: a.sun_path)
        guard bytes.count < capacity else {
            throw ControlSocketError(kind: .unreachable, description: "socket path \(path) is \(bytes.count) bytes; Unix sockets allow \(capacity - 1)")
        }
        withUnsafeMutableBytes(of: &a.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        return a
    }

    // MARK: Server

    /// A listening socket owned by this process.
    public final class Listener {
        public let path: String
        let fd: Int32
        let directory: CheckedDirectory
        let name: String
        /// Who may act: this uid and root.
        public let owner: uid_t

        /// Checks the directory first (creating it 0700 if missing), then creates the
        /// socket (0600) in it. Refuses to take over a socket a live machine still answers
        /// on, or to remove anything at the name that is not a socket.
        public init(path: String) throws {
            self.path = path
            owner = geteuid()
            let (dirPath, name) = SafeFile.split(path)
            self.name = name
            do {
                directory = try CheckedDirectory(dirPath, policy: .ownerOnly, create: true)
            } catch let e as FileSafetyError {
                throw ControlSocketError(kind: e.kind == .untrustedDirectory ? .denied : .unreachable,
                              description: "\(e); refusing to serve a socket there")
            }
            if let type = directory.entryType(name) {
                guard type == S_IFSOCK else {
                    throw ControlSocketError(kind: .denied, description: "\(path) exists and is not a socket; refusing to replace it")
                }
                if (try? ControlSocket.connect(path)).map({ Glibc.close($0); return true }) ?? false {
                    throw ControlSocketError(kind: .denied, description: "a machine is already serving \(path); stop it first (splice machine stop)")
                }
                directory.remove(name)
            }
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw ControlSocketError(kind: .unreachable, description: "socket: \(errnoText())") }
            // Bound through the checked directory's descriptor, not its path.
            var a = try address(directory.pathThroughDescriptor(name))
            // Created with no permissions for anyone else from the first instant.
            let oldMask = umask(0o177)
            let bound = withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            umask(oldMask)
            guard bound == 0 else {
                let text = errnoText()
                Glibc.close(fd)
                throw ControlSocketError(kind: .unreachable, description: "bind \(path): \(text)")
            }
            fchmodat(directory.descriptor, name, 0o600, 0)
            guard listen(fd, 64) == 0 else { Glibc.close(fd); throw ControlSocketError(kind: .unreachable, description: "listen: \(errnoText())") }
        }

        /// Waits for the next connection; nil once the listener is closed.
        public func accept() -> Connection? {
            while true {
                let c = Glibc.accept(fd, nil, nil)
                if c >= 0 {
                    _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                    return Connection(fd: c)
                }
                if errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE {
                    if errno != EINTR { usleep(10_000) }
                    continue
                }
                return nil
            }
        }

        /// May this connection's process act on the machine? Judged before a byte of its
        /// request is read.
        public func admits(_ connection: Connection) -> Result<Void, ControlSocketError> {
            guard let peer = connection.peer else {
                return .failure(ControlSocketError(kind: .denied, description: "cannot read the peer credentials of the connection: \(errnoText())"))
            }
            if peer.uid == owner || peer.uid == 0 { return .success(()) }
            return .failure(ControlSocketError(kind: .denied, description:
                "uid \(peer.uid) (pid \(peer.pid)) may not act on this machine: only its owner (uid \(owner)) or root may (EPERM)"))
        }

        public func close() {
            shutdown(fd, Int32(SHUT_RDWR))
            Glibc.close(fd)
            directory.remove(name)
        }
    }

    public final class Connection {
        let fd: Int32
        public let peer: (uid: uid_t, gid: gid_t, pid: pid_t)?

        init(fd: Int32) {
            self.fd = fd
            var uid: UInt32 = 0, gid: UInt32 = 0, pid: Int32 = 0
            peer = splice_peer_credentials(fd, &uid, &gid, &pid) == 0 ? (uid, gid, pid) : nil
        }

        deinit { Glibc.close(fd) }

        /// One line (without its newline), which must arrive whole before `deadline` and be
        /// at most `limit` bytes (checked as the bytes arrive).
        public func readLine(deadline: Date = .distantFuture, limit: Int = maximumMessage) throws -> [UInt8] {
            var out: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let left = deadline.timeIntervalSinceNow
                guard left > 0 else {
                    throw ControlSocketError(kind: .protocolError, description: "the request did not arrive within \(Int(requestDeadline)) s (\(out.count) bytes came)")
                }
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&p, 1, Int32(min(left * 1000 + 1, 60_000)))
                if ready < 0 && errno == EINTR { continue }
                if ready == 0 { continue }
                let room = min(buffer.count, limit + 1 - out.count)
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, room) }
                if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                guard n > 0 else {
                    if out.isEmpty { throw ControlSocketError(kind: .protocolError, description: "the connection closed before a message arrived") }
                    return out
                }
                if let nl = buffer[..<n].firstIndex(of: 10) { return out + buffer[..<nl] }
                out += buffer[..<n]
                guard out.count <= limit else {
                    throw ControlSocketError(kind: .protocolError, description: "message longer than \(limit) bytes")
                }
            }
        }

        /// Sends `bytes` and a newline. With `wait: false` it gives up rather than block
        /// (a refusal to a client that does not read).
        public func writeLine(_ bytes: [UInt8], wait: Bool = true) throws {
            let data = bytes + [10]
            var offset = 0
            // MSG_NOSIGNAL: a peer that hung up is an error here, not a SIGPIPE.
            let flags = Int32(MSG_NOSIGNAL) | (wait ? 0 : Int32(MSG_DONTWAIT))
            while offset < data.count {
                let n = data.withUnsafeBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, flags) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw ControlSocketError(kind: .protocolError, description: "write: \(errnoText())") }
                offset += n
            }
        }

        /// Bounds how long a send may block.
        func setSendTimeout(seconds: Int) {
            var t = timeval(tv_sec: seconds, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &t, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    // MARK: Client

    /// Connects to the machine at `path` once it is proven to be the user's or root's: the
    /// socket's directory is checked (owner, mode, not a symlink) and reached through its
    /// descriptor, and the process serving it must run as the user or root (SO_PEERCRED).
    /// Otherwise nothing is sent.
    static func connect(_ path: String) throws -> Int32 {
        let (dirPath, name) = SafeFile.split(path)
        let directory: CheckedDirectory
        do {
            directory = try CheckedDirectory(dirPath, policy: .ownerOnly)
        } catch let e as FileSafetyError {
            switch e.kind {
            case .system(errno: ENOENT):
                throw ControlSocketError(kind: .unreachable, description: "no machine is running at \(path) (no directory \(dirPath)); start one with splice machine start")
            case .system(errno: EACCES), .system(errno: EPERM):
                throw ControlSocketError(kind: .denied, description: "\(e): the machine belongs to another user")
            default:
                throw ControlSocketError(kind: .untrusted, description: "\(e); not talking to a machine there (nothing was sent)")
            }
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlSocketError(kind: .unreachable, description: "socket: \(errnoText())") }
        var a = try address(directory.pathThroughDescriptor(name))
        let r = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else {
            let e = errno, text = errnoText()
            close(fd)
            switch e {
            case EACCES, EPERM:
                throw ControlSocketError(kind: .denied, description: "\(path): \(text): the machine belongs to another user")
            case ENOENT, ECONNREFUSED:
                throw ControlSocketError(kind: .unreachable, description: "no machine is running at \(path) (\(text)); start one with splice machine start")
            default:
                throw ControlSocketError(kind: .unreachable, description: "cannot connect to \(path): \(text)")
            }
        }
        var uid: UInt32 = 0, gid: UInt32 = 0, pid: Int32 = 0
        guard splice_peer_credentials(fd, &uid, &gid, &pid) == 0 else {
            let text = errnoText()
            close(fd)
            throw ControlSocketError(kind: .untrusted, description: "\(path): cannot read the credentials of the process serving it (\(text)); nothing was sent")
        }
        guard isTrustedOwner(uid) else {
            close(fd)
            throw ControlSocketError(kind: .untrusted, description:
                "\(path) is served by uid \(uid) (pid \(pid)), neither you (uid \(geteuid())) nor root: it is not your machine; nothing was sent")
        }
        return fd
    }

    /// Sends one request line and returns the reply line.
    public static func exchange(path: String, _ request: [UInt8]) throws -> [UInt8] {
        let c = Connection(fd: try connect(path))
        do { try c.writeLine(request) } catch {
            // A machine that refused the request without reading it (another user's
            // connection, too many connections) has still said why: read that.
            if let reply = try? c.readLine(), !reply.isEmpty { return reply }
            throw error
        }
        return try c.readLine()
    }
}

public struct ControlSocketError: Error, CustomStringConvertible, Equatable {
    public enum Kind: String, Codable, Sendable {
        case unreachable, denied, protocolError
        /// The socket is not provably the user's or root's machine (its directory or
        /// the process serving it belongs to someone else); nothing was sent.
        case untrusted
    }
    public var kind: Kind
    public var description: String
}
