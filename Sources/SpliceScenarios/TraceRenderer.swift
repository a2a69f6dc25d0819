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

/// Pictures and reports of a scenario run for porting engineers: an SVG timeline of each
/// rendezvous (one lane per vCPU) and a markdown report of every patch site before and
/// after, in Capstone's words.
public enum TraceRenderer {
    /// What a vCPU is doing during a stretch of the timeline.
    public enum Activity: String, CaseIterable, Sendable {
        case running, waiting
        case interruptsOff = "interrupts-off"
        case patching, resuming
        case absent

        var color: String {
            switch self {
            case .running: return "#7fbf7f"
            case .waiting: return "#f2d16b"
            case .interruptsOff: return "#f29e4c"
            case .patching: return "#d9534f"
            case .resuming: return "#5b9bd5"
            case .absent: return "#c8c8c8"
            }
        }

        var label: String {
            switch self {
            case .running: return "running guest code"
            case .waiting: return "waiting at the safe point"
            case .interruptsOff: return "interrupts off"
            case .patching: return "patching (master)"
            case .resuming: return "dropping translations, resuming"
            case .absent: return "did not arrive"
            }
        }
    }

    public struct Segment: Equatable, Sendable {
        public var activity: Activity
        public var start: UInt64, end: UInt64
    }

    /// Each vCPU's segments, from the request (0) to `end` nanoseconds.
    public static func lanes(_ t: Rendezvous.Trace, end: UInt64) -> [(vcpu: Int, master: Bool, segments: [Segment])] {
        var out: [(Int, Bool, [Segment])] = []
        let byIndex = Dictionary(t.perVCPU.map { ($0.index, $0) }, uniquingKeysWith: { a, _ in a })
        let count = max(t.vcpus, (t.perVCPU.map(\.index).max() ?? -1) + 1)
        for i in 0..<count {
            guard let p = byIndex[i] else {
                out.append((i, false, [Segment(activity: .absent, start: 0, end: end)]))
                continue
            }
            var s: [Segment] = []
            func add(_ a: Activity, _ from: UInt64, _ to: UInt64) { if to > from { s.append(Segment(activity: a, start: from, end: to)) } }
            let master = i == t.master
            add(.running, 0, p.arrived)
            if t.aborted {
                add(.waiting, p.arrived, p.released)
            } else if master {
                add(.waiting, p.arrived, t.allArrived)
                add(.interruptsOff, t.allArrived, t.interruptsOff)
                add(.patching, t.interruptsOff, t.written)
                add(.interruptsOff, t.written, p.released)
            } else {
                add(.waiting, p.arrived, p.interruptsOff)
                add(.interruptsOff, p.interruptsOff, p.released)
            }
            add(.resuming, p.released, p.resumed)
            add(.running, p.resumed, end)
            out.append((i, master, s))
        }
        return out
    }

