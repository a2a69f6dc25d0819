import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The requests a live machine answers on its control socket (one JSON line each way),
/// named after seed 002's xen-xsplice operations.
public struct ControlRequest: Codable, Sendable, Equatable {
    public enum Operation: String, Codable, Sendable {
        case status, upload, get, list, action, call, shutdown
    }

    public var op: Operation
    public var id: String?
    /// upload: the payload file's bytes (base64 in the JSON), signature and all.
    public var payload: Data?
    public var action: LivePatchService.Action?
    public var start: Int?
    public var count: Int?
    public var function: String?
    public var arguments: [Int64]?
    /// status: how many of each vCPU's newest workload records to include.
    public var records: Int?

    public init(_ op: Operation, id: String? = nil) {
        self.op = op
        self.id = id
    }
}

public struct ControlReply: Codable, Sendable, Equatable {
    /// What kind of "no" it is, so a script can tell "try again" from "wrong".
    public enum ErrorKind: String, Codable, Sendable {
        /// The request was refused before anything was done (unknown id, wrong state,
        /// malformed or unsigned payload, bad arguments).
        case refused
        /// The action ran and failed; nothing of it is left applied.
        case failed
        /// The machine could not do it now (another action runs, a rendezvous timed out).
        case busy
        /// The caller may not act on this machine.
        case denied
        /// No machine answers at the socket.
        case unreachable
        case protocolError
    }

    public var ok: Bool
    public var error: String?
    public var kind: ErrorKind?
    public var errno: Int32?
    public var machine: LiveMachine.Status?
    public var payload: LiveMachine.PayloadStatus?
    public var page: LiveMachine.Page?
    public var value: Int64?

    public init(ok: Bool, error: String? = nil, kind: ErrorKind? = nil, errno: Int32? = nil,
                payload: LiveMachine.PayloadStatus? = nil) {
        self.ok = ok
        self.error = error
        self.kind = kind
        self.errno = errno
        self.payload = payload
    }

    public static let success = ControlReply(ok: true)

    public static func failure(_ error: Error) -> ControlReply {
        let (kind, errno) = classify(error)
        return ControlReply(ok: false, error: "\(error)", kind: kind, errno: errno)
    }

    /// The kind and errno of an error (errnos as Linux and Xen return them, negative).
    public static func classify(_ error: Error) -> (ErrorKind, Int32) {
        switch error {
        case let f as LivePatchService.Failure:
            switch f {
            case .badID: return (.refused, -22)
            case .exists: return (.refused, -17)
            case .noSuchPayload: return (.refused, -2)
            case .invalidTransition: return (.refused, -22)
            case let .actionFailed(_, _, errno, _): return (errno == -16 ? .busy : .failed, errno)
            }
        case let f as PayloadSignature.Failure:
            switch f {
            case .unsigned: return (.refused, -61) // ENODATA
            case .unknownKey: return (.refused, -126) // ENOKEY
            default: return (.refused, -129) // EKEYREJECTED
            }
        case LiveMachine.Failure.busy: return (.busy, -16)
        case is LiveMachine.Failure, is PayloadError: return (.refused, -22)
        case let f as ControlSocket.Failure: return (f.kind == .denied ? .denied : .protocolError, f.kind == .denied ? -1 : -71)
        default:
            let e = LivePatchService.errno(of: error)
            return (e == -16 ? .busy : .failed, e)
        }
    }
}

/// Serves a `LiveMachine` on a control socket until a `shutdown` request (or SIGTERM /
/// SIGINT) arrives. Each connection is one request, answered on its own thread.
public final class MachineDaemon {
    public let machine: LiveMachine
    public let listener: ControlSocket.Listener
    private let done = DispatchSemaphore(value: 0)
    private var signalSources: [DispatchSourceSignal] = []

    public init(machine: LiveMachine, listener: ControlSocket.Listener) {
        self.machine = machine
        self.listener = listener
    }

