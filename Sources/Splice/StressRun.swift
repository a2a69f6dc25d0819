import Foundation

/// `splice stress`: N vCPUs run the sample workload while a payload and a cumulative
/// replacement are applied, reverted and replaced through the rendezvous, over and over.
/// After every cycle, inside a rendezvous (every vCPU parked at its safe point with its
/// records complete), each vCPU's last records are checked: scaled(x) and
/// apply_unary(0, x) must be the old (3x+1) or the new (3x+2) value.
///
/// With the non-stop engine the same cycle goes through `NonStopEngine`: nothing stops the
/// vCPUs together while patching (the check after the cycle still parks them, to read
/// complete records).
public enum StressRun {
    public enum Engine: String, Codable, Sendable { case stop, nonstop }

    public struct Report: Codable, Sendable {
        public var architecture: String
        public var vcpus: Int
        public var cycles: Int
        public var engine: Engine
        public var applies = 0, reverts = 0, replaces = 0, rendezvous = 0
        /// Non-stop engine: syncs made, grace periods waited, vCPUs sent on from an armed
        /// trap, and vCPUs that hit a trap already taken back (re-translated, ran on).
        public var syncs = 0, gracePeriods = 0, trapsTaken = 0, staleTraps = 0
        public var recordsChecked = 0, wrongResults = 0, faults = 0
        public var iterations: UInt64 = 0
        public var textIdenticalAtEnd = false
        public var seconds = 0.0
    }

    public static func run(samples: String, isa: String, vcpus: Int, cycles: Int, engine: Engine = .stop) throws -> Report {
        let imagePath = samples + "/" + (isa == "x86_64" ? Samples.x86_64 : Samples.ppc64le)
        let elf = try ELFFile(contentsOf: imagePath)
        let backend = try Architectures.backend(for: elf)
        func payload(_ orig: String, _ patched: String, _ name: String) throws -> Payload {
            let b = PayloadBuilder(original: try ELFFile(contentsOf: "\(samples)/patches/\(orig)/orig-\(isa).o"),
                                   patched: try ELFFile(contentsOf: "\(samples)/patches/\(patched)/patched-\(isa).o"),
                                   target: elf, backend: backend)
            return try Payload(bytes: try b.build().bytes, name: name)
        }
        let machine = try Machine(architecture: try Architectures.forELF(elf), vcpuCount: vcpus)
        let image = try machine.load(elf)
        let patcher = try LivePatcher(image: image, backend: backend)
        let loader = PayloadLoader(patcher: patcher)
        let p02 = try loader.load(try payload("02-scaled-plus-two", "02-scaled-plus-two", "02"))
        let cumulative = try loader.load(try payload("01-greeting-len-fix", "04-scaled-twice-stacked", "cumulative"))
        let text = try image.regions.filter { $0.permissions.contains(.execute) }.map { try machine.memory.read($0.base, count: Int($0.size)) }
        let rings = try machine.map(name: "rings", at: 0x5800_0000, size: 0x10_0000, permissions: [.read, .write])
        let runner = try MachineRunner(machine: machine, safePoint: try image.function(named: "safe_point").value)
        runner.rendezvous.timeoutMicroseconds = 5_000_000
        patcher.executor = runner.rendezvous
        let workload = try image.entries(of: "workload")[0]
        func ring(_ i: Int) -> UInt64 { rings.base + UInt64(i) * 0x1000 }
        for i in 0..<vcpus { try runner.start(vcpu: i, entry: workload, arguments: [Int64(ring(i)), 0]) }
        var report = Report(architecture: machine.architecture.name, vcpus: vcpus, cycles: cycles, engine: engine)
        let nonStop = NonStopEngine(runner: runner, patcher: patcher)
        if engine == .nonstop { loader.engine = nonStop }
        let start = DispatchTime.now().uptimeNanoseconds
        func validate() throws {
            try runner.rendezvous.execute { _ in
                for i in 0..<vcpus {
                    let n = try machine.memory.readUInt64(ring(i))
                    for k in 0..<Int(min(n, 64)) {
                        let base = ring(i) + 8 + UInt64(24 * k)
                        let x = Int64(bitPattern: try machine.memory.readUInt64(base))
                        for field in [UInt64(8), 16] {
                            let v = Int64(bitPattern: try machine.memory.readUInt64(base + field))
                            report.recordsChecked += 1
                            if v != 3 * x + 1 && v != 3 * x + 2 { report.wrongResults += 1 }
                        }
                    }
                }
            }
        }
        for _ in 0..<cycles {
            try loader.apply(p02); report.applies += 1
            try loader.revert(p02); report.reverts += 1
            try loader.replace(with: cumulative); report.replaces += 1
            try loader.replace(with: p02); report.replaces += 1
            try loader.revert(p02); report.reverts += 1
            try validate()
        }
        report.syncs = nonStop.totals.syncs
        report.gracePeriods = nonStop.totals.grace
        report.seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        report.rendezvous = runner.rendezvous.completed
        report.trapsTaken = runner.trapsTaken
        report.staleTraps = runner.staleTraps
        runner.stop()
        for i in 0..<vcpus {
            if case .faulted = runner.state(of: i) { report.faults += 1 }
            report.iterations += try machine.memory.readUInt64(ring(i))
        }
        let after = try image.regions.filter { $0.permissions.contains(.execute) }.map { try machine.memory.read($0.base, count: Int($0.size)) }
        report.textIdenticalAtEnd = after == text
        return report
    }
}
