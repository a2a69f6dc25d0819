import SpliceBytes
import SpliceDisassembly
import SpliceELF

/// Why an image could not be loaded or a function not called.
public enum MachineError: Error, Equatable, CustomStringConvertible {
    case wrongArchitecture(image: String, machine: UInt16, architecture: String)
    case notExecutable(image: String, type: String)
    case noLoadableSegments(image: String)
    case noSuchFunction(name: String, image: String)
    case noSuchEntry(function: String, kind: EntryKind, available: [EntryKind])
    case tooManyArguments(count: Int, maximum: Int)
    case noSuchVCPU(index: Int, count: Int)
    case segmentOutOfRange(image: String, index: Int, address: UInt64, memorySize: UInt64)
    case imageTooLarge(image: String, bytes: UInt64, limit: UInt64)
    case noSuchSymbol(String)

    public var description: String {
        switch self {
        case let .wrongArchitecture(image, machine, arch):
            return "\(image): e_machine \(machine) (\(ELFMachine.name(machine))) is not \(arch)"
        case let .notExecutable(image, type):
            return "\(image): is \(type); Splice loads static executables (ET_EXEC)"
        case let .noLoadableSegments(image):
            return "\(image): has no PT_LOAD segments"
        case let .noSuchFunction(name, image):
            return "no function named \(name) in \(image)"
        case let .noSuchEntry(function, kind, available):
            return "\(function) has no \(kind.rawValue) entry (it has: \(available.map(\.rawValue).joined(separator: ", ")))"
        case let .tooManyArguments(count, maximum):
            return "\(count) arguments given; at most \(maximum) are supported"
        case let .noSuchVCPU(index, count):
            return "no vCPU \(index): the machine has \(count)"
        case let .segmentOutOfRange(image, index, address, size):
            return "\(image): segment [\(index)] at \(hex(address)) with p_memsz \(hex(size)) runs past the end of the address space"
        case let .imageTooLarge(image, bytes, limit):
            return "\(image): PT_LOAD segments span \(hex(bytes)) bytes, more than the \(hex(limit)) a Splice machine loads"
        case let .noSuchSymbol(name):
            return "no symbol named \(name)"
        }
    }
}

/// An emulated machine: guest memory and vCPUs of one ISA. Every vCPU maps every
/// region, so all of them see one memory.
public final class Machine {
    /// The most guest memory one image may ask for (a bound on malformed p_memsz).
    public static let maximumImageBytes: UInt64 = 1 << 30

    public let architecture: any CPUArchitecture
    public let memory: GuestMemory
    public private(set) var vcpus: [VCPU] = []
    private var sentinelRegion: GuestRegion?

    public init(architecture: any CPUArchitecture, vcpuCount: Int = 1) throws {
        self.architecture = architecture
        // The largest page any emulator of this ISA uses: regions must be aligned to it.
        let probe = try Emulator(architecture.emulatorConfiguration)
        memory = GuestMemory(pageSize: UInt64(max(try probe.pageSize(), 4096)))
        let sentinel = try map(name: "sentinel", at: architecture.layout.sentinelBase, size: memory.pageSize,
                               permissions: [.read, .execute])
        let trap = architecture.trapInstruction
        try memory.write(sentinel.base, Array((0..<Int(memory.pageSize) / trap.count).map { _ in trap }.joined()))
        sentinelRegion = sentinel
        for _ in 0..<vcpuCount { try addVCPU() }
    }

    /// Adds a vCPU with its own stack, mapping every existing region into it.
    @discardableResult
    public func addVCPU() throws -> VCPU {
        let index = vcpus.count
        let layout = architecture.layout
        let stack = try map(name: "stack\(index)", at: layout.stacksBase + UInt64(index) * layout.stackSize,
                            size: layout.stackSize, permissions: [.read, .write])
        let cpu = try VCPU(index: index, architecture: architecture, memory: memory, stackTop: stack.end - 256,
                           returnSentinel: sentinelRegion!.base)
        for region in memory.regions { try cpu.map(region) }
        vcpus.append(cpu)
        return cpu
    }

