import SpliceBytes
import SplicePatching

/// The few general x86-64 instructions Splice writes besides its trampolines (for code
/// fixtures), each in its one fixed encoding; the tests decode them with Capstone.
public enum X86_64Encoder {
    /// `ret`
    public static let ret: [UInt8] = [0xc3]
    /// `mov rax, rdi`
    public static let movRAXRDI: [UInt8] = [0x48, 0x89, 0xf8]
    /// `add rax, rax`
    public static let addRAXRAX: [UInt8] = [0x48, 0x01, 0xc0]
    /// `imul rax, rdi`
    public static let imulRAXRDI: [UInt8] = [0x48, 0x0f, 0xaf, 0xc7]

    /// `lea rax, [rdi + displacement]`
    public static func leaRAX(rdiPlus displacement: Int32) -> [UInt8] {
        [0x48, 0x8d, 0x87] + displacement.littleEndianBytes
    }

    /// `mov rax, [rip + displacement]`; the displacement field is at offset 3.
    public static func movRAX(ripPlus displacement: Int32) -> [UInt8] {
        [0x48, 0x8b, 0x05] + displacement.littleEndianBytes
    }
}

/// x86-64 code fixtures (SysV: the argument in rdi, the result in rax).
public struct X86_64CodeFixtures: CodeFixtures {
    public init() {}
    typealias E = X86_64Encoder

    public func addConstant(_ value: Int16) -> [UInt8] { E.leaRAX(rdiPlus: Int32(value)) + E.ret }

    public func double() -> [UInt8] { E.movRAXRDI + E.addRAXRAX + E.ret }

    /// `mov rax, [rip + global]; imul rax, rdi; ret`, PC32 against the global (the field
    /// ends the instruction, so the addend is -4).
    public func multiplyByGlobal(_ global: String) -> FixtureFunction {
        FixtureFunction(code: E.movRAX(ripPlus: 0) + E.imulRAXRDI + E.ret,
                        relocations: [.init(offset: 3, type: X86_64Relocation.pc32.rawValue, symbol: global, addend: -4)])
    }
}
