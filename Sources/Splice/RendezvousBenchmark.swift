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
        public var ratio: Double { applyMedianMicroseconds / emptyMedianMicroseconds }
    }

    static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.isEmpty ? 0 : s[s.count / 2]
    }

    public static func run(samples: String, counts: [Int] = [1, 4, 16, 64], repeats: Int = 30) throws -> [Row] {
        var rows: [Row] = []
        for imageName in [Samples.x86_64, Samples.ppc64le] {
            for n in counts {
                let elf = try ELFFile(contentsOf: samples + "/" + imageName)
                let machine = try Machine(architecture: try Architectures.forELF(elf), vcpuCount: n)
                let image = try machine.load(elf)
                let patcher = try LivePatcher(image: image, backend: try Architectures.backend(for: elf))
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
                var empty: [Double] = [], apply: [Double] = []
                let target = try image.function(named: "checked_double").value
                for _ in 0..<repeats {
                    var t = DispatchTime.now().uptimeNanoseconds
                    try runner.rendezvous.execute { _ in }
                    empty.append(Double(DispatchTime.now().uptimeNanoseconds - t) / 1000)
                    t = DispatchTime.now().uptimeNanoseconds
                    try patcher.redirect("scaled", toAddress: target)
                    apply.append(Double(DispatchTime.now().uptimeNanoseconds - t) / 1000)
                    try patcher.revert("scaled")
                }
                rows.append(Row(architecture: machine.architecture.name, vcpus: n, repeats: repeats,
                                emptyMedianMicroseconds: median(empty), applyMedianMicroseconds: median(apply)))
            }
        }
        return rows
    }
}
