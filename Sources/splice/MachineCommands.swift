import ArgumentParser
import Foundation
import SpliceDaemon
import SpliceFiles
import SpliceHarness
import SplicePayload
import SpliceRuntime

/// Exit codes of the commands that talk to a live machine, for scripts.
enum ExitStatus: Int32 {
    case success = 0
    /// Bad arguments or a local file that cannot be read.
    case usage = 1
    /// The machine refused the request and changed nothing (unknown id, wrong state,
    /// malformed, unsigned or tampered payload).
    case refused = 2
    /// The action ran and failed; its rc and reason are printed.
    case failed = 3
    /// Busy: another action runs, or a rendezvous could not gather the vCPUs. Retry.
    case busy = 4
    /// The command's time bound passed with the action still in progress.
    case timedOut = 5
    /// No machine at the socket, or it belongs to another user.
    case unreachable = 6

    static let table = """
        Exit codes: 0 done; 1 bad arguments or unreadable file; 2 refused, nothing changed (unknown id, \
        wrong state, malformed/unsigned/tampered payload); 3 the action ran and failed (rc printed); \
        4 busy, try again (another action runs, rendezvous timeout); 5 still in progress when --timeout \
        passed; 6 no machine at the socket, or not yours. With --exit-status xen (the default of `load`), \
        xen-livepatch's: 0 success, 1 error, 2 try again (4 and 5 above).
        """

    /// The code a script sees under `contract`.
    func code(_ contract: ExitContract) -> Int32 {
        switch contract {
        case .splice: return rawValue
        case .xen: return self == .success ? 0 : self == .busy || self == .timedOut ? 2 : 1
        }
    }

    init(_ kind: ControlReply.ErrorKind?) {
        switch kind {
        case .refused?: self = .refused
        case .failed?: self = .failed
        case .busy?: self = .busy
        case .denied?, .unreachable?: self = .unreachable
        case .protocolError?, nil: self = .failed
        }
    }
}

/// Which exit codes a command uses: Splice's seven (`ExitStatus`), or xen-livepatch's three
/// (0 success, 1 error, 2 try again), for scripts written against xen-livepatch.
enum ExitContract: String, ExpressibleByArgument, CaseIterable {
    case splice, xen
}

/// Options every command against a live machine takes.
struct MachineOptions: ParsableArguments {
    @Option(name: .customLong("exit-status"),
            help: "Exit codes: splice (0-6, the default) or xen (xen-livepatch's 0 success, 1 error, 2 try again; the default of load).")
    var exitStatus: ExitContract?
    @Option(help: "The machine's control socket (default: $SPLICE_SOCKET, $XDG_RUNTIME_DIR/splice/machine.sock or /tmp/splice-UID/machine.sock).")
    var socket: String?
    @Flag(help: "Print JSON.") var json = false

    var client: MachineClient { MachineClient(socketPath: socket ?? ControlSocket.defaultPath()) }

    /// Sends `request`; a failed reply is printed (to stderr, or as JSON) and ends the
    /// command with its exit code.
    @discardableResult
    func send(_ request: ControlRequest) throws -> ControlReply {
        let reply = client.send(request)
        if !reply.ok { try fail(reply) }
        return reply
    }

    func fail(_ reply: ControlReply, exit: ExitStatus? = nil) throws -> Never {
        if json { try printJSON(reply) } else {
            FileHandle.standardError.write(Data("splice: error: \(reply.error ?? "unknown failure")\n".utf8))
        }
        throw ExitCode((exit ?? ExitStatus(reply.kind)).code(exitStatus ?? .splice))
    }
}

func payloadLine(_ s: LiveMachine.PayloadStatus) -> String {
    let state = s.state == .progress ? "PROGRESS (\(s.action.map(\.rawValue) ?? "?"))" : s.state.rawValue
    return "\(s.id.padding(toLength: 16, withPad: " ", startingAt: 0)) \(state.padding(toLength: 18, withPad: " ", startingAt: 0)) "
        + "rc \(String(s.rc).padding(toLength: 4, withPad: " ", startingAt: 0)) build-id \(s.buildID)"
        + (s.error.map { "  (\($0))" } ?? "")
}

// MARK: splice machine

