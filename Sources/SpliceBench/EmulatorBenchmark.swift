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

/// `splice bench emu`: guest instructions per second through Splice's machine, next to
/// the same call driven by the bare-Unicorn C program `unicorn-bare-bench`.
public struct EmulatorBenchmark {
    public struct Side: Sendable, Codable {
        public var instructionsPerCall: UInt64
        public var runs: Int
        public var seconds: Double
        public var instructionsPerSecond: Double { Double(instructionsPerCall) * Double(runs) / seconds }
    }

    public struct Row: Sendable, Codable {
        public var architecture: String
        public var image: String
        public var function: String
        public var argument: Int64
        public var splice: Side
        public var bare: Side
        public var ratio: Double { splice.instructionsPerSecond / bare.instructionsPerSecond }
    }


    public var function = "mix_loop"
    public var argument: Int64 = 1_000_000
    public var runs = 20
    public var rounds = 3
    /// The wall-clock bound Splice passes to each call (0: none, as the bare program).
    /// Unicorn enforces a timeout with a timer thread per uc_emu_start, so it has a cost.
    public var timeoutMicroseconds: UInt64 = 0
    public var bareExecutable: String

    public init(bareExecutable: String) { self.bareExecutable = bareExecutable }

    /// Measures one image: per round, the bare program then Splice; best round of each.
    public func measure(imagePath: String) throws -> Row {
        let image = try loadImage(path: imagePath)
        let counted = try image.call(function, [argument], countInstructions: true)
        guard let perCall = counted.instructions else { throw BenchmarkError(description: "no instruction count") }
        var best: (splice: Side?, bare: Side?) = (nil, nil)
        for _ in 0..<rounds {
            let bare = try runBare(imagePath: imagePath)
            guard bare.instructionsPerCall == perCall else {
                throw BenchmarkError(description: "bare Unicorn counted \(bare.instructionsPerCall) instructions per call, Splice \(perCall): not the same work")
            }
            let limits = VCPU.Limits(timeoutMicroseconds: timeoutMicroseconds)
            _ = try image.call(function, [argument], countInstructions: false, limits: limits) // warm, uninstrumented
            let start = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<runs {
                let r = try image.call(function, [argument], countInstructions: false, limits: limits)
                guard r.value == counted.value else { throw BenchmarkError(description: "result changed between runs") }
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            let splice = Side(instructionsPerCall: perCall, runs: runs, seconds: seconds)
            if best.splice == nil || seconds < best.splice!.seconds { best.splice = splice }
            if best.bare == nil || bare.seconds < best.bare!.seconds { best.bare = bare }
        }
        return Row(architecture: image.machine.architecture.name, image: (imagePath as NSString).lastPathComponent,
                   function: function, argument: argument, splice: best.splice!, bare: best.bare!)
    }

    func runBare(imagePath: String) throws -> Side {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: bareExecutable)
        process.arguments = [imagePath, function, String(argument), String(runs)]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw BenchmarkError(description: "\(bareExecutable) exited with \(process.terminationStatus): \(text)")
        }
        var fields: [String: String] = [:]
        for pair in text.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            let kv = pair.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { fields[String(kv[0])] = String(kv[1]) }
        }
        guard let n = fields["instructions"].flatMap(UInt64.init), let r = fields["runs"].flatMap(Int.init),
              let s = fields["seconds"].flatMap(Double.init) else {
            throw BenchmarkError(description: "cannot read the bare benchmark's output: \(text)")
        }
        return Side(instructionsPerCall: n, runs: r, seconds: s)
    }
}
