import SpliceArchitectures
import SpliceBytes
import SpliceDaemon
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceHarness
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
import Foundation
import Yams

/// A checked-in description of a live-patching run: the image, the vCPUs and their
/// workload, the patch strategy, and the steps (build, upload, the actions, calls and
/// workload checks with what each must give). `splice run` executes one; `splice matrix`
/// runs every bundled one on each ISA, engine and ppc64le return strategy it names.
/// The format is in docs/scenarios.md.
public struct Scenario: Sendable {

    /// A call argument: a number, or `&symbol` for a symbol's address in the image.
    public enum Argument: Sendable, Equatable, CustomStringConvertible {
        case value(Int64)
        case address(String)
        public var description: String {
            switch self {
            case let .value(v): return String(v)
            case let .address(s): return "&" + s
            }
        }
    }

    /// How a `build` step builds beyond the two objects (PayloadBuilder's knobs).
    public struct BuildOptions: Sendable, Equatable {
        /// Ids of payloads built earlier that this one depends on (their build ids).
        public var depends: [String] = []
        /// Record each function's first N bytes as the target has them.
        public var expectBytes = 0
        /// Expected first bytes given outright, by function.
        public var expect: [String: [UInt8]] = [:]
        /// NOP records with a size: `bytes` bytes of `function` from `at` (a symbol of the
        /// image inside the function) or `offset`.
        public var nops: [Nop] = []
        /// false: leave the target's build id out.
        public var targetBuildID = true

        public struct Nop: Sendable, Equatable {
            public var function: String
            public var at: String?
            public var offset: Int
            public var bytes: Int
        }

        public init() {}
        var summary: String {
            var parts: [String] = []
            if !depends.isEmpty { parts.append("depends on \(depends.joined(separator: ", "))") }
            if expectBytes > 0 { parts.append("expects \(expectBytes) bytes") }
            for (f, b) in expect.sorted(by: { $0.key < $1.key }) { parts.append("expects \(f) to start \(b.hexBytes)") }
            for n in nops { parts.append("nop \(n.bytes) bytes of \(n.function) at \(n.at ?? "+\(n.offset)")") }
            if !targetBuildID { parts.append("no target build id") }
            return parts.isEmpty ? "" : " (" + parts.joined(separator: "; ") + ")"
        }
    }

    public enum Step: Sendable, Equatable, CustomStringConvertible {
        /// A payload from samples/build/patches/<original>/orig-<isa>.o and <patched>/patched-<isa>.o.
        case build(id: String, original: String, patched: String, options: BuildOptions)
        /// Uploads the payload built under `id`, or the file at `file` ({isa} substituted).
        case upload(id: String, file: String?)
        /// `engineActions`: the action must take exactly this many rendezvous (stop engine)
        /// or non-stop sequences (non-stop engine).
        case action(LivePatchService.Action, id: String, engineActions: Int? = nil)
        /// `expectString`: the result is a pointer to this NUL-terminated string.
        case call(function: String, arguments: [Argument], expect: Int64?, expectString: String?)
        /// Reads the 8-byte variable `symbol` of the image.
        case read(symbol: String, expect: Int64)
        /// Stores `value` into the 8-byte variable `symbol` from the host (no guest call:
        /// it works while an action holds the machine).
        case write(symbol: String, value: Int64)
        /// Lets the workload run at least `milliseconds` and a ring's worth of iterations
        /// on every vCPU, then checks every vCPU's newest records: each result is one of
        /// `expect` (none: not checked).
        case run(milliseconds: Int, expect: [LinearResult])
        /// Starts an action in the background (the payload reads PROGRESS until it ends).
        case begin(LivePatchService.Action, id: String)
        /// The payload's state is `state` now, and stays so for `milliseconds`.
        case state(id: String, state: LiveMachine.PayloadStatus.State, milliseconds: Int)
        /// Waits (up to 30 s) until the payload is no longer in PROGRESS, then its state
        /// must be `state`; a failed action fails the step with its error.
        case wait(id: String, state: LiveMachine.PayloadStatus.State)
        /// Applies and reverts `id` `cycles` times while every vCPU runs the workload;
        /// after each action every vCPU's whole ring (64 records, spanning the action) is
        /// read and each result must be one of `expect`. `tally`: the workload also checks
        /// every result itself as it returns (syscall_workload) and tallies old, new and
        /// other in its ring page: other must stay 0 and both old and new must occur.
        case hammer(id: String, cycles: Int, expect: [LinearResult], tally: Bool)
        /// The image's executable bytes are the ones it was loaded with.
        case textUnchanged

