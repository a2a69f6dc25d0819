import ArgumentParser
import Foundation
import SpliceBench
import SpliceFiles
import SpliceHarness
import SpliceMachine

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Benchmarks that print what they measure on this machine.",
                                                    subcommands: [Emu.self, Redirect.self, PayloadLoad.self, RendezvousLatency.self,
                                                                  Engines.self, SignatureScan.self, Report.self])

    struct SignatureScan: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "signature",
            abstract: "Finding and checking an upload's appended signature, next to one SHA-256 of the same bytes.")
        @Option(help: "Size of the generated uploads, in MB.") var megabytes = 45
        @Option(help: "Rounds (best of each).") var rounds = 5
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            guard (1...1024).contains(megabytes) else { throw ValidationError("--megabytes is 1 to 1024") }
            guard rounds >= 1 else { throw ValidationError("--rounds is at least 1") }
        }

        func run() throws {
            let rows = try reportingErrors { try SignatureBenchmark.run(megabytes: megabytes, rounds: rounds) }
            if json { try printJSON(rows); return }
            print("splice bench signature: best of \(rounds)")
            print("input                          bytes      split ms   verify ms   SHA-256 of the same bytes ms")
            for r in rows {
                print([r.input.padding(toLength: 28, withPad: " ", startingAt: 0), String(format: "%10d", r.bytes),
                       String(format: "%10.3f", r.splitMilliseconds), r.verifyMilliseconds.map { String(format: "%11.1f", $0) } ?? "          -",
                       String(format: "%14.1f", r.sha256Milliseconds)].joined(separator: " "))
            }
        }
    }

    struct Engines: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The non-stop engine against the rendezvous on the same action (apply + revert of payload 02, vCPUs running).")
        @Option(help: "vCPU counts (comma-separated).") var vcpus = "1,4"
        @Option(help: "Repeats (medians are printed).") var repeats = 60
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let rows = try reportingErrors {
                try EngineBenchmark.run(samples: try Samples.directory(), counts: vcpus.split(separator: ",").compactMap { Int($0) },
                                        repeats: repeats)
            }
            if json { try printJSON(rows); return }
            print("splice bench engines: apply / revert of payload 02 while the vCPUs run, median of \(repeats)")
            print("isa       vCPUs  engine    apply µs   revert µs   vCPUs held µs   syncs/cycle")
            for r in rows {
                print([r.architecture.padding(toLength: 9, withPad: " ", startingAt: 0), String(format: "%5d", r.vcpus),
                       r.engine.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0),
                       String(format: "%9.1f", r.applyMedianMicroseconds), String(format: "%11.1f", r.revertMedianMicroseconds),
                       String(format: "%15.1f", r.heldMedianMicroseconds ?? 0), r.syncsPerCycle.map { String(format: "%13.1f", $0) } ?? "            -"]
                    .joined(separator: " "))
            }
        }
    }

    struct Report: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run every benchmark once and write one markdown report (BENCHMARKS.md): each figure with its command and anchor.",
            discussion: "Build in release mode first (scripts/bench.sh does, and writes BENCHMARKS.md). Takes a few minutes.")
        @Option(name: .shortAndLong, help: "Where to write the report.") var output = "BENCHMARKS.md"
        @Option(help: "Repeats of the rendezvous benchmark.") var rendezvousRepeats = 30

        func run() throws {
            try reportingErrors {
                guard let dir = Samples.executableDirectory() else { throw CommandError(description: "cannot find my own executable") }
                var options = BenchmarkReport.Options(bareExecutable: dir + "/unicorn-bare-bench")
                options.rendezvousRepeats = rendezvousRepeats
                let text = try BenchmarkReport.markdown(samples: try Samples.directory(), options: options) { step in
                    print("measuring: \(step)")
                    fflush(stdout)
                }
                try SafeFile.write(Array(text.utf8), to: output)
                print("wrote \(output)")
            }
        }
    }

    struct RendezvousLatency: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rendezvous",
            abstract: "Apply latency of one function with N running vCPUs, next to an empty rendezvous.")
        @Option(help: "vCPU counts (comma-separated).") var vcpus = "1,4,16,64"
        @Option(help: "Repeats per count (the median is printed).") var repeats = 30
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let counts = vcpus.split(separator: ",").compactMap { Int($0) }
            let rows = try reportingErrors { try RendezvousBenchmark.run(samples: try Samples.directory(), counts: counts, repeats: repeats) }
            if json { try printJSON(rows); return }
            print("splice bench rendezvous: request -> all vCPUs resumed, median of \(repeats), \(ProcessInfo.processInfo.activeProcessorCount) host cores")
            print("isa       vCPUs   empty µs   1 function µs   ratio   REPLACE 1000 µs   added µs/function   (best)   of which: prepare   stopped-writing")
            print("                                               (<=1.2 at 16)                    (target <= 1)               µs/function   µs/function")
            for r in rows {
                print([r.architecture.padding(toLength: 9, withPad: " ", startingAt: 0), String(format: "%5d", r.vcpus),
                       String(format: "%10.1f", r.emptyMedianMicroseconds), String(format: "%15.1f", r.applyMedianMicroseconds),
                       String(format: "%7.2f", r.ratio), String(format: "%17.1f", r.replaceMedianMicroseconds),
                       String(format: "%19.3f", r.replacePerFunctionMicroseconds),
                       String(format: "%8.3f", r.replaceBestPerFunctionMicroseconds),
                       String(format: "%19.3f", r.replacePrepareMedianMicroseconds / 1000),
                       String(format: "%17.3f", r.replaceWriteMedianMicroseconds / 1000)].joined(separator: " "))
            }
        }
    }

    struct PayloadLoad: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "payload",
            abstract: "Load + relocate time of a generated payload, next to eu-readelf -r reading the same file.")
        @Option(help: "Functions in the generated payload.") var functions = 10_000
        @Option(help: "Rounds (best of each side).") var rounds = 5
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let rows = try reportingErrors { try PayloadBenchmark.run(samples: try Samples.directory(), count: functions, rounds: rounds) }
            if json { try printJSON(rows); return }
            print("splice bench payload: parse + place + relocate + map of a generated payload, best of \(rounds)")
            print("isa       functions  relocations  bytes      splice ms   eu-readelf -r ms   ratio")
            for r in rows {
                print([r.architecture.padding(toLength: 9, withPad: " ", startingAt: 0),
                       String(format: "%9d", r.functions), String(format: "%12d", r.relocations), String(format: "%9d", r.bytes),
                       String(format: "%11.1f", r.spliceSeconds * 1000),
                       r.readelfSeconds.map { String(format: "%18.1f", $0 * 1000) } ?? "   (no eu-readelf)",
                       r.ratio.map { String(format: "%7.2f", $0) } ?? ""].joined(separator: " "))
            }
        }
    }

    struct Redirect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Guest instructions one redirected call costs, counted by Unicorn (not timed).",
            discussion: "Each case calls the redirected function and the target directly with the same arguments; the difference is the redirect's own cost.")
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let rows = try reportingErrors { try RedirectBenchmark.run(samples: try Samples.directory()) }
            if json { try printJSON(rows); return }
            print("splice bench redirect: guest instructions per call, counted by Unicorn")
            print("case                                    method                                              target  redirected  overhead  goal")
            for r in rows {
                print([r.name.padding(toLength: 39, withPad: " ", startingAt: 0),
                       r.method.prefix(50).padding(toLength: 50, withPad: " ", startingAt: 0),
                       String(format: "%7d", r.targetInstructions), String(format: "%11d", r.redirectedInstructions),
                       String(format: "%+9d", r.overhead), r.goal].joined(separator: " "))
            }
        }
    }

    struct Emu: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Guest instructions per second through Splice's machine vs. a bare C program on Unicorn.",
            discussion: """
            Both sides call mix_loop (a loop-heavy sample function) in each ISA's sample kernel with no \
            hooks; the instruction count per call comes from one counted run on each side and must agree. \
            The first table gives Splice calls no time bound, like the bare program; the second shows what \
            the default 10 s bound of `splice call` costs (Unicorn runs a timer thread per emu_start).
            """)
        @Option(help: "Loop iterations of mix_loop per call.") var iterations: Int64 = 1_000_000
        @Option(help: "Calls per round.") var runs = 20
        @Option(help: "Rounds (the best of each side is reported).") var rounds = 5
        @Flag(help: "Print JSON.") var json = false

        struct Table: Codable {
            var spliceCallTimeoutMicroseconds: UInt64
            var rows: [EmulatorBenchmark.Row]
        }

        func run() throws {
            let tables = try reportingErrors { () -> [Table] in
                guard let dir = Samples.executableDirectory() else { throw CommandError(description: "cannot find my own executable") }
                var bench = EmulatorBenchmark(bareExecutable: dir + "/unicorn-bare-bench")
                bench.argument = iterations
                bench.runs = runs
                bench.rounds = rounds
                return try [0, VCPU.Limits().timeoutMicroseconds].map { timeout in
                    bench.timeoutMicroseconds = timeout
                    return Table(spliceCallTimeoutMicroseconds: timeout,
                                 rows: try [Samples.x86_64, Samples.ppc64le].map { try bench.measure(imagePath: Samples.path($0)) })
                }
            }
            if json { try printJSON(tables); return }
            print("splice bench emu: mix_loop(\(iterations)) x \(runs) calls per round, best of \(rounds) rounds")
            for t in tables {
                let bound = t.spliceCallTimeoutMicroseconds == 0 ? "no time bound (as bare)" : "the default \(t.spliceCallTimeoutMicroseconds / 1_000_000) s time bound"
                print("\nSplice calls with \(bound); bare Unicorn with none")
                print("isa       insns/call    splice Minsn/s   bare Minsn/s   ratio (target >= 0.90)")
                for r in t.rows {
                    let line = [r.architecture.padding(toLength: 9, withPad: " ", startingAt: 0),
                                String(r.splice.instructionsPerCall).padding(toLength: 13, withPad: " ", startingAt: 0),
                                String(format: "%14.1f", r.splice.instructionsPerSecond / 1e6),
                                String(format: "%14.1f", r.bare.instructionsPerSecond / 1e6),
                                String(format: "%9.3f", r.ratio)]
                    print(line.joined(separator: " "))
                }
            }
        }
    }
}