    /// Blocks until the machine is stopped; the socket is removed on the way out.
    public func run() {
        machine.onActionFinished = { id, action, failure in
            Self.log("\(action.rawValue) \(id) finished: " + (failure.map { "FAILED: \($0)" } ?? "ok"))
        }
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [weak self] in self?.done.signal() }
            source.resume()
            signalSources.append(source)
        }
        let acceptor = Thread { [self] in
            while let connection = listener.accept() {
                Thread.detachNewThread { self.serve(connection) }
            }
        }
        acceptor.start()
        done.wait()
        listener.close()
        machine.shutdown()
    }

    private func serve(_ connection: ControlSocket.Connection) {
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(connection.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let reply: ControlReply
        var stopping = false
        var request: ControlRequest?
        // The request is read before the credentials are judged, so a refused client
        // gets its answer rather than a closed connection.
        let line = Result { try connection.readLine() }
        switch listener.admits(connection) {
        case let .failure(f):
            // Decoded only to say in the log what was refused.
            request = (try? line.get()).flatMap { try? JSONDecoder().decode(ControlRequest.self, from: Data($0)) }
            reply = .failure(f)
        case .success:
            do {
                let decoded = try JSONDecoder().decode(ControlRequest.self, from: Data(try line.get()))
                request = decoded
                stopping = decoded.op == .shutdown
                audit(connection, decoded, nil)
                reply = try handle(decoded)
            } catch let e as DecodingError {
                reply = .failure(ControlSocket.Failure(kind: .protocolError, description: "malformed request: \(e)"))
            } catch {
                reply = .failure(error)
            }
        }
        audit(connection, request, reply)
        try? connection.writeLine(Array((try? JSONEncoder().encode(reply)) ?? Data()))
        if stopping { done.signal() }
    }

    /// Log lines for the requests that change something or are refused (seed 002: report
    /// the operations that could affect integrity), with who asked: the request before
    /// it is handled, a refusal after, and an action's end when it ends.
    private func audit(_ connection: ControlSocket.Connection, _ request: ControlRequest?, _ reply: ControlReply?) {
        let who = connection.peer.map { "uid \($0.uid) pid \($0.pid)" } ?? "unknown peer"
        var what = request.map { r in
            [r.op == .action ? r.action?.rawValue : r.op.rawValue, r.id, r.function].compactMap { $0 }.joined(separator: " ")
        } ?? "(unreadable request)"
        if let p = request?.payload { what += " (\(p.count) bytes)" }
        if let reply {
            if !reply.ok { Self.log("\(who): \(what): refused: \(reply.error ?? "")") }
        } else if let r = request, ![.status, .get, .list].contains(r.op) {
            Self.log("\(who): \(what)")
        }
    }

    static func log(_ line: String) {
        print(ISO8601DateFormatter().string(from: Date()) + " " + line)
        fflush(stdout)
    }

    func handle(_ r: ControlRequest) throws -> ControlReply {
        func need<T>(_ value: T?, _ what: String) throws -> T {
            guard let value else { throw LiveMachine.Failure.badConfiguration("request '\(r.op.rawValue)' needs \(what)") }
            return value
        }
        var reply = ControlReply.success
        switch r.op {
        case .status:
            reply.machine = try machine.status(records: r.records ?? 4)
        case .upload:
            let id = try need(r.id, "an id")
            try machine.upload(id: id, bytes: Array(try need(r.payload, "the payload bytes")))
            reply.payload = try machine.get(id)
        case .get:
            reply.payload = try machine.get(try need(r.id, "an id"))
        case .list:
            reply.page = machine.list(start: r.start ?? 0, count: min(max(r.count ?? 16, 0), 256))
        case .action:
            let id = try need(r.id, "an id")
            try machine.begin(try need(r.action, "an action"), id: id)
            reply.payload = try? machine.get(id)
        case .call:
            reply.value = try machine.call(try need(r.function, "a function"), r.arguments ?? [])
        case .shutdown:
            break
        }
        return reply
    }
}

/// The client side: one request, one reply.
public struct MachineClient {
    public let socketPath: String

    public init(socketPath: String = ControlSocket.defaultPath()) { self.socketPath = socketPath }

    /// The reply; a transport failure becomes an `ok: false` reply of kind denied,
    /// unreachable or protocolError.
    public func send(_ request: ControlRequest) -> ControlReply {
        do {
            let line = try ControlSocket.exchange(path: socketPath, Array(try JSONEncoder().encode(request)))
            return try JSONDecoder().decode(ControlReply.self, from: Data(line))
        } catch let f as ControlSocket.Failure {
            let kind: ControlReply.ErrorKind = f.kind == .denied ? .denied : f.kind == .unreachable ? .unreachable : .protocolError
            return ControlReply(ok: false, error: f.description, kind: kind, errno: f.kind == .denied ? -13 : -111)
        } catch {
            return ControlReply(ok: false, error: "malformed reply from the machine at \(socketPath): \(error)", kind: .protocolError,
                                errno: -71)
        }
    }
}

extension LiveMachine.Page {
    /// The whole list, read `pageSize` at a time through `fetch(start, count)` the way
    /// seed 002's toolstack must: if the version changes between pages, the read raced
    /// with a change and starts over. nil when it kept changing for `tries` attempts.
    public static func collect(pageSize: Int, tries: Int = 20,
                               fetch: (_ start: Int, _ count: Int) throws -> LiveMachine.Page) rethrows -> LiveMachine.Page? {
        precondition(pageSize >= 1)
        attempts: for _ in 0..<tries {
            var all: [LiveMachine.PayloadStatus] = []
            var version: UInt64?
            var total = 0
            repeat {
                let page = try fetch(all.count, pageSize)
                if let v = version, v != page.version { continue attempts }
                version = page.version
                total = page.total
                all += page.statuses
                if page.statuses.isEmpty { break }
            } while all.count < total
            return LiveMachine.Page(version: version ?? 0, total: all.count, start: 0, statuses: all)
        }
        return nil
    }
}