        public var description: String {
            switch self {
            case let .build(id, o, p, options): return "build \(id) from \(o == p ? o : "\(o) -> \(p)")" + options.summary
            case let .upload(id, file): return "upload \(id)" + (file.map { " (\($0))" } ?? "")
            case let .action(a, id, n): return "\(a.rawValue) \(id)" + (n.map { " in \($0) engine action\($0 == 1 ? "" : "s")" } ?? "")
            case let .call(f, args, expect, string):
                return "call \(f)(\(args.map(\.description).joined(separator: ", ")))" + (expect.map { " == \($0)" } ?? "")
                    + (string.map { " == \"\($0)\"" } ?? "")
            case let .read(s, e): return "read \(s) == \(e)"
            case let .write(s, v): return "write \(s) = \(v)"
            case let .run(ms, e): return "run \(ms) ms" + (e.isEmpty ? "" : ", results " + e.map(\.description).joined(separator: " or "))
            case let .begin(a, id): return "begin \(a.rawValue) \(id)"
            case let .state(id, state, ms): return "\(id) is \(state)" + (ms > 0 ? " for \(ms) ms" : "")
            case let .wait(id, state): return "wait for \(id): \(state)"
            case let .hammer(id, cycles, e, tally):
                return "hammer: apply and revert \(id) \(cycles) times, results " + e.map(\.description).joined(separator: " or ")
                    + (tally ? ", every call checked in the guest" : "")
            case .textUnchanged: return "text unchanged"
            }
        }
    }

    public struct Entry: Sendable {
        public var step: Step
        /// The step must fail with an error containing this text.
        public var fails: String?
        public var description: String { step.description + (fails.map { " (must fail: \($0))" } ?? "") }
    }

    public var name: String
    public var description: String
    public var path: String
    /// The image, relative to the samples directory unless absolute; {isa} is substituted.
    public var image: String
    public var isas: [String]
    public var cpus: Int
    public var workload: String?
    public var engines: [PatchEngineKind]
    /// Return strategies to run with, on backends that offer a choice (PatchBackend.returnStrategies).
    public var returnStrategies: [String]
    public var steps: [Entry]

    /// The ISAs with a patch backend, as the registry names them.
    public static var isaNames: [String] { Architectures.backends.map(\.architecture.name) }

