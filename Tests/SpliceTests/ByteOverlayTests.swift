@testable import SplicePatching
import SpliceBytes
import XCTest

/// The granule map behind the patcher's "what must memory hold here" bookkeeping, checked
/// against the obvious per-byte dictionary on random writes that straddle granules.
final class ByteOverlayTests: XCTestCase {
    func testMatchesAPerByteModelOnRandomOperations() {
        // A narrow window (few granules, much overwriting) and a wide one (thousands of
        // granules: the table grows, probe runs collide, deletions shift members back).
        check(window: 96, operations: 20_000)
        check(window: 1 << 16, operations: 60_000)
    }

    private func check(window: UInt64, operations: Int) {
        var rng = SystemRandomNumberGenerator()
        var overlay = ByteOverlay()
        var model: [UInt64: UInt8] = [:]
        let base: UInt64 = 0x1000_0000
        for _ in 0..<operations {
            let address = base + UInt64.random(in: 0..<window, using: &rng)
            let count = Int.random(in: 1...17, using: &rng)
            switch Int.random(in: 0..<3, using: &rng) {
            case 0:
                let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
                overlay.set(address, bytes)
                for (i, b) in bytes.enumerated() { model[address + UInt64(i)] = b }
            case 1:
                overlay.remove(address, count: count)
                for i in 0..<count { model[address + UInt64(i)] = nil }
            default:
                var seen = [UInt8](repeating: 0xee, count: count)
                overlay.apply(to: &seen, at: address)
                let expected = (0..<count).map { model[address + UInt64($0)] ?? 0xee }
                XCTAssertEqual(seen, expected, "apply at \(hex(address)) count \(count)")
                let all = (0..<count).compactMap { model[address + UInt64($0)] }
                XCTAssertEqual(overlay.known(address, count: count), all.count == count ? all : nil)
            }
        }
        for a in stride(from: base, to: base + window + 32, by: 8) { overlay.remove(a, count: 8) }
        XCTAssertTrue(overlay.isEmpty, "removing every byte leaves no granule behind")
    }

    /// Packed writes hold up to 16 bytes inline and spill longer ones: both give back
    /// exactly the bytes they were made from.
    func testPackedWriteRoundTrips() {
        for count in 0...40 {
            let bytes = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            let w = PackedWrite(address: 0x4000 + UInt64(count), bytes: bytes)
            XCTAssertEqual(w.bytes, bytes, "\(count) bytes")
            XCTAssertEqual(w.count, count)
            XCTAssertEqual(w.address, 0x4000 + UInt64(count))
            var overlay = ByteOverlay()
            w.withBytes { overlay.set(w.address, $0) }
            XCTAssertEqual(overlay.known(w.address, count: count), count == 0 ? nil : bytes)
        }
    }
}