struct MachineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "machine",
        abstract: "Start, stop and look at a live machine that keeps running in the background.",
        discussion: """
        A live machine loads an image into N emulated vCPUs, each running the workload on its own host \
        thread, and serves a control socket (Unix domain, mode 0600; only its owner or root may act, \
        checked with the peer's credentials). Payload commands (upload, list, get, check, apply, revert, \
        replace, unload, load) act on it.

        """ + ExitStatus.table,
        subcommands: [Start.self, Stop.self, Status.self, Call.self])

    struct Start: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a live machine in the background (or, with --foreground, here).")

        @Option(help: "The image (an ELF executable with a safe_point function); default: the bundled x86-64 sample.")
        var image: String?
        @Option(help: "vCPUs, 1-64.") var cpus = 2
        @Option(help: "The guest function each vCPU runs with its own ring page, or 'none'.") var workload = "workload"
        @Option(help: "stop (every action in a rendezvous) or nonstop.") var engine = PatchEngineKind.stop
        @Option(help: "How a redirected call returns, on a backend that offers a choice (default: the backend's).")
        var returnStrategy: ReturnStrategyName?
        @Option(help: "How long a rendezvous waits for all vCPUs, in ms.") var rendezvousTimeoutMs: UInt64 = 1000
        @Option(help: "Non-stop engine: how long an action waits for the functions it replaces to leave every stack, in ms (then it fails with -EBUSY).")
        var stackWaitMs: UInt64 = 10_000
        @Option(help: "Only accept payloads signed by this public key (PEM; splice keygen makes one).")
        var requireSignature: String?
        @Option(help: "Where the background machine writes its log (default: next to the socket).") var log: String?
        @Flag(help: "Serve from this process instead of starting one in the background.") var foreground = false
        @OptionGroup var options: MachineOptions

        func validate() throws {
            guard (1...64).contains(cpus) else { throw ValidationError("--cpus is 1 to 64 (not \(cpus))") }
        }

        func configuration() throws -> LiveMachine.Configuration {
            LiveMachine.Configuration(image: try image ?? Samples.path(Samples.x86_64), cpus: cpus,
                                             workload: workload == "none" ? nil : workload, engine: engine,
                                             returnStrategy: returnStrategy?.name, rendezvousTimeoutMicroseconds: rendezvousTimeoutMs * 1000,
                                             stackWaitMilliseconds: stackWaitMs)
        }

        func run() throws {
            let socketPath = options.socket ?? ControlSocket.defaultPath()
            let config = try reportingErrors { try configuration() }
            if foreground { try serve(config, socketPath); return }
            try reportingErrors {
                if MachineClient(socketPath: socketPath).send(ControlRequest(.status)).ok {
                    throw CommandError(description: "a machine is already running at \(socketPath); stop it first (splice machine stop)")
                }
                // The socket's directory is checked (and made 0700 if missing) before
                // anything is created in it; the log is opened through it, never through a
                // symlink, and appended to.
                let directory: CheckedDirectory
                do {
                    directory = try CheckedDirectory(SafeFile.split(socketPath).directory, policy: .ownerOnly, create: true)
                } catch let e as FileSafetyError where e.kind == .untrustedDirectory {
                    FileHandle.standardError.write(Data("splice: error: \(e); the machine was not started\n".utf8))
                    throw ExitCode(ExitStatus.unreachable.code(options.exitStatus ?? .splice))
                }
                let logPath = log ?? directory.path + "/machine.log"
                let logFD = try log.map { path in
                    let (dir, name) = SafeFile.split(path)
                    return try CheckedDirectory(dir, policy: .stickyIfShared).openForAppending(name)
                } ?? directory.openForAppending("machine.log")
                let logStart = lseek(logFD, 0, SEEK_END)
                let logHandle = FileHandle(fileDescriptor: logFD, closeOnDealloc: true)
                let child = Process()
                child.executableURL = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
                var args = ["machine", "start", "--foreground", "--socket", socketPath, "--image", config.image,
                            "--cpus", String(cpus), "--workload", workload, "--engine", engine.rawValue,
                            "--rendezvous-timeout-ms", String(rendezvousTimeoutMs), "--stack-wait-ms", String(stackWaitMs)]
                if let r = returnStrategy { args += ["--return-strategy", r.name] }
                if let k = requireSignature { args += ["--require-signature", k] }
                child.arguments = args
                var env = ProcessInfo.processInfo.environment
                env["SPLICE_DETACH"] = "1"
                child.environment = env
                child.standardInput = FileHandle.nullDevice
                child.standardOutput = logHandle
                child.standardError = logHandle
                try child.run()
                let deadline = Date(timeIntervalSinceNow: 60)
                var reply = ControlReply(ok: false)
                while Date() < deadline {
                    reply = MachineClient(socketPath: socketPath).send(ControlRequest(.status))
                    if reply.ok || !child.isRunning { break }
                    Thread.sleep(forTimeInterval: 0.05)
                }
                guard reply.ok, let m = reply.machine else {
                    // What this start wrote to the log, read through the descriptor it was written by.
                    let reader = FileHandle(forReadingAtPath: "/proc/self/fd/\(logFD)")
                    try? reader?.seek(toOffset: UInt64(max(logStart, 0)))
                    let text = String(decoding: reader?.readDataToEndOfFile() ?? Data(), as: UTF8.self)
                    if child.isRunning { child.terminate() }
                    throw CommandError(description: "the machine did not start: " + (text.isEmpty ? (reply.error ?? "no reply") : text.trimmingCharacters(in: .whitespacesAndNewlines)))
                }
                if options.json { try printJSON(m); return }
                print("machine started: pid \(child.processIdentifier), \(m.architecture), \(m.cpus) vCPUs running \(m.workload ?? "nothing"), "
                      + "\(m.engine.rawValue) engine" + (m.returnStrategy.map { ", \($0) returns" } ?? ""))
                print("  image \(m.image) (build id \(m.buildID))")
                print("  socket \(socketPath), log \(logPath)" + (m.requiresSignature.map { "; payloads must be signed by key \($0)" } ?? ""))
            }
        }

        private func serve(_ config: LiveMachine.Configuration, _ socketPath: String) throws {
            if ProcessInfo.processInfo.environment["SPLICE_DETACH"] == "1" { _ = setsid() }
            let daemon = try reportingErrors { () -> MachineDaemon in
                let key = try requireSignature.map { try PayloadSignature.publicKey(pemFile: $0) }
                let listener = try ControlSocket.Listener(path: socketPath)
                do {
                    return MachineDaemon(machine: try LiveMachine(configuration: config, trustedKey: key), listener: listener)
                } catch {
                    listener.close()
                    throw error
                }
            }
            print("splice machine: serving \(config.image) on \(socketPath), pid \(getpid())")
            fflush(stdout)
            daemon.run()
            print("splice machine: stopped")
        }
    }

    struct Stop: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop the live machine (its vCPUs and its socket).")
        @OptionGroup var options: MachineOptions

        func run() throws {
            try options.send(ControlRequest(.shutdown))
            // The socket goes away once the vCPUs have stopped.
            let path = options.socket ?? ControlSocket.defaultPath()
            let deadline = Date(timeIntervalSinceNow: 10)
            while FileManager.default.fileExists(atPath: path) && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
            if options.json { try printJSON(ControlReply.success) } else { print("machine stopped") }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The machine's vCPUs, their workload's newest results and its payloads.")
        @Option(help: "Workload records to show per vCPU (0-\(LiveMachine.ringSlots)).") var records = 4
        @OptionGroup var options: MachineOptions

        func validate() throws {
            guard (0...LiveMachine.ringSlots).contains(records) else {
                throw ValidationError("--records is 0 to \(LiveMachine.ringSlots) (got \(records))")
            }
        }

        func run() throws {
            var request = ControlRequest(.status)
            request.records = records
            guard let m = try options.send(request).machine else { return }
            if options.json { try printJSON(m); return }
            print("\(m.architecture) machine, \(m.cpus) vCPUs, \(m.engine.rawValue) engine" + (m.returnStrategy.map { ", \($0) returns" } ?? "")
                  + "; image \(m.image)")
            print("payloads \(m.payloads) (version \(m.version)), active redirects \(m.activeRedirects), rendezvous \(m.rendezvousCompleted)"
                  + (m.requiresSignature.map { "; signatures required (key \($0))" } ?? ""))
            for v in m.vcpus {
                let recs = v.records.map { r in "x=\(r.x) -> " + r.results.map(String.init).joined(separator: ",") }.joined(separator: "; ")
                print("  vCPU \(v.index): \(v.summary), \(v.iterations) iterations" + (recs.isEmpty ? "" : "; newest: \(recs)"))
            }
        }
    }

    struct Call: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Call a guest function on the running machine (inside a rendezvous).")
        @Argument(help: "The function.") var function: String
        @Argument(help: "Its integer arguments.") var arguments: [String] = []
        @OptionGroup var options: MachineOptions

        func run() throws {
            var request = ControlRequest(.call)
            request.function = function
            request.arguments = try reportingErrors { try arguments.map(parseInteger) }
            let value = try options.send(request).value ?? 0
            if options.json { try printJSON(["function": function, "result": String(value)]) } else {
                print("\(function)(\(arguments.joined(separator: ", "))) = \(value)")
            }
        }
    }
}