    public init(contentsOf path: String) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ScenarioError(description: "\(path): cannot read the scenario")
        }
        try self.init(yaml: text, path: path)
    }

    public init(yaml text: String, path: String) throws {
        func fail(_ why: String) -> ScenarioError { ScenarioError(description: "\(path): \(why)") }
        let root: Any?
        do { root = try Yams.load(yaml: text) } catch { throw fail("not valid YAML: \(error)") }
        guard let doc = root as? [String: Any] else { throw fail("must be a mapping with name, image and steps") }
        let known: Set = ["name", "description", "image", "isa", "cpus", "workload", "engine", "return-strategy", "steps"]
        if let unknown = doc.keys.filter({ !known.contains($0) }).sorted().first {
            throw fail("unknown key '\(unknown)' (known: \(known.sorted().joined(separator: ", ")))")
        }
        func strings(_ key: String, default d: [String]) throws -> [String] {
            switch doc[key] {
            case nil: return d
            case let s as String: return [s]
            case let a as [Any]:
                return try a.map { guard let s = $0 as? String else { throw fail("'\(key)' lists strings") }; return s }
            default: throw fail("'\(key)' is a string or a list of strings")
            }
        }
        self.path = path
        name = doc["name"] as? String ?? ((path as NSString).lastPathComponent as NSString).deletingPathExtension
        description = doc["description"] as? String ?? ""
        guard let image = doc["image"] as? String else { throw fail("needs 'image' (e.g. kernel-{isa}.elf)") }
        self.image = image
        isas = try strings("isa", default: Self.isaNames)
        if let bad = isas.first(where: { !Self.isaNames.contains($0) }) { throw fail("isa '\(bad)' is not one of \(Self.isaNames)") }
        cpus = doc["cpus"] as? Int ?? 2
        guard (1...64).contains(cpus) else { throw fail("cpus must be 1 to 64") }
        workload = doc["workload"].map { $0 as? String ?? "" } ?? "workload"
        if workload == "none" || workload == "" { workload = nil }
        engines = try strings("engine", default: PatchEngineKind.allCases.map(\.rawValue)).map {
            guard let e = PatchEngineKind(rawValue: $0) else { throw fail("engine '\($0)' is stop or nonstop") }
            return e
        }
        let offered = Architectures.returnStrategies
        returnStrategies = try strings("return-strategy", default: offered)
        if let bad = returnStrategies.first(where: { !offered.contains($0) }) {
            throw fail("return-strategy '\(bad)' is " + offered.joined(separator: " or "))
        }
        guard let rawSteps = doc["steps"] as? [Any], !rawSteps.isEmpty else { throw fail("needs a list of 'steps'") }
        steps = try rawSteps.enumerated().map { i, raw in
            do { return try Self.parseStep(raw) } catch let f as ScenarioError { throw fail("step \(i + 1): \(f.description)") }
        }
    }

    static func parseStep(_ raw: Any) throws -> Entry {
        func fail(_ why: String) -> ScenarioError { ScenarioError(description: why) }
        guard var map = raw as? [String: Any] else { throw fail("a step is a mapping such as 'apply: p02'") }
        let fails = map.removeValue(forKey: "fails").map { "\($0)" }
        guard map.count == 1, let (verb, value) = map.first else {
            throw fail("one verb per step (with an optional 'fails:'), got \(map.keys.sorted())")
        }
        func args() throws -> [String: Any] {
            guard let a = value as? [String: Any] else { throw fail("'\(verb)' takes a mapping") }
            return a
        }
        func integer(_ v: Any?, _ what: String) throws -> Int64 {
            if let i = v as? Int { return Int64(i) }
            if let s = v as? String, let i = s.hasPrefix("0x") ? Int64(s.dropFirst(2), radix: 16) : Int64(s) { return i }
            throw fail("\(what) must be an integer")
        }
        /// One a·x+b or a list of them.
        func linears(_ v: Any?) throws -> [LinearResult] {
            guard let v else { return [] }
            return try (v as? [Any] ?? [v]).map {
                guard let l = LinearResult("\($0)") else { throw fail("expect is a·x+b, such as 3x+2, or a list of them (got \($0))") }
                return l
            }
        }
        let step: Step
        switch verb {
        case "build":
            let a = try args()
            guard let id = a["id"] as? String else { throw fail("build needs an id") }
            let known: Set = ["id", "patch", "original", "patched", "depends", "expect-bytes", "expect", "nop", "target-build-id"]
            if let unknown = a.keys.filter({ !known.contains($0) }).sorted().first {
                throw fail("build: unknown key '\(unknown)' (known: \(known.sorted().joined(separator: ", ")))")
            }
            var o = BuildOptions()
            o.depends = a["depends"].map { ($0 as? [Any] ?? [$0]).map { "\($0)" } } ?? []
            o.expectBytes = Int(try a["expect-bytes"].map { try integer($0, "expect-bytes") } ?? 0)
            if let e = a["expect"] {
                guard let m = e as? [String: Any] else { throw fail("build: expect maps a function to hex bytes, e.g. {f: \"de ad\"}") }
                for (f, v) in m {
                    let hex = "\(v)".split(whereSeparator: { $0 == " " }).map { UInt8($0, radix: 16) }
                    guard !hex.isEmpty, hex.allSatisfy({ $0 != nil }) else { throw fail("build: expect \(f): '\(v)' is not hex bytes") }
                    o.expect[f] = hex.map { $0! }
                }
            }
            for n in a["nop"] as? [Any] ?? [] {
                guard let m = n as? [String: Any], let f = m["function"] as? String, let b = m["bytes"] else {
                    throw fail("build: a nop is {function, at or offset, bytes}")
                }
                o.nops.append(.init(function: f, at: m["at"] as? String,
                                    offset: Int(try m["offset"].map { try integer($0, "offset") } ?? 0),
                                    bytes: Int(try integer(b, "bytes"))))
            }
            if let t = a["target-build-id"] {
                guard let b = t as? Bool else { throw fail("build: target-build-id is true or false") }
                o.targetBuildID = b
            }
            if let patch = a["patch"] as? String {
                step = .build(id: id, original: patch, patched: patch, options: o)
            } else if let orig = a["original"] as? String, let p = a["patched"] as? String {
                step = .build(id: id, original: orig, patched: p, options: o)
            } else {
                throw fail("build needs 'patch' (a samples/build/patches folder) or 'original' and 'patched'")
            }
        case "upload":
            if let id = value as? String {
                step = .upload(id: id, file: nil)
            } else {
                let a = try args()
                guard let id = a["id"] as? String else { throw fail("upload needs an id") }
                step = .upload(id: id, file: a["file"] as? String)
            }
        case let v where LivePatchService.Action(rawValue: v) != nil:
            if let id = value as? String {
                step = .action(LivePatchService.Action(rawValue: v)!, id: id)
            } else if let a = value as? [String: Any], let id = a["id"] as? String {
                step = .action(LivePatchService.Action(rawValue: v)!, id: id,
                               engineActions: try a["engine-actions"].map { Int(try integer($0, "engine-actions")) })
            } else {
                throw fail("'\(verb)' takes a payload id, or {id, engine-actions}")
            }
        case "call":
            let a = try args()
            guard let f = a["function"] as? String else { throw fail("call needs a function") }
            let arguments = try (a["args"] as? [Any] ?? []).map { v -> Argument in
                if let s = v as? String, s.hasPrefix("&") { return .address(String(s.dropFirst())) }
                return .value(try integer(v, "an argument"))
            }
            step = .call(function: f, arguments: arguments, expect: try a["expect"].map { try integer($0, "expect") },
                         expectString: a["expect-string"].map { "\($0)" })
        case "read":
            let a = try args()
            guard let s = a["symbol"] as? String else { throw fail("read needs a symbol") }
            step = .read(symbol: s, expect: try integer(a["expect"], "expect"))
        case "write":
            let a = try args()
            guard let s = a["symbol"] as? String else { throw fail("write needs a symbol") }
            step = .write(symbol: s, value: try integer(a["value"], "value"))
        case "begin":
            let a = try args()
            guard let v = a["action"] as? String, let action = LivePatchService.Action(rawValue: v), let id = a["id"] as? String else {
                throw fail("begin needs an action (check, apply, revert, replace, unload) and an id")
            }
            step = .begin(action, id: id)
        case "state":
            let a = try args()
            guard let id = a["id"] as? String, let st = (a["is"] as? String).flatMap(LiveMachine.PayloadStatus.State.init(rawValue:)) else {
                throw fail("state needs an id and 'is' (one of " + LiveMachine.PayloadStatus.State.allCases.map(\.rawValue).joined(separator: ", ") + ")")
            }
            step = .state(id: id, state: st, milliseconds: Int(try a["for-ms"].map { try integer($0, "for-ms") } ?? 0))
        case "wait":
            let a = try args()
            guard let id = a["id"] as? String, let st = (a["until"] as? String).flatMap(LiveMachine.PayloadStatus.State.init(rawValue:)) else {
                throw fail("wait needs an id and 'until' (one of " + LiveMachine.PayloadStatus.State.allCases.map(\.rawValue).joined(separator: ", ") + ")")
            }
            step = .wait(id: id, state: st)
        case "hammer":
            let a = try args()
            guard let id = a["id"] as? String else { throw fail("hammer needs an id") }
            let e = try linears(a["expect"])
            guard !e.isEmpty else { throw fail("hammer needs expect: the results allowed, e.g. [3x+1, 3x+2]") }
            step = .hammer(id: id, cycles: Int(try a["cycles"].map { try integer($0, "cycles") } ?? 10), expect: e,
                           tally: a["tally"] as? Bool ?? false)
        case "run":
            let a = value is NSNull ? [:] : try args()
            step = .run(milliseconds: Int(try a["ms"].map { try integer($0, "ms") } ?? 0), expect: try linears(a["expect"]))
        case "text-unchanged":
            step = .textUnchanged
        default:
            throw fail("unknown step '\(verb)' (build, upload, check, apply, revert, replace, unload, call, read, write, run, "
                       + "begin, state, wait, hammer, text-unchanged)")
        }
        return Entry(step: step, fails: fails)
    }

    /// The bundled scenarios' folder: scenarios/ next to samples/.
    public static func bundledDirectory() throws -> String {
        ((try Samples.directory() as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent + "/scenarios"
    }

    /// The conformance suite's folder: samples/conformance (docs/conformance.md).
    public static func conformanceDirectory() throws -> String {
        ((try Samples.directory() as NSString).deletingLastPathComponent as NSString).appendingPathComponent("conformance")
    }

    /// Every bundled scenario (scenarios/*.yaml), in file-name order.
    public static func bundled() throws -> [Scenario] { try load(directory: try bundledDirectory()) }

    /// The conformance suite (samples/conformance/*.yaml): Xen's test payloads and Linux's
    /// livepatch selftests, one scenario per case.
    public static func conformance() throws -> [Scenario] { try load(directory: try conformanceDirectory()) }

    /// The bundled scenarios, then the conformance suite: what `splice matrix` runs.
    public static func all() throws -> [Scenario] { try bundled() + conformance() }

    static func load(directory dir: String) throws -> [Scenario] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else {
            throw ScenarioError(description: "no scenarios folder at \(dir)")
        }
        return try names.filter { $0.hasSuffix(".yaml") }.sorted().map { try Scenario(contentsOf: dir + "/" + $0) }
    }
}

/// A scenario that cannot be read, or a step that did not do what it expected.
public struct ScenarioError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

extension Scenario {
    /// A scenario file, or a bundled scenario (scenarios/, samples/conformance/) by file
    /// stem or by the name inside it.
    public static func named(_ nameOrPath: String) throws -> Scenario {
        if FileManager.default.fileExists(atPath: nameOrPath) { return try Scenario(contentsOf: nameOrPath) }
        for dir in [try Scenario.bundledDirectory(), try Scenario.conformanceDirectory()] {
            let file = dir + "/\(nameOrPath).yaml"
            if FileManager.default.fileExists(atPath: file) { return try Scenario(contentsOf: file) }
        }
        let bundled = try Scenario.all()
        guard let s = bundled.first(where: { $0.name == nameOrPath }) else {
            throw ScenarioError(description: "no scenario file \(nameOrPath), and no bundled scenario of that name (bundled: "
                          + bundled.map(\.name).joined(separator: ", ") + ")")
        }
        return s
    }
}
