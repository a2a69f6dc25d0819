import SpliceArchitectures
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The requests a live machine answers on its control socket (one JSON line each way),
/// named after the xen-xsplice operations of Xen's livepatch design.
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
        case let f as LivePatchServiceError:
            switch f {
            case .badID: return (.refused, Errno.invalid.rc)
            case .exists: return (.refused, -17)
            case .noSuchPayload: return (.refused, Errno.noEntry.rc)
            case .invalidTransition: return (.refused, Errno.invalid.rc)
            case let .actionFailed(_, _, errno, _): return (errno == Errno.busy.rc ? .busy : .failed, errno)
            }
        case let f as SignatureError:
            switch f {
            case .unsigned: return (.refused, -61) // ENODATA
            case .unknownKey: return (.refused, Errno.noKey.rc)
            default: return (.refused, Errno.keyRejected.rc)
            }
        case LiveMachineError.busy, LiveMachineError.busyConnections: return (.busy, Errno.busy.rc)
        case is LiveMachineError, is PayloadError: return (.refused, Errno.invalid.rc)
        case let f as ControlSocketError:
            return [.denied, .untrusted].contains(f.kind) ? (.denied, Errno.notPermitted.rc) : (.protocolError, Errno.protocolError.rc)
        default:
            let e = LivePatchService.errno(of: error)
            return (e == Errno.busy.rc ? .busy : .failed, e)
        }
    }
}

extension ControlRequest {
    /// The limits of a request's fields: a request outside them is refused (EINVAL) before
    /// anything acts on it or logs it.
    public static let maximumArguments = 32
    public static let maximumFunctionName = 256
    public static let maximumPageCount = 256
    static let functionNameCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._$")

    /// Every field checked against its range and alphabet.
    public func validate() throws {
        func bad(_ why: String) -> LiveMachineError { .badRequest(why) }
        if let id { try LivePatchService.validateID(id) }
        if let f = function {
            guard !f.isEmpty, f.utf8.count <= Self.maximumFunctionName, f.allSatisfy(Self.functionNameCharacters.contains) else {
                throw bad("function must be 1 to \(Self.maximumFunctionName) of A-Z a-z 0-9 . _ $ (EINVAL)")
            }
        }
        if let a = arguments, a.count > Self.maximumArguments {
            throw bad("at most \(Self.maximumArguments) arguments (got \(a.count)) (EINVAL)")
        }
        if let r = records, !(0...LiveMachine.ringSlots).contains(r) {
            throw bad("records must be 0 to \(LiveMachine.ringSlots) (got \(r)) (EINVAL)")
        }
        if let s = start, s < 0 { throw bad("start must not be negative (got \(s)) (EINVAL)") }
        if let c = count, !(0...Self.maximumPageCount).contains(c) {
            throw bad("count must be 0 to \(Self.maximumPageCount) (got \(c)) (EINVAL)")
        }
        if payload != nil, op != .upload { throw bad("only upload carries a payload (EINVAL)") }
    }
}

/// Turns one request line from an admitted client into a reply: decode, validate, log,
/// act. The socket is the daemon's business; this is what the protocol fuzzer drives.
public final class ControlDispatcher {
    public let machine: LiveMachine
    /// Where audit lines go (each already escaped: one line per event, whatever a request
    /// carried).
    public var log: (String) -> Void

    public init(machine: LiveMachine, log: @escaping (String) -> Void = ControlDispatcher.printLog) {
        self.machine = machine
        self.log = log
    }

    /// The reply to `line` from `who`, and whether it asked the machine to stop.
    public func respond(to line: [UInt8], from who: String) -> (reply: ControlReply, stopping: Bool) {
        let request: ControlRequest
        do {
            request = try JSONDecoder().decode(ControlRequest.self, from: Data(line))
            try request.validate()
        } catch {
            let reply: ControlReply = error is DecodingError
                ? .failure(ControlSocketError(kind: .protocolError, description: "malformed request: \(error)"))
                : .failure(error)
            log("\(who): (invalid request, \(line.count) bytes): refused: \(reply.error ?? "")")
            return (reply, false)
        }
        audit(who, request, nil)
        let reply: ControlReply
        do { reply = try handle(request) } catch { reply = .failure(error) }
        audit(who, request, reply)
        return (reply, reply.ok && request.op == .shutdown)
    }

    /// Log lines for the requests that change something or are refused (the xSplice design: report
    /// the operations that could affect integrity), with who asked: the request before
    /// it is handled, a refusal after.
    private func audit(_ who: String, _ r: ControlRequest, _ reply: ControlReply?) {
        var what = [r.op == .action ? r.action?.rawValue : r.op.rawValue, r.id, r.function].compactMap { $0 }.joined(separator: " ")
        if let p = r.payload { what += " (\(p.count) bytes)" }
        if let reply {
            if !reply.ok { log("\(who): \(what): refused: \(reply.error ?? "")") }
        } else if ![.status, .get, .list].contains(r.op) {
            log("\(who): \(what)")
        }
    }

