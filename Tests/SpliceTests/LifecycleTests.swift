import Splice
import XCTest

/// The payload life cycle (Xen's livepatch): every state × action, as a table.
final class LifecycleTests: XCTestCase {
    typealias S = LivePatchService.State
    typealias A = LivePatchService.Action

    /// nil: refused (invalid transition). "gone": unloaded.
    static let table: [S: [A: S?]] = [
        .loaded: [.check: .checked, .apply: nil, .revert: nil, .replace: nil, .unload: .loaded /* gone */],
        .checked: [.check: nil, .apply: .applied, .revert: nil, .replace: .applied, .unload: .checked /* gone */],
        .applied: [.check: nil, .apply: nil, .revert: .reverted, .replace: nil, .unload: nil],
        .reverted: [.check: nil, .apply: .applied, .revert: nil, .replace: .applied, .unload: .reverted /* gone */],
    ]

    func service() throws -> (LivePatchService, LoadedImage, [UInt8]) {
        let (image, loader) = try PayloadTests.machine("x86_64")
        let (_, bytes, _) = try PayloadTests.build("02-scaled-plus-two", "x86_64")
        return (LivePatchService(loader: loader), image, bytes)
    }

    func reach(_ state: S, _ s: LivePatchService, _ bytes: [UInt8]) throws {
        try s.upload(id: "p02", bytes: bytes)
        let path: [S: [A]] = [.loaded: [], .checked: [.check], .applied: [.check, .apply], .reverted: [.check, .apply, .revert]]
        for a in path[state]! { try s.perform(a, id: "p02") }
        XCTAssertEqual(try s.get("p02").state, state)
    }

    func testEveryStateAndActionAsATable() throws {
        var checked = 0
        for (state, row) in Self.table {
            for (action, outcome) in row {
                let (s, image, bytes) = try service()
                try reach(state, s, bytes)
                let version = s.version
                let memory = try PayloadTests.memory(image)
                if let result = outcome {
                    try s.perform(action, id: "p02")
                    if action == .unload {
                        XCTAssertThrowsError(try s.get("p02"), "\(state) \(action): gone")
                    } else {
                        XCTAssertEqual(try s.get("p02").state, result, "\(state) --\(action)-->")
                    }
                    XCTAssertGreaterThan(s.version, version, "\(state) \(action): a mutation")
                    let scaled = try image.call("scaled", [10]).signedValue
                    XCTAssertEqual(scaled, result == .applied && action != .unload ? 32 : 31, "\(state) \(action)")
                } else {
                    XCTAssertThrowsError(try s.perform(action, id: "p02")) { error in
                        XCTAssertEqual(error as? LivePatchServiceError,
                                       .invalidTransition(id: "p02", state: state, action: action), "\(state) \(action)")
                    }
                    XCTAssertEqual(try s.get("p02").state, state, "\(state) \(action): unchanged")
                    XCTAssertEqual(s.version, version, "\(state) \(action): not a mutation")
                    XCTAssertEqual(try PayloadTests.memory(image), memory, "\(state) \(action): memory unchanged")
                }
                checked += 1
            }
        }
        XCTAssertEqual(checked, 20)
    }

    func testReplaceRevertsTheOthersAndFailuresRecordErrno() throws {
        let (s, image, bytes) = try service()
        try s.upload(id: "p02", bytes: bytes)
        let (_, b01, _) = try PayloadTests.build("01-greeting-len-fix", "x86_64")
        try s.upload(id: "p01", bytes: b01)
        for a in [A.check, .apply] { try s.perform(a, id: "p02") }
        try s.perform(.check, id: "p01")
        try s.perform(.replace, id: "p01")
        XCTAssertEqual(try s.get("p01").state, .applied)
        XCTAssertEqual(try s.get("p02").state, .reverted)
        XCTAssertEqual(try image.call("scaled", [10]).signedValue, 31)
        XCTAssertEqual(try image.call("greeting_len", [5]).signedValue, 0)
        // A payload for another build: check fails, stays LOADED, rc = -EINVAL.
        var wrong = bytes
        let e = try ELFFile(bytes: wrong)
        wrong[Int(e.section(named: PayloadFormat.dependsSection)!.offset) + 16] ^= 0xff
        try s.upload(id: "wrong-build", bytes: try PayloadFormat.sealed(wrong))
        XCTAssertThrowsError(try s.perform(.check, id: "wrong-build")) { error in
            guard case let .actionFailed(_, action, errno, reason)? = error as? LivePatchServiceError else { return XCTFail("\(error)") }
            XCTAssertEqual(action, .check)
            XCTAssertEqual(errno, -22)
            XCTAssertTrue(reason.contains("was built against build id"), reason)
        }
        XCTAssertEqual(try s.get("wrong-build").state, .loaded)
        XCTAssertEqual(try s.get("wrong-build").rc, -22)
    }

    func testIDsListAndVersion() throws {
        let (s, _, bytes) = try service()
        for bad in ["", String(repeating: "a", count: 41), "has space", "slash/es"] {
            XCTAssertThrowsError(try s.upload(id: bad, bytes: bytes), "'\(bad)'")
        }
        XCTAssertNoThrow(try s.upload(id: String(repeating: "a", count: 40), bytes: bytes))
        XCTAssertThrowsError(try s.upload(id: String(repeating: "a", count: 40), bytes: bytes)) { error in
            XCTAssertEqual(error as? LivePatchServiceError, .exists(String(repeating: "a", count: 40)))
        }
        for i in 0..<5 { try s.upload(id: "p\(i)", bytes: bytes) }
        let v = s.version
        let page1 = s.list(start: 0, count: 4), page2 = s.list(start: 4, count: 4)
        XCTAssertEqual(page1.total, 6)
        XCTAssertEqual(page1.statuses.count + page2.statuses.count, 6)
        XCTAssertEqual(page1.version, v)
        XCTAssertEqual(page2.version, v, "no mutation between the pages")
        try s.perform(.unload, id: "p0")
        XCTAssertNotEqual(s.list().version, v, "every mutation changes the version")
        XCTAssertThrowsError(try s.get("p0")) { error in
            XCTAssertEqual(error as? LivePatchServiceError, .noSuchPayload("p0"))
        }
    }
}
