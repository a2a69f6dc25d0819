import CSpliceShims
import CUnicorn
import Foundation

/// Functions guest code can call that the host implements, the emulator's counterpart of
/// a hypercall page: each function has an entry in a small code area holding one return
/// instruction; a code hook on every vCPU, limited to that area, runs the host function
/// when a vCPU is about to execute an entry, reading the ISA's integer argument registers
/// and writing the result to its return register. The return instruction then takes the
/// vCPU back to its caller. To the guest they are ordinary functions: payloads call them by
/// name, and they need no stack, no TOC and nothing in guest memory but the return.
///
/// The hooks run on each vCPU's own thread, possibly at the same time: handlers must be
/// thread-safe.
public final class HostCalls {
    /// A host function: integer arguments in, one integer out.
    public typealias Handler = @Sendable (_ arguments: [UInt64]) -> UInt64

    public struct Function: Sendable {
        public var name: String
        public var arguments: Int
        public var handler: Handler
        public init(name: String, arguments: Int, handler: @escaping Handler) {
            self.name = name
            self.arguments = arguments
            self.handler = handler
        }
    }

    /// Bytes between two entries (one return instruction each, the rest traps).
    public static let entrySize: UInt64 = 16

    public let base: UInt64
    public let functions: [Function]
    /// How many times each function has been called, by index (for people and tests).
    public var callCounts: [Int] { lock.lock(); defer { lock.unlock() }; return counts }

    private let lock = NSLock()
    private var counts: [Int]

    /// Guest address of `name`'s entry.
    public func address(of name: String) -> UInt64? {
        functions.firstIndex { $0.name == name }.map(entry)
    }

    /// Name → entry address, for symbol resolution.
    public var symbols: [String: UInt64] {
        Dictionary(uniqueKeysWithValues: functions.indices.map { (functions[$0].name, entry($0)) })
    }

    private func entry(_ index: Int) -> UInt64 { base + UInt64(index) * Self.entrySize }

    /// Writes the entries at `base` (executable memory the caller mapped, at least
    /// `functions.count * entrySize` bytes) and hooks every vCPU. Call it while no vCPU runs.
    public init(machine: Machine, base: UInt64, functions: [Function]) throws {
        self.base = base
        self.functions = functions
        counts = Array(repeating: 0, count: functions.count)
        let arch = machine.architecture
        var code: [UInt8] = []
        for _ in functions {
            var entry = arch.returnInstruction
            while entry.count < Int(Self.entrySize) { entry += arch.trapInstruction }
            code += entry.prefix(Int(Self.entrySize))
        }
        try machine.memory.write(base, code)
        for vcpu in machine.vcpus {
            let context = HookContext(calls: self, vcpu: vcpu)
            try vcpu.installHostCallHook(from: base, to: base + UInt64(code.count) - 1, context: context)
        }
    }

    fileprivate func dispatch(_ address: UInt64, on vcpu: VCPU) {
        let offset = address &- base
        guard offset % Self.entrySize == 0 else { return } // a trap byte: the guest stops on it
        let index = Int(offset / Self.entrySize)
        guard functions.indices.contains(index) else { return }
        let f = functions[index]
        let registers = vcpu.architecture.argumentRegisters.prefix(f.arguments)
        let arguments = registers.map { (try? vcpu.emulator.read($0)) ?? 0 }
        let result = f.handler(arguments)
        try? vcpu.emulator.write(vcpu.architecture.returnValueRegister, result)
        lock.lock(); counts[index] += 1; lock.unlock()
    }
}

/// What one vCPU's hook needs: kept alive by the vCPU (as long as the hook can fire).
final class HookContext {
    let calls: HostCalls
    unowned let vcpu: VCPU
    init(calls: HostCalls, vcpu: VCPU) {
        self.calls = calls
        self.vcpu = vcpu
    }
}

private let hostCallHook: @convention(c) (OpaquePointer?, UInt64, UInt32, UnsafeMutableRawPointer?) -> Void = {
    _, address, _, data in
    guard let data else { return }
    let context = Unmanaged<HookContext>.fromOpaque(data).takeUnretainedValue()
    context.calls.dispatch(address, on: context.vcpu)
}

extension VCPU {
    /// A code hook over [begin, end] (inclusive) that runs host calls.
    func installHostCallHook(from begin: UInt64, to end: UInt64, context: HookContext) throws {
        var hook: uc_hook = 0
        try check(splice_hook_code(emulator.handle, &hook, hostCallHook, Unmanaged.passUnretained(context).toOpaque(),
                                   begin, end), "uc_hook_add(host calls)")
        hookContexts.append(context)
        try dropTranslatedCode() // a hook only instruments code translated after it exists
    }
}