// MARK: Payload commands (the xen-xsplice verbs of Xen's livepatch design)

func readPayloadFile(_ path: String) throws -> Data {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw CommandError(description: "\(path): cannot read the payload file")
    }
    return data
}

struct Upload: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Upload a payload under an id (state LOADED).")
    @Argument(help: "The payload's id: 1-40 of A-Z a-z 0-9 . _ -") var id: String
    @Argument(help: "The payload file (splice build makes one).") var payload: String
    @OptionGroup var options: MachineOptions

    func run() throws {
        var request = ControlRequest(.upload, id: id)
        request.payload = try reportingErrors { try readPayloadFile(payload) }
        let reply = try options.send(request)
        if options.json { try printJSON(reply.payload) } else if let s = reply.payload { print(payloadLine(s)) }
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the payloads, page by page, retrying if the list changed meanwhile (the version counter).")
    @Option(help: "Payloads asked per request.") var pageSize = 16
    @OptionGroup var options: MachineOptions

    func run() throws {
        guard pageSize >= 1 else { throw ValidationError("--page-size is at least 1") }
        let whole = try LiveMachine.Page.collect(pageSize: pageSize) { start, count in
            var request = ControlRequest(.list)
            request.start = start
            request.count = count
            guard let page = try options.send(request).page else { throw CommandError(description: "the machine sent no list") }
            return page
        }
        guard let list = whole else {
            try options.fail(ControlReply(ok: false, error: "the payload list kept changing while it was read (20 tries)", kind: .busy))
        }
        if options.json { try printJSON(list); return }
        print("version \(list.version), \(list.total) payload\(list.total == 1 ? "" : "s")")
        print("ID               STATE              RC   BUILD-ID")
        for s in list.statuses { print(payloadLine(s)) }
    }
}

