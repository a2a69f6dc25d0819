import Splice
import XCTest

/// An action is all-or-nothing: if the k-th function's old bytes no longer verify when
/// the writes happen, the first k−1 are undone before anyone runs again.
final class AtomicityTests: XCTestCase {
    /// Runs the work directly, but first changes one byte at `address` (as if another
    /// agent had written there between prepare and commit).
    final class TamperingExecutor: PatchExecutor {
        let machine: Machine
        let address: UInt64
        init(machine: Machine, address: UInt64) {
            self.machine = machine
            self.address = address
        }
        func execute(_ work: ((UInt64, Int) -> Void) throws -> Void) throws {
            try machine.memory.write(address, [0xcc])
            try DirectExecutor(machine: machine).execute(work)
        }
        func callGuest(_ entry: CallEntry, _ arguments: [Int64]) throws -> Int64 {
            try DirectExecutor(machine: machine).callGuest(entry, arguments)
        }
    }

    func testKthFunctionFailingUndoesTheFirstKMinusOne() throws {
        for isa in PayloadTests.isas {
            let image = try loadImage(path: PayloadTests.targetPath(isa))
            let patcher = try LivePatcher(image: image, backend: try Architectures.backend(for: image.elf))
            let names = ["scaled", "gcd", "fib", "greeting_len"]
            let sites = try names.map { try patcher.site(of: $0).address }
            let tampered = sites[2] // the third function
            var before = try image.machine.memory.read(tampered, count: 1)
            let original = try names.map { try image.machine.memory.read(try patcher.site(of: $0).address, count: 8) }
            patcher.executor = TamperingExecutor(machine: image.machine, address: tampered)
            XCTAssertThrowsError(try patcher.apply(batch: names.map { .init(function: $0, target: .address(try! image.function(named: "add").value)) })) { error in
                guard case PatchError.unexpectedBytes(let f, let a, _, let found)? = error as? PatchError else {
                    return XCTFail("\(isa): \(error)")
                }
                XCTAssertEqual(f, "fib", isa)
                XCTAssertEqual(a, tampered, isa)
                XCTAssertEqual(found.first, 0xcc, isa)
            }
            // Functions 1 and 2 were written and undone; 3 and 4 never written.
            for (i, name) in names.enumerated() where i != 2 {
                XCTAssertEqual(try image.machine.memory.read(sites[i], count: 8), original[i], "\(isa): \(name) back as it was")
            }
            XCTAssertTrue(patcher.active.isEmpty, "\(isa): nothing recorded as applied")
            // Undo the tampering by hand; the same batch then applies directly.
            before[0] = original[2][0]
            try image.machine.memory.write(tampered, before)
            patcher.executor = DirectExecutor(machine: image.machine)
            XCTAssertEqual(try patcher.apply(batch: names.map { .init(function: $0, target: .address(try image.function(named: "add").value)) }).count, 4)
        }
    }

    /// REPLACE naming a redirect that does not exist is refused before anything is
    /// prepared or written, and leaves no redirect marked as being reverted: the same
    /// REPLACE without the bad id then works. An id named twice is reverted once.
    func testReplaceWithAnUnknownIdChangesNothing() throws {
        for isa in PayloadTests.isas {
            let image = try loadImage(path: PayloadTests.targetPath(isa))
            let patcher = try LivePatcher(image: image, backend: try Architectures.backend(for: image.elf))
            let add = try image.function(named: "add").value
            let fib = try image.function(named: "fib").value
            let first = try patcher.apply(batch: ["scaled", "fib"].map { .init(function: $0, target: .address(add)) })
            let text = try image.regions.filter { $0.permissions.contains(.execute) }
                .map { try image.machine.memory.read($0.base, count: Int($0.size)) }
            let ids = first.map(\.id)
            XCTAssertThrowsError(try patcher.replace(reverting: ids + [9999], with: [.init(function: "scaled", target: .address(fib))])) {
                guard case PatchError.noSuchRedirect(9999)? = $0 as? PatchError else { return XCTFail("\(isa): \($0)") }
            }
            XCTAssertEqual(patcher.active.map(\.id), ids, "\(isa): the listed redirects are untouched")
            XCTAssertEqual(try image.regions.filter { $0.permissions.contains(.execute) }
                .map { try image.machine.memory.read($0.base, count: Int($0.size)) }, text, "\(isa): no byte changed")
            let replaced = try patcher.replace(reverting: ids + [ids[0]], with: [.init(function: "scaled", target: .address(fib))])
            XCTAssertEqual(patcher.active.map(\.id), replaced.map(\.id), "\(isa): both old redirects reverted, once each")
            XCTAssertEqual(try image.call("scaled", [10]).signedValue, 55, "\(isa): scaled now runs fib")
        }
    }
}