    /// An SVG timeline of one rendezvous: a lane per vCPU (`<g class="lane"
    /// data-vcpu="N">`), a time axis in µs, a legend.
    public static func svg(_ t: Rendezvous.Trace, title: String) -> String {
        // The picture ends when the last vCPU is back in guest code. The requester
        // (a host thread that may wait for a core) often learns of it much later:
        // that time is in the summary line, not on the axis.
        let last = max(t.perVCPU.map(\.resumed).max() ?? 0, t.written, t.abortedAt, 1)
        let end = last + last / 12
        let lanes = lanes(t, end: end)
        let left = 150.0, right = 30.0, plot = 820.0, laneHeight = 24.0, gap = 8.0, top = 70.0
        let width = left + plot + right
        let lanesBottom = top + Double(lanes.count) * (laneHeight + gap)
        let height = lanesBottom + 40 + Double(Activity.allCases.count) * 18
        func x(_ ns: UInt64) -> Double { left + Double(ns) / Double(end) * plot }
        func f(_ v: Double) -> String { String(format: "%.2f", v) }
        func us(_ ns: UInt64) -> String { String(format: "%.1f", Double(ns) / 1000) }
        var o = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(f(width))" height="\(f(height))" viewBox="0 0 \(f(width)) \(f(height))" font-family="sans-serif" font-size="12">
            <title>\(Matrix.escape(title))</title>
            <rect x="0" y="0" width="\(f(width))" height="\(f(height))" fill="white"/>
            <text x="10" y="20" font-size="15" font-weight="bold">\(Matrix.escape(title))</text>
            <text x="10" y="40">\(Matrix.escape(summary(t)))</text>

            """
        // Axis: about eight round ticks.
        let spanUS = Double(end) / 1000
        let rawStep = spanUS / 8
        let magnitude = pow(10, floor(log10(max(rawStep, 1e-3))))
        let step = [1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= rawStep } ?? rawStep
        o += "<g class=\"axis\">\n"
        var tick = 0.0
        while tick <= spanUS {
            let tx = left + tick / spanUS * plot
            o += "<line x1=\"\(f(tx))\" y1=\"\(f(top - 8))\" x2=\"\(f(tx))\" y2=\"\(f(lanesBottom))\" stroke=\"#ddd\"/>"
            o += "<text x=\"\(f(tx))\" y=\"\(f(top - 12))\" text-anchor=\"middle\" fill=\"#555\">\(String(format: tick < 10 ? "%.1f" : "%.0f", tick)) µs</text>\n"
            tick += step
        }
        o += "</g>\n"
        for (n, lane) in lanes.enumerated() {
            let y = top + Double(n) * (laneHeight + gap)
            o += "<g class=\"lane\" data-vcpu=\"\(lane.vcpu)\">\n"
            o += "<text x=\"10\" y=\"\(f(y + laneHeight * 0.7))\">vCPU \(lane.vcpu)\(lane.master ? " (master)" : "")</text>\n"
            for s in lane.segments {
                o += "<rect class=\"\(s.activity.rawValue)\" x=\"\(f(x(s.start)))\" y=\"\(f(y))\" width=\"\(f(max(x(s.end) - x(s.start), 0.5)))\" "
                    + "height=\"\(f(laneHeight))\" fill=\"\(s.activity.color)\">"
                    + "<title>vCPU \(lane.vcpu): \(s.activity.label), \(us(s.start))–\(us(s.end)) µs</title></rect>\n"
            }
            o += "</g>\n"
        }
        o += "<g class=\"legend\">\n"
        for (n, a) in Activity.allCases.enumerated() {
            let y = lanesBottom + 24 + Double(n) * 18
            o += "<rect x=\"\(f(left))\" y=\"\(f(y - 10))\" width=\"14\" height=\"12\" fill=\"\(a.color)\"/>"
            o += "<text x=\"\(f(left + 20))\" y=\"\(f(y))\">\(a.label)</text>\n"
        }
        o += "</g>\n</svg>\n"
        return o
    }

    static func summary(_ t: Rendezvous.Trace) -> String {
        func us(_ ns: UInt64) -> String { String(format: "%.1f", Double(ns) / 1000) }
        if t.aborted { return "aborted at \(us(t.abortedAt)) µs: not every vCPU arrived; nothing was written" }
        return "\(t.vcpus) vCPUs; master vCPU \(t.master): all arrived \(us(t.allArrived)) µs, interrupts off \(us(t.interruptsOff)), "
            + "written \(us(t.written)) (\(t.ranges) ranges), last vCPU resumed \(us(t.perVCPU.map(\.resumed).max() ?? 0)); "
            + "the requester saw it at \(us(t.resumed))"
    }

    /// A markdown report of a run: each step, and for each action its timeline (when
    /// `timelines` names one for its index) and the sites it changed, before and after.
    public static func markdown(_ r: ScenarioReport, timelines: [Int: String]) -> String {
        var o = "# Scenario \(r.scenario), \(r.variant)\n\n"
        o += "\(r.passed ? "Passed" : "**FAILED**"): \(r.steps.filter(\.passed).count) of \(r.steps.count) steps in "
            + String(format: "%.2f s", r.seconds) + " (`\(r.file)`).\n\n"
        if let e = r.error { o += "Setup failed: \(e)\n\n" }
        o += "| # | step | result | ms |\n|---|---|---|---|\n"
        for s in r.steps {
            o += "| \(s.index) | \(cell(s.step)) | \(s.passed ? "ok" : "**FAIL**"): \(cell(s.detail)) | " + String(format: "%.1f", s.milliseconds) + " |\n"
        }
        for s in r.steps where s.rendezvous != nil || !(s.sites ?? []).isEmpty {
            o += "\n## Step \(s.index): \(s.step)\n\n"
            if let t = s.rendezvous {
                o += summary(t) + ".\n\n"
                if let file = timelines[s.index] { o += "![rendezvous timeline of step \(s.index)](\(file))\n\n" }
            }
            for site in s.sites ?? [] {
                o += "### \(site.location) (\(hex(site.address)))\n\n"
                o += "bytes `\(site.bytesBefore)` → `\(site.bytesAfter)`\n\n"
                o += "before:\n\n```\n" + site.before.joined(separator: "\n") + "\n```\n\nafter:\n\n```\n" + site.after.joined(separator: "\n") + "\n```\n\n"
            }
        }
        return o
    }

    static func cell(_ s: String) -> String { s.replacingOccurrences(of: "|", with: "\\|").replacingOccurrences(of: "\n", with: " ") }
}
