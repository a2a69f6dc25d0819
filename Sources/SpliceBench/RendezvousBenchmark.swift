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


/// `splice bench rendezvous`: for N running vCPUs, the latency of applying one function
/// (request → every vCPU resumed on the new code) next to an empty rendezvous (stop and
/// resume, nothing written), measured in the same run.
public enum RendezvousBenchmark {
    public struct Row: Codable, Sendable {
        public var architecture: String
        public var vcpus: Int
        public var repeats: Int
        public var emptyMedianMicroseconds: Double
        public var applyMedianMicroseconds: Double
        /// REPLACE of 1,000 applied functions by 1,000 new ones, in one rendezvous: request
        /// to all resumed (including preparing the 1,000 redirects before anyone stops).
        public var replaceMedianMicroseconds: Double
        /// The fastest of the repeats (the host's two cores are shared with the running
        /// vCPUs: the median moves with how the host schedules them).
        public var replaceBestMicroseconds: Double
        /// The same REPLACE: only the time every vCPU is stopped while the master writes
        /// (interrupts off → written, from the rendezvous trace).
        public var replaceWriteMedianMicroseconds: Double
        /// The same REPLACE: preparing it before anyone stops (sites, encodings, checks).
        public var replacePrepareMedianMicroseconds: Double
        public var ratio: Double { applyMedianMicroseconds / emptyMedianMicroseconds }
        public var replacePerFunctionMicroseconds: Double { (replaceMedianMicroseconds - emptyMedianMicroseconds) / 1000 }
        public var replaceBestPerFunctionMicroseconds: Double { (replaceBestMicroseconds - emptyMedianMicroseconds) / 1000 }
    }

    /// A payload redirecting f0000..f0999 of kernel-many (x + i + 1) to new functions
    /// returning x + i + `offset` (the backend's `addConstant` fixture).
    static func manyPayload(target: ELFFile, backend: any PatchBackend, offset: Int64) throws -> Payload {
        var w = ELFWriter(machine: target.header.machine, flags: target.header.flags)
        var functions: [Int] = []
        for i in 0..<1000 {
            let code = backend.fixtures.addConstant(Int16(Int64(i) + offset))
            let section = w.add(.init(name: ".text.new_f\(i)", flags: ELFSection.flagAlloc | ELFSection.flagExecInstr,
                                      data: code, alignment: 16))
            functions.append(w.add(.init(name: "new_f\(i)", size: UInt64(code.count), type: ELFWriter.Symbol.function,
                                         binding: ELFWriter.Symbol.global, section: section)))
        }
        var metadata = PayloadMetadata(targetBuildID: target.buildID ?? [])
        metadata.records = (0..<1000).map { i in
            .init(name: String(format: "f%04d", i), newSymbol: functions[i], newSize: 0, oldSize: 0)
        }
        return try Payload(bytes: try metadata.write(into: &w, absolute: backend.absoluteAddressRelocation), name: "many+\(offset)")
    }

    static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.isEmpty ? 0 : s[s.count / 2]
    }

    public static func run(samples: String, counts: [Int] = [1, 4, 16, 64], repeats: Int = 30) throws -> [Row] {
        var rows: [Row] = []
        for imageName in ["kernel-many-x86_64.elf", "kernel-many-ppc64le.elf"] {
            for n in counts {
                let elf = try ELFFile(contentsOf: samples + "/" + imageName)
                let backend = try Architectures.backend(for: elf)
                let machine = try Machine(architecture: try Architectures.forELF(elf), vcpuCount: n)
                let image = try machine.load(elf)
                let patcher = try LivePatcher(image: image, backend: backend)
                let loader = try PayloadLoader(patcher: patcher)
                let first = try loader.load(try manyPayload(target: elf, backend: backend, offset: 1000))
                let second = try loader.load(try manyPayload(target: elf, backend: backend, offset: 2000))
                try loader.apply(first) // before the vCPUs start
                let rings = try machine.map(name: "rings", at: 0x5800_0000, size: 0x10_0000, permissions: [.read, .write])
                let runner = try MachineRunner(machine: machine, safePoint: try image.function(named: "safe_point").value)
                runner.rendezvous.timeoutMicroseconds = 2_000_000 // many threads on few cores: measure, do not abort
                patcher.executor = runner.rendezvous
                let workload = try image.entries(of: "workload")[0]
                for i in 0..<n {
                    try runner.start(vcpu: i, entry: workload, arguments: [Int64(rings.base + UInt64(i) * 0x1000), 0])
                }
                defer { runner.stop() }
                Thread.sleep(forTimeInterval: 0.01)
                var empty: [Double] = [], apply: [Double] = [], replace: [Double] = [], write: [Double] = [], prep: [Double] = []
                let target = try image.function(named: "checked_double").value
                for r in 0..<repeats {
                    var t = DispatchTime.now().uptimeNanoseconds
                    try runner.rendezvous.execute { _ in }
                    empty.append(Double(DispatchTime.now().uptimeNanoseconds - t) / 1000)
                    t = DispatchTime.now().uptimeNanoseconds
                    try patcher.redirect("scaled", toAddress: target)
                    apply.append(Double(DispatchTime.now().uptimeNanoseconds - t) / 1000)
                    try patcher.revert("scaled")
                    // REPLACE 1,000 applied functions by 1,000 new ones (alternating payloads);
                    // prepared before the vCPUs stop, timed from request to all resumed.
                    t = DispatchTime.now().uptimeNanoseconds
                    try loader.replace(with: r % 2 == 0 ? second : first)
                    replace.append(Double(DispatchTime.now().uptimeNanoseconds - t) / 1000)
                    let trace = runner.rendezvous.lastTrace
                    write.append(Double(trace.written - trace.interruptsOff) / 1000)
                    prep.append(Double(patcher.lastTiming.prepare) / 1000)
                }
                runner.stop() // before calling guest code from this thread: an emulator has one driver
                let f7 = try image.call("f0007", [1]).signedValue
                guard f7 == 1 + 7 + (repeats % 2 == 1 ? 2000 : 1000) else { // the new functions return x + i + offset
                    throw BenchmarkError(description: "after the REPLACEs f0007(1) = \(f7)")
                }
                rows.append(Row(architecture: machine.architecture.name, vcpus: n, repeats: repeats,
                                emptyMedianMicroseconds: median(empty), applyMedianMicroseconds: median(apply),
                                replaceMedianMicroseconds: median(replace), replaceBestMicroseconds: replace.min() ?? 0,
                                replaceWriteMedianMicroseconds: median(write),
                                replacePrepareMedianMicroseconds: median(prep)))
            }
        }
        return rows
    }
}
