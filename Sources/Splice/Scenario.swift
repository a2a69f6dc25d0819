import Foundation
import Yams

/// A checked-in description of a live-patching run: the image, the vCPUs and their
/// workload, the patch strategy, and the steps (build, upload, the actions, calls and
/// workload checks with what each must give). `splice run` executes one; `splice matrix`
/// runs every bundled one on each ISA, engine and ppc64le return strategy it names.
/// The format is in docs/scenarios.md.
public struct Scenario: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// y = a·x + b, what the workload's results must be.
    public struct Linear: Sendable, Equatable, CustomStringConvertible, Codable {
        public var a: Int64, b: Int64
        public var description: String {
            (a == 1 ? "x" : "\(a)x") + (b == 0 ? "" : b > 0 ? "+\(b)" : "\(b)")
        }

        /// "3x+2", "3*x + 2", "x-1", "2x".
        public init?(_ text: String) {
            let t = text.replacingOccurrences(of: " ", with: "").replacingOccurrences(of: "*", with: "")
            guard let xi = t.firstIndex(of: "x") else { return nil }
            let head = String(t[..<xi]), tail = String(t[t.index(after: xi)...])
            guard let a = head.isEmpty ? 1 : head == "-" ? -1 : Int64(head) else { return nil }
            guard let b = tail.isEmpty ? 0 : Int64(tail.hasPrefix("+") ? String(tail.dropFirst()) : tail) else { return nil }
            self.a = a
            self.b = b
        }
    }

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

    public enum Step: Sendable, Equatable, CustomStringConvertible {
        /// A payload from samples/build/patches/<original>/orig-<isa>.o and <patched>/patched-<isa>.o.
        case build(id: String, original: String, patched: String)
        /// Uploads the payload built under `id`, or the file at `file` ({isa} substituted).
        case upload(id: String, file: String?)
        case action(LivePatchService.Action, id: String)
        case call(function: String, arguments: [Argument], expect: Int64?)
        /// Reads the 8-byte variable `symbol` of the image.
        case read(symbol: String, expect: Int64)
        /// Lets the workload run at least `milliseconds` and a ring's worth of iterations
        /// on every vCPU, then checks every vCPU's newest records against `expect`.
        case run(milliseconds: Int, expect: Linear?)
        /// The image's executable bytes are the ones it was loaded with.
        case textUnchanged

        public var description: String {
            switch self {
            case let .build(id, o, p): return "build \(id) from \(o == p ? o : "\(o) -> \(p)")"
            case let .upload(id, file): return "upload \(id)" + (file.map { " (\($0))" } ?? "")
            case let .action(a, id): return "\(a.rawValue) \(id)"
            case let .call(f, args, expect):
                return "call \(f)(\(args.map(\.description).joined(separator: ", ")))" + (expect.map { " == \($0)" } ?? "")
            case let .read(s, e): return "read \(s) == \(e)"
            case let .run(ms, e): return "run \(ms) ms" + (e.map { ", results \($0)" } ?? "")
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
    public var returnStrategies: [ReturnStrategy]
    public var steps: [Entry]

    public static let isaNames = ["x86_64", "ppc64le"]

    public init(contentsOf path: String) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw Failure(description: "\(path): cannot read the scenario")
        }
        try self.init(yaml: text, path: path)
    }

    public init(yaml text: String, path: String) throws {
        func fail(_ why: String) -> Failure { Failure(description: "\(path): \(why)") }
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
        returnStrategies = try strings("return-strategy", default: ReturnStrategy.allCases.map(\.rawValue)).map {
            guard let r = ReturnStrategy(rawValue: $0) else { throw fail("return-strategy '\($0)' is frameless or shadow-stack") }
            return r
        }
        guard let rawSteps = doc["steps"] as? [Any], !rawSteps.isEmpty else { throw fail("needs a list of 'steps'") }
        steps = try rawSteps.enumerated().map { i, raw in
            do { return try Self.parseStep(raw) } catch let f as Failure { throw fail("step \(i + 1): \(f.description)") }
        }
    }

    static func parseStep(_ raw: Any) throws -> Entry {
        func fail(_ why: String) -> Failure { Failure(description: why) }
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
        let step: Step
        switch verb {
        case "build":
            let a = try args()
            guard let id = a["id"] as? String else { throw fail("build needs an id") }
            if let patch = a["patch"] as? String {
                step = .build(id: id, original: patch, patched: patch)
            } else if let o = a["original"] as? String, let p = a["patched"] as? String {
                step = .build(id: id, original: o, patched: p)
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
            guard let id = value as? String else { throw fail("'\(verb)' takes a payload id") }
            step = .action(LivePatchService.Action(rawValue: v)!, id: id)
        case "call":
            let a = try args()
            guard let f = a["function"] as? String else { throw fail("call needs a function") }
            let arguments = try (a["args"] as? [Any] ?? []).map { v -> Argument in
                if let s = v as? String, s.hasPrefix("&") { return .address(String(s.dropFirst())) }
                return .value(try integer(v, "an argument"))
            }
            step = .call(function: f, arguments: arguments, expect: try a["expect"].map { try integer($0, "expect") })
        case "read":
            let a = try args()
            guard let s = a["symbol"] as? String else { throw fail("read needs a symbol") }
            step = .read(symbol: s, expect: try integer(a["expect"], "expect"))
        case "run":
            let a = value is NSNull ? [:] : try args()
            var linear: Linear?
            if let e = a["expect"] {
                guard let l = Linear("\(e)") else { throw fail("run's expect is a·x+b, such as 3x+2 (got \(e))") }
                linear = l
            }
            step = .run(milliseconds: Int(try a["ms"].map { try integer($0, "ms") } ?? 0), expect: linear)
        case "text-unchanged":
            step = .textUnchanged
        default:
            throw fail("unknown step '\(verb)' (build, upload, check, apply, revert, replace, unload, call, read, run, text-unchanged)")
        }
        return Entry(step: step, fails: fails)
    }

    /// The bundled scenarios' folder: scenarios/ next to samples/.
    public static func bundledDirectory() throws -> String {
        ((try Samples.directory() as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent + "/scenarios"
    }

    /// Every bundled scenario (scenarios/*.yaml), in file-name order.
    public static func bundled() throws -> [Scenario] {
        let dir = try bundledDirectory()
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else {
            throw Failure(description: "no scenarios folder at \(dir)")
        }
        return try names.filter { $0.hasSuffix(".yaml") }.sorted().map { try Scenario(contentsOf: dir + "/" + $0) }
    }
}