    /// Maps a new zeroed region into every vCPU. On failure nothing stays mapped.
    @discardableResult
    public func map(name: String, at base: UInt64, size: UInt64, permissions: MemoryPermissions) throws -> GuestRegion {
        let region = try GuestRegion(name: name, base: base, size: size, permissions: permissions)
        try memory.add(region)
        var mapped: [VCPU] = []
        do {
            for cpu in vcpus {
                try cpu.map(region)
                mapped.append(cpu)
            }
        } catch {
            for cpu in mapped { try? cpu.unmap(region) }
            memory.remove(region)
            throw error
        }
        return region
    }

    public func vcpu(_ index: Int) throws -> VCPU {
        guard vcpus.indices.contains(index) else { throw MachineError.noSuchVCPU(index: index, count: vcpus.count) }
        return vcpus[index]
    }

    /// Loads an executable's PT_LOAD segments (file bytes, then zeros up to p_memsz),
    /// one region per run of overlapping pages, with the union of their permissions.
    /// Nothing is mapped if any step fails.
    @discardableResult
    public func load(_ elf: ELFFile) throws -> LoadedImage {
        guard elf.header.machine == architecture.elfMachine else {
            throw MachineError.wrongArchitecture(image: elf.name, machine: elf.header.machine,
                                                 architecture: architecture.name)
        }
        guard elf.header.type == .executable else {
            throw MachineError.notExecutable(image: elf.name, type: "\(elf.header.type)")
        }
        let loads = elf.segments.filter { $0.isLoad && $0.memorySize > 0 }
        guard !loads.isEmpty else { throw MachineError.noLoadableSegments(image: elf.name) }

        let page = memory.pageSize
        var spans: [(base: UInt64, end: UInt64, permissions: MemoryPermissions)] = []
        var total: UInt64 = 0
        for s in loads.sorted(by: { $0.virtualAddress < $1.virtualAddress }) {
            guard s.memorySize <= Self.maximumImageBytes else {
                throw MachineError.imageTooLarge(image: elf.name, bytes: s.memorySize, limit: Self.maximumImageBytes)
            }
            let last = s.virtualAddress.addingReportingOverflow(s.memorySize + page - 1)
            guard !last.overflow else {
                throw MachineError.segmentOutOfRange(image: elf.name, index: s.index, address: s.virtualAddress,
                                                     memorySize: s.memorySize)
            }
            let base = s.virtualAddress / page * page
            let end = last.partialValue / page * page
            total += end - base
            guard total <= Self.maximumImageBytes else {
                throw MachineError.imageTooLarge(image: elf.name, bytes: total, limit: Self.maximumImageBytes)
            }
            let perms = MemoryPermissions(segment: s)
            if let last = spans.last, base < last.end {
                spans[spans.count - 1] = (last.base, max(last.end, end), last.permissions.union(perms))
            } else {
                spans.append((base, end, perms))
            }
        }
        var regions: [GuestRegion] = []
        do {
            for (i, span) in spans.enumerated() {
                regions.append(try map(name: "\(elf.name.split(separator: "/").last ?? "image")#\(i)",
                                       at: span.base, size: span.end - span.base, permissions: span.permissions))
            }
            for s in loads where !s.data.isEmpty { try memory.write(s.virtualAddress, s.data) }
        } catch {
            for r in regions { unmap(r) }
            throw error
        }
        return LoadedImage(elf: elf, regions: regions, machine: self)
    }

    /// Tells every vCPU that guest code in [address, address + length) changed: each
    /// emulator drops its translated blocks for the range, the emulator's analogue of the
    /// icache sync after patching. Only while no vCPU runs (the rendezvous guarantees it).
    public func codeChanged(at address: UInt64, length: Int) throws {
        for cpu in vcpus { try cpu.emulator.removeTranslations(from: address, to: address + UInt64(length)) }
    }

    /// Unmaps a region from every vCPU and forgets it.
    public func unmap(_ region: GuestRegion) {
        for cpu in vcpus {
            try? cpu.emulator.removeTranslations(from: region.base, to: region.end)
            try? cpu.unmap(region)
        }
        memory.remove(region)
    }
}

/// The result of calling a guest function.
public struct CallResult: Sendable, Equatable {
    /// The raw return register.
    public var value: UInt64
    public var signedValue: Int64 { Int64(bitPattern: value) }
    /// Guest instructions executed from entry to return (nil if counting was off).
    public var instructions: UInt64?
    public var entry: CallEntry
}

