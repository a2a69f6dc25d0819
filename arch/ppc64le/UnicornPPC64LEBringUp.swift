import SpliceBytes
import SpliceMachine

/// The one place that works around Unicorn 2.0.1's PPC64 bring-up (probed on Debian's
/// libunicorn 2.0.1; see shared/DESIGN.md and shared/probes/ppc64le_msr_hv.c).
///
/// The default POWER10 model starts with MSR = SF only. With MSR[HV] clear and an empty
/// real-mode area every instruction fetch raises HISI (interrupt 70), and
/// `uc_reg_write(MSR)` masks HV, so HV cannot be set the normal way. The CPU state does
/// hold the MSR in two places (`env->msr` and the derived `env->hflags`) inside the saved
/// context blob, at offsets that are build-specific. So: save the context with two MSR
/// values differing only in LE, find the 8-byte fields that changed exactly that way,
/// put SF|HV there, restore, and write the wanted MSR so that Unicorn recomputes hflags
/// and the MMU index from it.
public enum UnicornPPC64LEBringUp {
    public static let sf: UInt64 = 1 << 63
    public static let hv: UInt64 = 1 << 60
    public static let vec: UInt64 = 1 << 25
    public static let vsx: UInt64 = 1 << 23
    public static let fp: UInt64 = 1 << 13
    public static let me: UInt64 = 1 << 12
    public static let le: UInt64 = 1 << 0

    /// What compiled POWER8/9 code needs: 64-bit, hypervisor real mode, VMX, VSX,
    /// machine checks, FP, little-endian (0x9000000002803001). Without FP `lfd` raises
    /// interrupt 7; without VSX `lxvd2x` raises 94. PR stays 0 (PR=1 faults every fetch).
    public static let compiledCodeMSR: UInt64 = sf | hv | vec | vsx | me | fp | le


    /// Sets MSR to `value` (which must include SF and HV), including the HV bit
    /// Unicorn's register API refuses. Returns the context offsets it patched.
    @discardableResult
    public static func setMachineStateRegister(_ emulator: Emulator, to value: UInt64) throws -> [Int] {
        let msr = PPC64LERegisters.msr
        let offsets: [Int] = try emulator.withContextBlob { first in
            try emulator.withContextBlob { second in
                try emulator.write(msr, sf)
                try first.save()
                try emulator.write(msr, sf | le)
                try second.save()
                let a = first.bytes, b = second.bytes
                var found: [Int] = []
                var i = 0
                while i + 8 <= b.count {
                    if a.loadUnaligned(fromByteOffset: i, as: UInt64.self) == sf,
                       b.loadUnaligned(fromByteOffset: i, as: UInt64.self) == sf | le {
                        found.append(i)
                        b.storeBytes(of: sf | hv, toByteOffset: i, as: UInt64.self)
                    }
                    i += 1
                }
                guard found.count == 2 else { throw BringUpError.msrCopiesNotFound(found: found.count, contextSize: b.count) }
                try second.restore()
                return found
            }
        }
        try emulator.write(msr, value)
        let read = try emulator.read(msr)
        guard read == value else { throw BringUpError.msrNotApplied(wanted: value, read: read) }
        return offsets
    }
}

public enum BringUpError: Error, Equatable, CustomStringConvertible {
    /// The blob did not hold exactly two copies of the MSR: Unicorn's layout changed.
    case msrCopiesNotFound(found: Int, contextSize: Int)
    /// After the workaround the MSR reads back as something else.
    case msrNotApplied(wanted: UInt64, read: UInt64)

    public var description: String {
        switch self {
        case let .msrCopiesNotFound(found, size):
            return "ppc64le bring-up: expected 2 copies of MSR in the \(size)-byte Unicorn context, found \(found); "
                + "this Unicorn build stores CPU state differently and the MSR[HV] workaround no longer applies"
        case let .msrNotApplied(wanted, read):
            return "ppc64le bring-up: MSR should be \(hex(wanted)) but reads \(hex(read))"
        }
    }
}
