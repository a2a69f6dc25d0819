import SpliceBytes
import SpliceELF
import SpliceMachine

/// The xSplice design: a function being replaced "is expected not to be on any CPU stack". Before a
/// non-stop apply, every stopped vCPU's PC and stack are walked; an old function found
/// there is live, and the apply is refused (or deferred) with the frames named.
public enum StackCheck {
    public struct LiveFrame: Equatable, Sendable, CustomStringConvertible {
        public var vcpu: Int
        public var function: String
        public var address: UInt64
        /// 0: the PC; 1...: return addresses, innermost first.
        public var depth: Int
        public var description: String {
            "vCPU \(vcpu): \(function) (\(depth == 0 ? "pc" : "return address") \(hex(address)))"
        }
    }

    public struct FunctionLive: Error, Equatable, CustomStringConvertible {
        public var frames: [LiveFrame]
        public var description: String {
            "not patched: a function to replace is live on a vCPU stack: " + frames.map(\.description).joined(separator: "; ")
        }
    }

    /// The frames of `machine`'s vCPUs (`vcpus`) that lie in one of `functions`. `code`:
    /// the running code's functions, for a walk that reads prologues (x86-64 frame
    /// pointers); without it x86-64 scans the whole stack.
    public static func liveFrames(of functions: [ELFSymbol], machine: Machine, vcpus: [Int],
                                  code: FunctionMap? = nil) throws -> [LiveFrame] {
        var frames: [LiveFrame] = []
        for index in vcpus {
            let cpu = try machine.vcpu(index)
            for (depth, address) in try cpu.liveCodeAddresses(memory: machine.memory, functions: code).enumerated() {
                if let f = functions.first(where: { address >= $0.value && address < $0.value + $0.size }) {
                    frames.append(LiveFrame(vcpu: index, function: f.name, address: address, depth: depth))
                }
            }
        }
        return frames
    }

    /// Throws `FunctionLive` if any of `functions` is on a stack of `vcpus`.
    public static func require(notLive functions: [ELFSymbol], machine: Machine, vcpus: [Int],
                               code: FunctionMap? = nil) throws {
        let frames = try liveFrames(of: functions, machine: machine, vcpus: vcpus, code: code)
        if !frames.isEmpty { throw FunctionLive(frames: frames) }
    }
}
