@_exported import SpliceDisassembly
@_exported import SpliceELF
@_exported import SpliceMachine
@_exported import SplicePPC64LE
@_exported import SpliceX86_64

/// The architectures Splice ships, selectable by name or by an ELF file's e_machine.
public enum Architectures {
    public static let all: [any CPUArchitecture] = [X86_64Architecture(), PPC64LEArchitecture()]

    public static func named(_ name: String) -> (any CPUArchitecture)? {
        all.first { $0.name == name }
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
