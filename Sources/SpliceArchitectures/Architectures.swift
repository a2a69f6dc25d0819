import SpliceELF
import SpliceMachine
import SplicePatching
// A user of the registry can reach each backend's own API (encoders, return strategies).
@_exported import SplicePPC64LE
@_exported import SpliceX86_64

/// The architectures Splice ships, selectable by name or by an ELF file's e_machine.
public enum Architectures {
    public static let all: [any CPUArchitecture] = [X86_64Architecture(), PPC64LEArchitecture()]

    public static func named(_ name: String) -> (any CPUArchitecture)? {
        all.first { $0.name == name }
    }

    /// The patch backends, one per ISA that has one.
    public static let backends: [any PatchBackend] = [X86_64PatchBackend(), PPC64LEPatchBackend()]

    /// The backend named `name` ("x86_64", "ppc64le").
    public static func backend(named name: String) throws -> any PatchBackend {
        if let b = backends.first(where: { $0.architecture.name == name }) { return b }
        if self.named(name) != nil { throw PatchError.noBackend("\(name): it runs, but cannot be patched yet") }
        throw PatchError.noBackend("\(name): Splice knows " + all.map(\.name).joined(separator: ", "))
    }

    /// The backend named `name` using the return strategy named `returnStrategy` (nil: its
    /// default). Throws, naming what is offered, for a strategy the backend does not have.
    public static func backend(named name: String, returnStrategy: String?) throws -> any PatchBackend {
        let backend = try backend(named: name)
        guard let returnStrategy else { return backend }
        return try backend.using(returnStrategy: returnStrategy)
    }

    /// Every return strategy any backend offers (for help text and scenario files).
    public static var returnStrategies: [String] {
        var seen = Set<String>()
        return backends.flatMap(\.returnStrategies).filter { seen.insert($0).inserted }
    }

    /// The backend for an ELF file's e_machine.
    public static func backend(for elf: ELFFile) throws -> any PatchBackend {
        try backend(named: try forELF(elf).name)
    }

    public static func forELF(_ elf: ELFFile) throws -> any CPUArchitecture {
        // ppc64 big-endian would also be EM_PPC64; ELFFile only accepts little-endian files.
        guard let arch = all.first(where: { $0.elfMachine == elf.header.machine }) else {
            throw UnsupportedArchitecture(machine: elf.header.machine, file: elf.name)
        }
        return arch
    }
}

public struct UnsupportedArchitecture: Error, CustomStringConvertible {
    public let machine: UInt16
    public let file: String
    public var description: String {
        "\(file): e_machine \(machine) (\(ELFMachine.name(machine))) is not supported; Splice runs "
            + Architectures.all.map(\.name).joined(separator: " and ")
    }
}

/// Opens an ELF executable and loads it into a new machine of its architecture.
public func loadImage(path: String, vcpus: Int = 1) throws -> LoadedImage {
    let elf = try ELFFile(contentsOf: path)
    let machine = try Machine(architecture: try Architectures.forELF(elf), vcpuCount: vcpus)
    return try machine.load(elf)
}
