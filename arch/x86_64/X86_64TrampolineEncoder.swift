import SpliceBytes
/// The x86-64 instruction sequences Splice writes, encoded by hand (no assembler library
/// is available here) and refereed by Capstone in the tests. See arch/x86_64/README.md.
public enum X86_64TrampolineEncoder {
    /// `jmp rel32`: e9 + displacement from the end of the 5-byte instruction.
    public static let nearJumpSize = 5
    /// `jmp qword ptr [rip+0]` followed by the 8-byte absolute target: ff 25 00000000 + abs64.
    public static let absoluteJumpSize = 14
    public static let ret: UInt8 = 0xc3

    /// `jmp rel32` at `from` to `to`, or nil when the target is beyond ±2 GB.
    public static func nearJump(from: UInt64, to: UInt64) -> [UInt8]? {
        let displacement = Int64(bitPattern: to &- (from &+ UInt64(nearJumpSize)))
        guard let rel = Int32(exactly: displacement) else { return nil }
        return [0xe9] + rel.littleEndianBytes
    }

    /// `jmp [rip+0]; .quad to`: reaches any address and clobbers no register (an
    /// alternative, `movabs rax; jmp rax`, would clobber rax, which varargs callees read).
    public static func absoluteJump(to: UInt64) -> [UInt8] {
        [0xff, 0x25, 0x00, 0x00, 0x00, 0x00] + to.littleEndianBytes
    }

    /// The recommended multi-byte NOPs (Intel SDM, "NOP" instruction), 1 to 9 bytes.
    static let nops: [[UInt8]] = [
        [0x90],
        [0x66, 0x90],
        [0x0f, 0x1f, 0x00],
        [0x0f, 0x1f, 0x40, 0x00],
        [0x0f, 0x1f, 0x44, 0x00, 0x00],
        [0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
        [0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
        [0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        [0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    ]

    /// `length` bytes of NOPs, as few instructions as possible.
    public static func nopFill(_ length: Int) -> [UInt8] {
        var out: [UInt8] = []
        var left = length
        while left > 0 {
            let n = min(left, nops.count)
            out += nops[n - 1]
            left -= n
        }
        return out
    }
}
