import Crypto
import Foundation
import SpliceBytes
import SpliceELF

/// The Splice payload format (docs/payload-format.md): a relocatable ELF per ISA.
public enum PayloadFormat {
    /// The array of functions to patch: `recordSize`-byte records.
    public static let funcsSection = ".livepatch.funcs"
    /// Names the records point at.
    public static let stringsSection = ".livepatch.strings"
    /// A GNU build-id note: the target image the payload was built against.
    public static let dependsSection = ".livepatch.depends"
    /// Zero or more GNU build-id notes: payloads that must be loaded first.
    public static let payloadDependsSection = ".livepatch.payload_depends"
    /// `.livepatch.hooks.<kind>`: arrays of 8-byte pointers to hook functions.
    public static let hooksPrefix = ".livepatch.hooks."
    /// `stateSize`-byte records (Linux's klp_state): u64 id, u64 version, u64 data. The
    /// section is loaded (writable): the payload's hooks keep `data`.
    public static let statesSection = ".livepatch.states"
    public static let stateSize = 24
    public static let buildIDSection = ".note.gnu.build-id"

    /// One `.livepatch.funcs` record (little-endian):
    ///
    ///     0   u64 name        relocated: address of a NUL-terminated name in .livepatch.strings
    ///     8   u64 new_addr    relocated: the new function; 0 (no relocation) = NOP patch:
    ///                         with new_size 0 the function returns at once, else new_size
    ///                         bytes from nop_offset become no-ops (Xen's xen_nop)
    ///     16  u64 old_addr    0 in the file: resolved by name against the target at load
    ///     24  u32 new_size
    ///     28  u32 old_size    expected size of the old function; 0 = not checked
    ///     32  u8  version     1
    ///     33  u8  expect_len  0..24: how many bytes of `expect` the old function must start with
    ///     34  u8  pad[2]
    ///     36  u32 nop_offset  NOP patch: where the no-ops start, from the function's start
    ///     40  u8  expect[24]
    ///     64  u8  opaque[32]  zero in the file: room for the backend's undo bytes
    public static let recordSize = 96
    public static let recordVersion: UInt8 = 1
    public static let maxExpectedBytes = 24

    /// Hooks (samples/src/splice_livepatch.h). `load`, `unload` and the post hooks are
    /// `void hook(void)`; the pre hooks are `int hook(void)`, nonzero vetoing the action;
    /// `apply` and `revert` are Xen's action hooks, `int hook(void)` run instead of the
    /// native redirect writes, nonzero failing the action.
    public enum HookKind: String, CaseIterable, Sendable, Codable {
        case load, unload, preapply, postapply, prerevert, postrevert, apply, revert

        /// Whether the hook's int result decides (nonzero: veto or failure).
        public var returnsResult: Bool { [.preapply, .prerevert, .apply, .revert].contains(self) }
    }
}

extension PayloadFormat {
    /// The size of the payload's own build id: a SHA-1.
    public static let buildIDSize = 20

    /// Where the payload's own build id lies in the file: the descriptor of the GNU note
    /// in `.note.gnu.build-id` (nil when there is no such note of `buildIDSize` bytes).
    public static func buildIDRange(in elf: ELFFile) -> Range<Int>? {
        guard let s = elf.section(named: buildIDSection), s.type == ELFSection.typeNote, s.data.count >= 12 else { return nil }
        let nameSize = Int(s.data.littleEndian(UInt32.self, at: 0)), descriptorSize = Int(s.data.littleEndian(UInt32.self, at: 4))
        let start = 12 + (nameSize + 3) / 4 * 4
        guard nameSize <= s.data.count, descriptorSize == buildIDSize, start + descriptorSize <= s.data.count,
              s.data.littleEndian(UInt32.self, at: 8) == ELFNote.gnuBuildID else { return nil }
        let fileStart = Int(s.offset) + start
        return fileStart..<(fileStart + descriptorSize)
    }

    /// The build id `bytes` must carry: SHA-1 over the whole file with the id's own bytes
    /// (`range`) taken as zero, as GNU ld computes `--build-id=sha1`. Every byte counts, so
    /// an edited payload cannot keep the id of the one it was made from.
    public static func buildID(of bytes: [UInt8], range: Range<Int>) -> [UInt8] {
        var hash = Insecure.SHA1()
        hash.update(data: bytes[..<range.lowerBound])
        hash.update(data: [UInt8](repeating: 0, count: range.count))
        hash.update(data: bytes[range.upperBound...])
        return Array(hash.finalize())
    }

    /// `bytes` (a payload whose build-id note holds any 20 bytes) with its build id
    /// computed and written in. `splice build` seals every payload it writes.
    public static func sealed(_ bytes: [UInt8]) throws -> [UInt8] {
        let elf = try ELFFile(bytes: bytes, name: "payload")
        guard let range = buildIDRange(in: elf) else {
            throw PayloadError(elf.name, .missingSection("\(buildIDSection) with a \(buildIDSize)-byte GNU build-id note"))
        }
        var out = bytes
        out.replaceSubrange(range, with: buildID(of: bytes, range: range))
        return out
    }
}