struct Get: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "One payload's state, rc and build id.")
    @Argument(help: "The payload's id.") var id: String
    @OptionGroup var options: MachineOptions

    func run() throws {
        let reply = try options.send(ControlRequest(.get, id: id))
        if options.json { try printJSON(reply.payload) } else if let s = reply.payload { print(payloadLine(s)) }
    }
}

/// Starts an action and waits for it, with a progress line on a terminal.
struct ActionRunner {
    let options: MachineOptions
    let timeout: Double

    @discardableResult
    func run(_ action: LivePatchService.Action, _ id: String, quiet: Bool = false) throws -> LiveMachine.PayloadStatus? {
        var request = ControlRequest(.action, id: id)
        request.action = action
        let start = Date()
        try options.send(request)
        let tty = isatty(2) != 0 && !options.json
        var delay = 0.002
        while true {
            let reply = options.client.send(ControlRequest(.get, id: id))
            let elapsed = Date().timeIntervalSince(start)
            if !reply.ok {
                // An unload is done when the id is gone.
                if action == .unload, reply.errno == Errno.noEntry.rc {
                    if tty { FileHandle.standardError.write(Data("\r\u{1b}[K".utf8)) }
                    if !quiet { report(nil, action, id, elapsed) }
                    return nil
                }
                try options.fail(reply)
            }
            guard let s = reply.payload else { try options.fail(reply) }
            if s.state != .progress {
                if tty { FileHandle.standardError.write(Data("\r\u{1b}[K".utf8)) }
                if s.rc != 0 {
                    try options.fail(ControlReply(ok: false, error: "\(action.rawValue) of payload \(id) failed (\(s.rc)): \(s.error ?? "no reason recorded"); its state stays \(s.state)",
                                                  kind: s.rc == Errno.busy.rc ? .busy : .failed, errno: s.rc, payload: s))
                }
                if !quiet { report(s, action, id, elapsed) }
                return s
            }
            if elapsed > timeout {
                if tty { FileHandle.standardError.write(Data("\n".utf8)) }
                try options.fail(ControlReply(ok: false, error: "\(action.rawValue) of payload \(id) is still in progress after \(timeout) s; `splice get \(id)` shows when it is done",
                                              errno: Errno.timedOut.rc, payload: s), exit: .timedOut)
            }
            if tty { FileHandle.standardError.write(Data(String(format: "\r%@ %@: in progress, %.1f s", action.rawValue, id, elapsed).utf8)) }
            Thread.sleep(forTimeInterval: delay)
            delay = min(delay * 2, 0.05)
        }
    }

