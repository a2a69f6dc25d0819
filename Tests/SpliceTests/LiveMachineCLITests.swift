import Crypto
import Foundation
import Splice
import XCTest

/// The real `splice` executable against a machine it started in the background: the
/// workload runs on every vCPU the whole time and its results switch as payloads go in
/// and out.
final class LiveMachineCLITests: XCTestCase {
    var directory = ""
    var socket: String { directory + "/machine.sock" }

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "splice-cli-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDown() {
        _ = try? runSplice(["machine", "stop", "--socket", socket])
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// `splice …` against this test's machine; fails the test on an unexpected exit code.
    @discardableResult
    func splice(_ args: [String], expect status: Int32 = 0, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let r = try runSplice(args + ["--socket", socket])
        XCTAssertEqual(r.status, status, "splice \(args.joined(separator: " ")): \(r.out)\(r.err)", file: file, line: line)
        return r.out + r.err
    }

    func json<T: Decodable>(_ type: T.Type, _ args: [String]) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(try splice(args + ["--json"]).utf8))
    }

    func buildPayload(_ isa: String, _ original: String, _ patched: String, _ name: String,
                      target: String = "kernel", file: String? = nil) throws -> String {
        let out = directory + "/" + (file ?? "\(name)-\(isa).lp")
        let r = try runSplice(["build", "--original", samplePath("patches/\(original)/orig-\(isa).o"),
                               "--patched", samplePath("patches/\(patched)/patched-\(isa).o"),
                               "--target", samplePath("\(target)-\(isa).elf"), "-o", out])
        XCTAssertEqual(r.status, 0, r.err)
        return out
    }

    /// Waits until every vCPU has recorded more than a ring's worth of results since now,
    /// then checks each of the newest: both results must be a·x + b.
    func expectWorkload(_ a: Int64, _ b: Int64, _ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let before = try json(LiveMachine.Status.self, ["machine", "status"]).vcpus.map(\.iterations)
        let deadline = Date(timeIntervalSinceNow: 20)
        var status: LiveMachine.Status
        repeat {
            status = try json(LiveMachine.Status.self, ["machine", "status", "--records", "16"])
        } while zip(status.vcpus, before).contains(where: { $0.iterations < $1 + 64 }) && Date() < deadline
        for v in status.vcpus {
            XCTAssertEqual(v.state, .running, "vCPU \(v.index) \(what)", file: file, line: line)
            XCTAssertGreaterThan(v.iterations, before[v.index] + 64, "vCPU \(v.index) did not run on \(what)", file: file, line: line)
            XCTAssertEqual(v.records.count, 16, file: file, line: line)
            for r in v.records {
                XCTAssertEqual(r.results, [a * r.x + b, a * r.x + b], "vCPU \(v.index) \(what): x=\(r.x)", file: file, line: line)
            }
        }
    }

    func testTheCLIDrivesARunningMachineThroughTheLifeCycle() throws {
        for isa in ["x86_64", "ppc64le"] {
            let p02 = try buildPayload(isa, "02-scaled-plus-two", "02-scaled-plus-two", "p02")
            let cumulative = try buildPayload(isa, "01-greeting-len-fix", "04-scaled-twice-stacked", "cum")
            let started = try splice(["machine", "start", "--image", samplePath("kernel-\(isa).elf"), "--cpus", "2"])
            XCTAssertTrue(started.contains("machine started"), started)
            try expectWorkload(3, 1, "\(isa) before any payload")

            try splice(["upload", "p02", p02])
            try splice(["upload", "cum", cumulative])
            try splice(["upload", "p02", p02], expect: 2) // EEXIST
            var page = try json(LiveMachine.Page.self, ["list", "--page-size", "1"]) // two pages, one version
            XCTAssertEqual(page.statuses.map(\.id), ["p02", "cum"])
            XCTAssertEqual(page.statuses.map(\.state), [.loaded, .loaded])
            XCTAssertTrue(try splice(["list"]).contains("version \(page.version), 2 payloads"))

            XCTAssertTrue(try splice(["apply", "p02"], expect: 2).contains("it is LOADED (EINVAL)"))
            try splice(["check", "p02"])
            XCTAssertTrue(try splice(["apply", "p02"]).contains("apply p02: APPLIED"))
            try expectWorkload(3, 2, "\(isa) with p02 applied")
            XCTAssertEqual(try splice(["machine", "call", "scaled_twice", "2"]), "scaled_twice(2) = 26\n") // scaled(scaled(2)), +2 each

            try splice(["check", "cum"])
            XCTAssertTrue(try splice(["replace", "cum"]).contains("replace cum: APPLIED"))
            page = try json(LiveMachine.Page.self, ["list"])
            XCTAssertEqual(page.statuses.map(\.state), [.reverted, .applied])
            XCTAssertEqual(try splice(["machine", "call", "scaled_twice", "2"]), "scaled_twice(2) = 19\n") // scaled(2) + scaled(3)
            try expectWorkload(3, 2, "\(isa) after REPLACE by the cumulative payload")

            try splice(["revert", "cum"])
            try expectWorkload(3, 1, "\(isa) after the revert")
            XCTAssertEqual(try splice(["machine", "call", "scaled_twice", "2"]), "scaled_twice(2) = 22\n")

            try splice(["unload", "p02"])
            try splice(["unload", "cum"])
            try splice(["get", "cum"], expect: 2)
            XCTAssertEqual(try json(LiveMachine.Page.self, ["list"]).total, 0)
            let status = try json(LiveMachine.Status.self, ["machine", "status"])
            XCTAssertEqual(status.activeRedirects, 0)
            XCTAssertTrue(status.vcpus.allSatisfy { $0.state == .running })

            try splice(["machine", "stop"])
            XCTAssertFalse(FileManager.default.fileExists(atPath: socket), "the socket outlived the machine")
            try splice(["list"], expect: 6)
        }
    }

    func testLoadLeavesNothingBehindWhenCheckFails() throws {
        try splice(["machine", "start", "--cpus", "1", "--image", samplePath(Samples.x86_64)])
        // A ppc64le payload on an x86-64 machine: uploads (it parses) but check refuses it.
        let foreign = try buildPayload("ppc64le", "02-scaled-plus-two", "02-scaled-plus-two", "foreign")
        let out = try splice(["load", "wrong", foreign], expect: 1) // xen-livepatch's "error"
        XCTAssertTrue(out.contains("check of payload wrong failed"), out)
        XCTAssertEqual(try json(LiveMachine.Page.self, ["list"]).total, 0, "load left the payload behind")
        XCTAssertTrue(try splice(["load", "wrong", foreign, "--exit-status", "splice"], expect: 3).contains("check of payload wrong failed"))
        XCTAssertEqual(try json(LiveMachine.Page.self, ["list"]).total, 0, "load left the payload behind")
    }

    /// xen-livepatch's contract: `load FILE` names the payload after the file and exits 0
    /// (success), 1 (error) or 2 (try again). "Try again" is shown for real: every vCPU
    /// loops inside busy_target while the non-stop engine is asked to patch it, so the
    /// apply stays in progress and then fails with -EBUSY.
    func testLoadFollowsXenLivepatch() throws {
        let image = samplePath("conformance-x86_64.elf")
        let hello = try buildPayload("x86_64", "conformance/xen-hello-world", "conformance/xen-hello-world", "hello",
                                     target: "conformance", file: "hello.livepatch")
        let busy = try buildPayload("x86_64", "conformance/linux-callbacks-busy", "conformance/linux-callbacks-busy", "busy",
                                    target: "conformance", file: "busy.livepatch")
        let flag = try XCTUnwrap(try ELFFile(contentsOf: image).symbol(named: "busy_flag")).value
        try splice(["machine", "start", "--image", image, "--cpus", "2", "--workload", "busy_workload",
                    "--engine", "nonstop", "--stack-wait-ms", "1500"])

        // 0: uploaded under the file's base name, checked, applied.
        XCTAssertTrue(try splice(["load", hello]).contains("apply hello: APPLIED"))
        XCTAssertEqual(try json(LiveMachine.PayloadStatus.self, ["get", "hello"]).state, .applied)
        try splice(["revert", "hello"])
        try splice(["unload", "hello"])
        // 1: an error (a file that is no payload), nothing left behind.
        _ = FileManager.default.createFile(atPath: directory + "/junk.livepatch", contents: Data("not an ELF".utf8))
        XCTAssertTrue(try splice(["load", directory + "/junk.livepatch"], expect: 1).contains("not a valid ELF file"))
        XCTAssertEqual(try json(LiveMachine.Page.self, ["list"]).total, 0)

        // 2: try again. Every vCPU enters busy_target and stays there.
        try splice(["machine", "call", "poke", String(flag), "1"])
        Thread.sleep(forTimeInterval: 0.1)
        let stalled = try splice(["load", busy, "--timeout", "0.3"], expect: 2)
        XCTAssertTrue(stalled.contains("apply of payload busy is still in progress"), stalled)
        // Meanwhile another load is refused as busy, and leaves nothing behind either.
        XCTAssertTrue(try splice(["load", hello], expect: 2).contains("EBUSY"))
        // The apply gives up after --stack-wait-ms with -EBUSY: busy stays CHECKED.
        let deadline = Date(timeIntervalSinceNow: 10)
        var s = try json(LiveMachine.PayloadStatus.self, ["get", "busy"])
        while s.state == .progress && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.05)
            s = try json(LiveMachine.PayloadStatus.self, ["get", "busy"])
        }
        XCTAssertEqual(s.state, .checked)
        XCTAssertEqual(s.rc, -16, s.error ?? "")
        XCTAssertTrue(s.error?.contains("busy_target") ?? false, s.error ?? "")
        XCTAssertEqual(try json(LiveMachine.Page.self, ["list"]).statuses.map(\.id), ["busy"])
        // A failed -EBUSY action is "try again" too (Splice's own code for it is 4).
        XCTAssertTrue(try splice(["apply", "busy", "--exit-status", "xen"], expect: 2).contains("failed (-16)"))
        try splice(["apply", "busy"], expect: 4)
        // The function returns: now it applies.
        try splice(["machine", "call", "poke", String(flag), "0"])
        try splice(["apply", "busy"])
        try splice(["revert", "busy"])
        try splice(["unload", "busy"])
    }

    /// Another uid cannot act: the socket's mode keeps it out, and when the mode is opened
    /// up anyway the machine still refuses it by its peer credentials.
    func testAnotherUserCannotActOnTheSocket() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root to run a command as nobody") }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else { throw XCTSkip("no setpriv") }
        // nobody must be able to reach the binary and the socket's directory.
        chmod(directory, 0o755)
        let exe = directory + "/splice"
        try FileManager.default.copyItem(atPath: try XCTUnwrap(Samples.executableDirectory()) + "/splice", toPath: exe)
        chmod(exe, 0o755)
        func asNobody(_ args: [String]) throws -> (status: Int32, output: String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            p.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", exe] + args + ["--socket", socket]
            let pipe = Pipe()
            p.standardOutput = pipe
            p.standardError = pipe
            try p.run()
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return (p.terminationStatus, String(decoding: data, as: UTF8.self))
        }
        XCTAssertEqual(try asNobody(["--help"]).status, 0, "nobody cannot run the copied binary")
        try splice(["machine", "start", "--cpus", "1", "--image", samplePath(Samples.x86_64)])
        var attrs = try FileManager.default.attributesOfItem(atPath: socket)
        XCTAssertEqual((attrs[.posixPermissions] as? NSNumber)?.intValue, 0o600)

        var r = try asNobody(["list"])
        XCTAssertEqual(r.status, 6, r.output)
        XCTAssertTrue(r.output.contains("Permission denied"), r.output)

        chmod(socket, 0o666)
        attrs = try FileManager.default.attributesOfItem(atPath: socket)
        XCTAssertEqual((attrs[.posixPermissions] as? NSNumber)?.intValue, 0o666)
        let p02 = try buildPayload("x86_64", "02-scaled-plus-two", "02-scaled-plus-two", "p02")
        chmod(p02, 0o644)
        for args in [["list"], ["upload", "x", p02], ["machine", "stop"]] {
            r = try asNobody(args)
            XCTAssertEqual(r.status, 6, "\(args): \(r.output)")
            XCTAssertTrue(r.output.contains("uid 65534") && r.output.contains("may not act on this machine"), r.output)
        }
        // Nothing changed, and the owner still can.
        XCTAssertEqual(try json(LiveMachine.Page.self, ["list"]).total, 0)
        try splice(["upload", "mine", p02])
    }

    /// A socket in a directory others can write to could be swapped under the owner: the
    /// machine refuses to serve there.
    func testASocketDirectoryOthersCanWriteIsRefused() throws {
        let open = directory + "/open"
        try FileManager.default.createDirectory(atPath: open, withIntermediateDirectories: true)
        chmod(open, 0o777)
        let r = try runSplice(["machine", "start", "--foreground", "--socket", open + "/m.sock"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("writable by no one else; it is owned by uid \(getuid()) with mode 777"), r.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: open + "/m.sock"))
    }

    /// A malformed request gets a reply saying so; the machine goes on serving.
    func testAMalformedRequestIsAnsweredAndChangesNothing() throws {
        try splice(["machine", "start", "--cpus", "1", "--image", samplePath(Samples.x86_64)])
        let cases: [(String, ControlReply.ErrorKind, String)] = [
            ("not json", .protocolError, "malformed request"),
            ("{\"op\": \"explode\"}", .protocolError, "malformed request"),
            ("{\"op\": \"upload\", \"id\": \"x\"}", .refused, "needs the payload bytes"),
            ("{\"op\": \"upload\", \"id\": \"x\", \"payload\": \"AAAA\"}", .refused, "payload x is not a valid ELF file"),
        ]
        for (garbage, kind, text) in cases {
            let line = try ControlSocket.exchange(path: socket, Array(garbage.utf8))
            let reply = try JSONDecoder().decode(ControlReply.self, from: Data(line))
            XCTAssertFalse(reply.ok, garbage)
            XCTAssertEqual(reply.kind, kind, garbage)
            XCTAssertTrue(reply.error?.contains(text) ?? false, "\(garbage): \(reply.error ?? "")")
        }
        let page = try json(LiveMachine.Page.self, ["list"])
        XCTAssertEqual(page.total, 0)
        XCTAssertTrue(try json(LiveMachine.Status.self, ["machine", "status"]).vcpus.allSatisfy { $0.state == .running })
    }

    func testASignatureIsRequiredAndChecked() throws {
        let trusted = directory + "/trusted", other = directory + "/other"
        XCTAssertEqual(try runSplice(["keygen", trusted]).status, 0)
        XCTAssertEqual(try runSplice(["keygen", other]).status, 0)
        let p02 = try buildPayload("x86_64", "02-scaled-plus-two", "02-scaled-plus-two", "p02")
        XCTAssertEqual(try runSplice(["sign", p02, "--key", trusted + ".pem", "--signer", "test", "-o", p02 + ".good"]).status, 0)
        XCTAssertEqual(try runSplice(["sign", p02, "--key", other + ".pem", "-o", p02 + ".other"]).status, 0)
        var tampered = [UInt8](try XCTUnwrap(FileManager.default.contents(atPath: p02 + ".good")))
        tampered[0x100] ^= 0x01 // one bit inside the ELF payload
        FileManager.default.createFile(atPath: p02 + ".tampered", contents: Data(tampered))

        try splice(["machine", "start", "--cpus", "1", "--image", samplePath(Samples.x86_64),
                    "--require-signature", trusted + ".pub.pem"])
        XCTAssertTrue(try splice(["upload", "a", p02], expect: 2).contains("not signed"))
        XCTAssertTrue(try splice(["upload", "b", p02 + ".tampered"], expect: 2).contains("does not verify: the payload was changed after signing"))
        XCTAssertTrue(try splice(["upload", "c", p02 + ".other"], expect: 2).contains("but this machine trusts only key"))
        XCTAssertEqual(try json(LiveMachine.Page.self, ["list"]).total, 0, "a refused payload was kept")
        try splice(["load", "d", p02 + ".good"])
        try expectWorkload(3, 2, "with the signed payload applied")
    }

    func testTheSignatureLayoutIsTheSeeds() throws {
        let key = P256.Signing.PrivateKey()
        // A payload whose own bytes contain the marker: only the appended one counts.
        let body = Array("ELF...".utf8) + PayloadSignature.marker + Array("more".utf8)
        let signed = try PayloadSignature.sign(body, key: key, signer: "Jane")
        let tail = Array(signed[body.count...])
        XCTAssertEqual(Array(tail.prefix(PayloadSignature.marker.count)), PayloadSignature.marker)
        let h = Array(tail[PayloadSignature.marker.count..<PayloadSignature.marker.count + 12])
        XCTAssertEqual(h[0], 2) // algo: ECDSA P-256 (Splice's addition to Linux's table)
        XCTAssertEqual(h[1], 4) // hash: SHA-256, Linux's HASH_ALGO_SHA256
        XCTAssertEqual(h[3], 4) // signer_len ("Jane")
        XCTAssertEqual(h[4], 20) // key_id_len
        let sigLen = Int(h[8]) << 24 | Int(h[9]) << 16 | Int(h[10]) << 8 | Int(h[11])
        XCTAssertEqual(tail.count, PayloadSignature.marker.count + 12 + sigLen + 20 + 4)
        XCTAssertEqual(String(decoding: tail.suffix(4), as: UTF8.self), "Jane")
        XCTAssertEqual(try PayloadSignature.verified(signed, name: "p", trusted: key.publicKey), body)
        let (unsignedBody, none) = try PayloadSignature.split(body, name: "p")
        XCTAssertEqual(unsignedBody, body)
        XCTAssertNil(none)
        // A header whose lengths do not add up is malformed, not silently unsigned.
        var broken = signed
        broken[body.count + PayloadSignature.marker.count + 11] &+= 1
        XCTAssertThrowsError(try PayloadSignature.split(broken, name: "p")) { error in
            guard case SignatureError.malformed = error else { return XCTFail("\(error)") }
        }
    }
}
