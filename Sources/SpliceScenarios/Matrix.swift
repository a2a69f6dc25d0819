import SpliceArchitectures
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

/// `splice matrix`: every bundled scenario × each variant it names, and the results in
/// the forms CI systems read.
public enum Matrix {
    /// Runs the scenarios one variant at a time; `onReport` sees each as it finishes.
    public static func run(_ scenarios: [Scenario], samples: String, onReport: (ScenarioReport) -> Void = { _ in }) -> [ScenarioReport] {
        var reports: [ScenarioReport] = []
        for s in scenarios {
            for v in ScenarioVariant.all(of: s) {
                let r = ScenarioRunner.run(s, v, samples: samples)
                onReport(r)
                reports.append(r)
            }
        }
        return reports
    }

    /// A readable table, one row per scenario and variant.
    public static func table(_ reports: [ScenarioReport]) -> String {
        let header = ["scenario", "isa", "engine", "returns", "steps", "seconds", "result"]
        var rows = reports.map { r -> [String] in
            let passedSteps = r.steps.filter(\.passed).count
            let result: String
            if r.passed {
                result = "pass"
            } else if let e = r.error {
                result = "FAIL: " + e
            } else if let bad = r.steps.first(where: { !$0.passed }) {
                result = "FAIL at step \(bad.index) (\(bad.step)): \(bad.detail)"
            } else {
                result = "FAIL"
            }
            // The whole message is in the JUnit XML and the JSON; the table keeps one line.
            let short = result.count > 90 ? String(result.prefix(89)) + "…" : result
            return [r.scenario, r.variant.isa, r.variant.engine.rawValue, r.variant.returnStrategy ?? "-",
                    "\(passedSteps)/\(r.steps.count)", String(format: "%.2f", r.seconds), short]
        }
        rows.insert(header, at: 0)
        let widths = header.indices.map { c in rows.map { $0[c].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { c, cell in c == row.count - 1 ? cell : cell.padding(toLength: widths[c], withPad: " ", startingAt: 0) }
                .joined(separator: "  ")
        }.joined(separator: "\n")
    }

    /// JUnit XML (the Ant schema most CI systems read): a testsuite per scenario, a
    /// testcase per variant, a failure element naming the step that failed, and every
    /// step's outcome in system-out.
    public static func junitXML(_ reports: [ScenarioReport]) -> String {
        var out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        let failures = reports.filter { !$0.passed }.count
        let total = reports.reduce(0) { $0 + $1.seconds }
        out += "<testsuites name=\"splice matrix\" tests=\"\(reports.count)\" failures=\"\(failures)\" errors=\"0\" time=\"\(seconds(total))\">\n"
        var order: [String] = []
        var byScenario: [String: [ScenarioReport]] = [:]
        for r in reports {
            if byScenario[r.scenario] == nil { order.append(r.scenario) }
            byScenario[r.scenario, default: []].append(r)
        }
        for name in order {
            let rs = byScenario[name]!
            out += "  <testsuite name=\"\(escape(name))\" tests=\"\(rs.count)\" failures=\"\(rs.filter { !$0.passed }.count)\" "
                + "errors=\"0\" skipped=\"0\" time=\"\(seconds(rs.reduce(0) { $0 + $1.seconds }))\">\n"
            for r in rs {
                out += "    <testcase classname=\"splice.\(escape(name))\" name=\"\(escape(r.variant.description))\" time=\"\(seconds(r.seconds))\">\n"
                if !r.passed {
                    let bad = r.steps.first { !$0.passed }
                    let message = r.error ?? bad.map { "step \($0.index) (\($0.step)): \($0.detail)" } ?? "did not finish"
                    out += "      <failure message=\"\(escape(message))\" type=\"ScenarioFailure\">\(escape(message))</failure>\n"
                }
                let log = r.steps.map { "\($0.passed ? "ok  " : "FAIL") \($0.index). \($0.step): \($0.detail)" }.joined(separator: "\n")
                out += "      <system-out>\(escape(log))</system-out>\n"
                out += "    </testcase>\n"
            }
            out += "  </testsuite>\n"
        }
        out += "</testsuites>\n"
        return out
    }

    static func seconds(_ s: Double) -> String { String(format: "%.3f", s) }

    /// Text for XML attributes and content; characters XML 1.0 cannot hold become '?'.
    public static func escape(_ s: String) -> String {
        var out = ""
        for u in s.unicodeScalars {
            switch u {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            case "\t", "\n", "\r": out.unicodeScalars.append(u)
            default:
                out += u.value < 0x20 || (0xFFFE...0xFFFF).contains(u.value) ? "?" : String(u)
            }
        }
        return out
    }
}