    private func report(_ s: LiveMachine.PayloadStatus?, _ action: LivePatchService.Action, _ id: String, _ elapsed: TimeInterval) {
        if options.json {
            try? printJSON(ActionResult(id: id, action: action.rawValue, state: s?.state.rawValue ?? "UNLOADED", milliseconds: elapsed * 1000))
        } else {
            print(String(format: "%@ %@: %@ (%.1f ms)", action.rawValue, id, s?.state.rawValue ?? "unloaded", elapsed * 1000))
        }
    }

    struct ActionResult: Codable { var id: String; var action: String; var state: String; var milliseconds: Double }
}

/// What one of `splice check|apply|revert|replace|unload <id>` does.
protocol ActionVerb {
    static var action: LivePatchService.Action { get }
    static var abstract: String { get }
}

enum CheckVerb: ActionVerb {
    static let action = LivePatchService.Action.check
    static let abstract = "Place, resolve, relocate and verify a payload (LOADED -> CHECKED)."
}

enum ApplyVerb: ActionVerb {
    static let action = LivePatchService.Action.apply
    static let abstract = "Apply a checked payload (CHECKED/REVERTED -> APPLIED), all of it or nothing."
}

enum RevertVerb: ActionVerb {
    static let action = LivePatchService.Action.revert
    static let abstract = "Revert an applied payload (APPLIED -> REVERTED)."
}

enum ReplaceVerb: ActionVerb {
    static let action = LivePatchService.Action.replace
    static let abstract = "Apply a payload and revert every other applied one, in one rendezvous (xSplice's REPLACE)."
}

enum UnloadVerb: ActionVerb {
    static let action = LivePatchService.Action.unload
    static let abstract = "Remove a payload that is not applied, and its memory."
}

struct ActionCommand<Verb: ActionVerb>: ParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: Verb.action.rawValue, abstract: Verb.abstract, discussion: ExitStatus.table)
    }

    @Argument(help: "The payload's id.") var id: String
    @Option(help: "Seconds to wait for it.") var timeout = 30.0
    @OptionGroup var options: MachineOptions

    func run() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
        try ActionRunner(options: options, timeout: timeout).run(Verb.action, id)
    }
}

struct Load: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Upload, check and apply a payload; if check or apply fails, it is unloaded again (xen-livepatch load).",
        discussion: """
        As `xen-livepatch load FILE`: the payload is named after the file, without its directory and \
        extension (hello.livepatch: hello), unless an id is given first; the exit status is \
        xen-livepatch's: 0 success, 1 error, 2 try again (busy, or still in progress when --timeout \
        passed). --exit-status splice gives Splice's finer codes instead.
        """)
    @Argument(help: ArgumentHelp("[<id>] <file>: the payload file, optionally preceded by its id.", valueName: "id-or-file"))
    var arguments: [String]
    @Option(help: "Seconds to wait for each action.") var timeout = 30.0
    @OptionGroup var options: MachineOptions

    /// The id and the file: `load FILE` names it as xen-livepatch does.
    static func idAndFile(_ arguments: [String]) throws -> (id: String, file: String) {
        switch arguments.count {
        case 1:
            let base = (arguments[0] as NSString).lastPathComponent
            let id = base.contains(".") && !base.hasPrefix(".") ? String(base[..<base.lastIndex(of: ".")!]) : base
            return (id, arguments[0])
        case 2: return (arguments[0], arguments[1])
        default: throw ValidationError("load takes a payload file, optionally preceded by its id (got \(arguments.count) arguments)")
        }
    }

    func validate() throws { _ = try Self.idAndFile(arguments) }

    func run() throws {
        var options = self.options
        if options.exitStatus == nil { options.exitStatus = .xen }
        let (id, payload) = try Self.idAndFile(arguments)
        var request = ControlRequest(.upload, id: id)
        request.payload = try reportingErrors { try readPayloadFile(payload) }
        try options.send(request)
        let runner = ActionRunner(options: options, timeout: timeout)
        do {
            try runner.run(.check, id, quiet: options.json)
            try runner.run(.apply, id, quiet: options.json)
        } catch {
            // Leave nothing behind: the payload goes again (a no-op if it is gone).
            _ = try? ActionRunner(options: options, timeout: timeout).run(.unload, id, quiet: true)
            throw error
        }
        if options.json, let s = options.client.send(ControlRequest(.get, id: id)).payload { try printJSON(s) }
    }
}
