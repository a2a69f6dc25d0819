import CSpliceSocket
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The Unix-domain stream socket a live machine is controlled through: one JSON request
/// per connection, one JSON reply, each a single line.
///
/// Two locks keep other users out (seed 002: only the privileged domain may patch): the
/// socket file is created mode 0600 in a directory of its own, and every connection's
/// peer credentials (SO_PEERCRED, taken by the kernel at connect time) must name the
/// machine's owner or root, whatever the file's mode has become.
public enum ControlSocket {
    public struct Failure: Error, CustomStringConvertible, Equatable {
        public enum Kind: String, Codable, Sendable { case unreachable, denied, protocolError }
        public var kind: Kind
        public var description: String
    }

    /// Where `splice machine …` looks when no `--socket` is given:
    /// $SPLICE_SOCKET, else $XDG_RUNTIME_DIR/splice/machine.sock, else /tmp/splice-UID/machine.sock.
    public static func defaultPath() -> String {
        let env = ProcessInfo.processInfo.environment
        if let p = env["SPLICE_SOCKET"], !p.isEmpty { return p }
        if let d = env["XDG_RUNTIME_DIR"], !d.isEmpty { return d + "/splice/machine.sock" }
        return "/tmp/splice-\(getuid())/machine.sock"
    }

    static let maximumMessage = 64 << 20

    private static func errnoText() -> String { String(cString: strerror(errno)) }

    private static func address(_ path: String) throws -> sockaddr_un {
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: a.sun_path)
        guard bytes.count < capacity else {
            throw Failure(kind: .unreachable, description: "socket path \(path) is \(bytes.count) bytes; Unix sockets allow \(capacity - 1)")
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
        /// Who may act: this uid and root.
        public let owner: uid_t

        /// Creates the directory (0700, if missing) and the socket (0600). Refuses to
        /// take over a socket a live machine still answers on.
        public init(path: String) throws {
            self.path = path
            owner = getuid()
            let dir = (path as NSString).deletingLastPathComponent
            if !dir.isEmpty, !FileManager.default.fileExists(atPath: dir) {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o700])
            }
            // The directory is where another user could swap the socket for their own:
            // it must be ours, a real directory, and writable by no one else.
            var st = stat()
            let checked = dir.isEmpty ? "." : dir
            guard lstat(checked, &st) == 0 else { throw Failure(kind: .unreachable, description: "\(checked): \(errnoText())") }
            guard (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == owner, st.st_mode & 0o022 == 0 else {
                throw Failure(kind: .denied, description: String(format:
                    "%@ must be a directory owned by uid %d and writable by no one else (it is uid %d, mode %o); refusing to serve a socket there",
                    checked, owner, st.st_uid, st.st_mode & 0o7777))
            }
            if FileManager.default.fileExists(atPath: path) {
                if (try? ControlSocket.connect(path)).map({ Glibc.close($0); return true }) ?? false {
                    throw Failure(kind: .denied, description: "a machine is already serving \(path); stop it first (splice machine stop)")
                }
                unlink(path)
            }
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw Failure(kind: .unreachable, description: "socket: \(errnoText())") }
            var a = try address(path)
            // Created with no permissions for anyone else from the first instant.
            let oldMask = umask(0o177)
            let bound = withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            umask(oldMask)
            guard bound == 0 else {
                let text = errnoText()
                Glibc.close(fd)
                throw Failure(kind: .unreachable, description: "bind \(path): \(text)")
            }
            chmod(path, 0o600)
            guard listen(fd, 16) == 0 else { Glibc.close(fd); throw Failure(kind: .unreachable, description: "listen: \(errnoText())") }
        }

        /// Waits for the next connection; nil once the listener is closed.
        public func accept() -> Connection? {
            while true {
                let c = Glibc.accept(fd, nil, nil)
                if c >= 0 { return Connection(fd: c) }
                if errno == EINTR { continue }
                return nil
            }
        }

        /// May this connection's process act on the machine?
        public func admits(_ connection: Connection) -> Result<Void, Failure> {
            guard let peer = connection.peer else {
                return .failure(Failure(kind: .denied, description: "cannot read the peer credentials of the connection: \(errnoText())"))
            }
            if peer.uid == owner || peer.uid == 0 { return .success(()) }
            return .failure(Failure(kind: .denied, description:
                "uid \(peer.uid) (pid \(peer.pid)) may not act on this machine: only its owner (uid \(owner)) or root may (EPERM)"))
        }

        public func close() {
            shutdown(fd, Int32(SHUT_RDWR))
            Glibc.close(fd)
            unlink(path)
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

        /// One line (without its newline).
        public func readLine() throws -> [UInt8] {
            var out: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    if out.isEmpty { throw Failure(kind: .protocolError, description: "the connection closed before a message arrived") }
                    return out
                }
                if let nl = buffer[..<n].firstIndex(of: 10) { return out + buffer[..<nl] }
                out += buffer[..<n]
                guard out.count <= maximumMessage else {
                    throw Failure(kind: .protocolError, description: "message longer than \(maximumMessage) bytes")
                }
            }
        }

        public func writeLine(_ bytes: [UInt8]) throws {
            var data = bytes + [10]
            var offset = 0
            while offset < data.count {
                // MSG_NOSIGNAL: a peer that hung up is an error here, not a SIGPIPE.
                let n = data.withUnsafeMutableBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw Failure(kind: .protocolError, description: "write: \(errnoText())") }
                offset += n
            }
        }
    }

    // MARK: Client

    static func connect(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(kind: .unreachable, description: "socket: \(errnoText())") }
        var a = try address(path)
        let r = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else {
            let e = errno, text = errnoText()
            close(fd)
            switch e {
            case EACCES, EPERM:
                throw Failure(kind: .denied, description: "\(path): \(text): the machine belongs to another user")
            case ENOENT, ECONNREFUSED:
                throw Failure(kind: .unreachable, description: "no machine is running at \(path) (\(text)); start one with splice machine start")
            default:
                throw Failure(kind: .unreachable, description: "cannot connect to \(path): \(text)")
            }
        }
        return fd
    }

    /// Sends one request line and returns the reply line.
    public static func exchange(path: String, _ request: [UInt8]) throws -> [UInt8] {
        let c = Connection(fd: try connect(path))
        try c.writeLine(request)
        return try c.readLine()
    }
}