    /// A log line on standard output (the daemon's log file), time-stamped, with every
    /// control character escaped so that no text from a request or a payload can start a
    /// line of its own.
    public static func printLog(_ line: String) {
        print(ISO8601DateFormatter().string(from: Date()) + " " + escaped(line))
        fflush(stdout)
    }

    /// `text` with control characters and backslashes written as escapes.
    public static func escaped(_ text: String) -> String {
        var out = ""
        for u in text.unicodeScalars {
            switch u {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 || (0x7f...0x9f).contains(u.value) || u.properties.generalCategory == .format
                    || u.properties.generalCategory == .lineSeparator || u.properties.generalCategory == .paragraphSeparator {
                    out += "\\u{" + String(u.value, radix: 16) + "}"
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out
    }

    func handle(_ r: ControlRequest) throws -> ControlReply {
        func need<T>(_ value: T?, _ what: String) throws -> T {
            guard let value else { throw LiveMachineError.badConfiguration("request '\(r.op.rawValue)' needs \(what)") }
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
            reply.page = machine.list(start: r.start ?? 0, count: r.count ?? 16)
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

/// Serves a `LiveMachine` on a control socket until a `shutdown` request (or SIGTERM /
/// SIGINT) arrives. A connection's credentials are judged as it is accepted, before any
/// of it is read: another user's gets its refusal at once and is closed, without a thread.
/// An admitted one carries one request, which must arrive whole within
/// `ControlSocket.requestDeadline` and fit `ControlSocket.maximumMessage`; at most
/// `maximumConnections` are served at a time.
public final class MachineDaemon {
    public static let maximumConnections = 32

    public let machine: LiveMachine
    public let listener: ControlSocket.Listener
    public let dispatcher: ControlDispatcher
    private let done = DispatchSemaphore(value: 0)
    private var signalSources: [DispatchSourceSignal] = []
    private let slots = DispatchSemaphore(value: MachineDaemon.maximumConnections)
    /// Refusals logged in the current second, so another user cannot flood the log.
    private var refusalsLogged = (second: 0, count: 0, suppressed: 0)

    public init(machine: LiveMachine, listener: ControlSocket.Listener) {
        self.machine = machine
        self.listener = listener
        dispatcher = ControlDispatcher(machine: machine)
    }

    static func log(_ line: String) { ControlDispatcher.printLog(line) }

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
                if case let .failure(f) = listener.admits(connection) {
                    refuse(connection, f)
                    continue
                }
                guard slots.wait(timeout: .now()) == .success else {
                    refuse(connection, LiveMachineError.busyConnections(Self.maximumConnections))
                    continue
                }
                Thread.detachNewThread { [self] in
                    serve(connection)
                    slots.signal()
                }
            }
        }
        acceptor.start()
        done.wait()
        listener.close()
        machine.shutdown()
    }

    private func who(_ connection: ControlSocket.Connection) -> String {
        connection.peer.map { "uid \($0.uid) pid \($0.pid)" } ?? "unknown peer"
    }

    /// Answers without reading the request, never blocking, and closes.
    private func refuse(_ connection: ControlSocket.Connection, _ error: Error) {
        let reply = ControlReply.failure(error)
        try? connection.writeLine(Array((try? JSONEncoder().encode(reply)) ?? Data()), wait: false)
        let second = Int(Date().timeIntervalSince1970)
        if refusalsLogged.second != second {
            if refusalsLogged.suppressed > 0 { Self.log("\(refusalsLogged.suppressed) more refusals not logged") }
            refusalsLogged = (second, 0, 0)
        }
        if refusalsLogged.count < 10 {
            refusalsLogged.count += 1
            Self.log("\(who(connection)): refused before reading: \(reply.error ?? "")")
        } else {
            refusalsLogged.suppressed += 1
        }
    }

    private func serve(_ connection: ControlSocket.Connection) {
        connection.setSendTimeout(seconds: Int(ControlSocket.requestDeadline))
        let reply: ControlReply
        var stopping = false
        do {
            let line = try connection.readLine(deadline: Date(timeIntervalSinceNow: ControlSocket.requestDeadline))
            (reply, stopping) = dispatcher.respond(to: line, from: who(connection))
        } catch {
            reply = .failure(error)
            Self.log("\(who(connection)): request not read: \(error)")
        }
        try? connection.writeLine(Array((try? JSONEncoder().encode(reply)) ?? Data()))
        if stopping { done.signal() }
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
        } catch let f as ControlSocketError {
            let kind: ControlReply.ErrorKind
            switch f.kind {
            case .denied, .untrusted: kind = .denied
            case .unreachable: kind = .unreachable
            case .protocolError: kind = .protocolError
            }
            return ControlReply(ok: false, error: f.description, kind: kind, errno: kind == .denied ? Errno.permissionDenied.rc : Errno.connectionRefused.rc)
        } catch {
            return ControlReply(ok: false, error: "malformed reply from the machine at \(socketPath): \(error)", kind: .protocolError,
                                errno: Errno.protocolError.rc)
        }
    }
}

extension LiveMachine.Page {
    /// The whole list, read `pageSize` at a time through `fetch(start, count)` the way
    /// the xSplice design's toolstack must: if the version changes between pages, the read raced
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