/// An executable loaded into a machine.
public final class LoadedImage {
    public let elf: ELFFile
    public let regions: [GuestRegion]
    /// The image keeps its machine alive (the machine does not point back).
    public let machine: Machine

    init(elf: ELFFile, regions: [GuestRegion], machine: Machine) {
        self.elf = elf
        self.regions = regions
        self.machine = machine
    }

    public func function(named name: String) throws -> ELFSymbol {
        guard let symbol = elf.symbol(named: name), symbol.isFunction else {
            throw MachineError.noSuchFunction(name: name, image: elf.name)
        }
        return symbol
    }

    public func entries(of name: String) throws -> [CallEntry] {
        machine.architecture.entries(of: try function(named: name), in: elf)
    }

    /// Calls `name` with integer arguments under the ISA's ABI and returns its result.
    public func call(_ name: String, _ arguments: [Int64] = [], entry kind: EntryKind = .global,
                     vcpu index: Int = 0, countInstructions: Bool = true,
                     limits: VCPU.Limits = VCPU.Limits()) throws -> CallResult {
        let all = try entries(of: name)
        guard let entry = all.first(where: { $0.kind == kind }) else {
            throw MachineError.noSuchEntry(function: name, kind: kind, available: all.map(\.kind))
        }
        return try call(entry, arguments, vcpu: index, countInstructions: countInstructions, limits: limits)
    }

    public func call(_ entry: CallEntry, _ arguments: [Int64], vcpu index: Int = 0, countInstructions: Bool = true,
                     limits: VCPU.Limits = VCPU.Limits()) throws -> CallResult {
        try machine.call(entry, arguments, vcpu: index, countInstructions: countInstructions, limits: limits)
    }
}

extension Machine {
    /// Calls guest code at `entry` on vCPU `index` under the ISA's ABI, with the stack
    /// growing down from `stackTop` (default: the top of the vCPU's stack). Use it on the
    /// thread that drives that vCPU.
    public func call(_ entry: CallEntry, _ arguments: [Int64], vcpu index: Int = 0, stackTop: UInt64? = nil,
                     countInstructions: Bool = true, limits: VCPU.Limits = VCPU.Limits()) throws -> CallResult {
        let cpu = try vcpu(index)
        try cpu.setInstructionCounting(countInstructions)
        try architecture.prepareCall(cpu.emulator, memory: memory, entry: entry, arguments: arguments.map { UInt64(bitPattern: $0) },
                                     stackTop: stackTop ?? cpu.stackTop, returnAddress: cpu.returnSentinel)
        let run = try cpu.run(from: entry.address, until: cpu.returnSentinel, limits: limits)
        let value = try cpu.read(architecture.returnValueRegister)
        return CallResult(value: value, instructions: run.instructions, entry: entry)
    }

    /// Calls guest code on a vCPU that is stopped in the middle of its own work (a hook run
    /// inside a rendezvous): its registers are saved and put back, and the call's stack
    /// lies below the vCPU's live frames.
    public func callPreserving(_ entry: CallEntry, _ arguments: [Int64], vcpu index: Int) throws -> CallResult {
        let cpu = try vcpu(index)
        return try cpu.emulator.withContextBlob { saved in
            try saved.save()
            defer { try? saved.restore() }
            let below = (try cpu.read(architecture.stackPointer) &- 1024) & ~0xf
            return try call(entry, arguments, vcpu: index, stackTop: below, countInstructions: false, limits: .guestCall)
        }
    }

    /// Decodes up to `count` instructions from guest memory at `address` (as the vCPUs
    /// would fetch them now), stopping at the end of the region.
    public func disassemble(at address: UInt64, count: Int) throws -> [DecodedInstruction] {
        guard let region = memory.region(containing: address) else {
            throw GuestMemoryError.unmapped(address: address, length: 1)
        }
        let length = Int(min(region.end - address, UInt64(16 * count)))
        let disassembler = try Disassembler(mode: architecture.disassemblyMode)
        return disassembler.decode(try memory.read(address, count: length), address: address, count: count)
    }
}
