import SpliceBytes

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
