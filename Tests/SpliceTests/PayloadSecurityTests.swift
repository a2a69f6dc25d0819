import Crypto
import Splice
import XCTest

/// What a hostile payload author without the key can hand the owner: a huge upload made to
/// slow down the signature search, a payload edited after it was built, a build id copied
/// from another payload (docs/security.md).
final class PayloadSecurityTests: XCTestCase {
    /// 45 MB of '~' (each byte could start the marker): no signature is found in it, so an
    /// upload of it is unsigned; the same size of payload with a real signature verifies.
    /// (How long each takes is `splice bench signature`.)
    func testAHugeUploadIsSplitCorrectly() throws {
        let tildes = [UInt8](repeating: UInt8(ascii: "~"), count: 45_000_000)
        let (body, none) = try PayloadSignature.split(tildes, name: "tildes")
        XCTAssertNil(none)
        XCTAssertEqual(body.count, tildes.count)
        let key = P256.Signing.PrivateKey()
        XCTAssertThrowsError(try PayloadSignature.verified(tildes, name: "tildes", trusted: key.publicKey)) { error in
            XCTAssertEqual(error as? SignatureError, .unsigned("tildes"))
        }
        // A marker in the body, and the real one at the end.
        var payload = tildes
        payload.replaceSubrange(1000..<(1000 + PayloadSignature.marker.count), with: PayloadSignature.marker)
        let signed = try PayloadSignature.sign(payload, key: key, signer: "author")
        XCTAssertEqual(try PayloadSignature.verified(signed, name: "signed", trusted: key.publicKey), payload)
        var tampered = signed
        tampered[20_000_000] ^= 1
        XCTAssertThrowsError(try PayloadSignature.verified(tampered, name: "tampered", trusted: key.publicKey)) { error in
            guard case .doesNotVerify? = error as? SignatureError else { return XCTFail("\(error)") }
        }
    }

    /// A marker farther from the end than any signature can reach is part of the payload,
    /// even if its header's lengths claim the rest of the file; nearer, a signature field
    /// longer than 64 KiB is malformed.
    func testAMarkerBeyondTheSignatureWindowIsPayload() throws {
        func file(signatureLength n: Int) -> [UInt8] {
            Array("ELF".utf8) + PayloadSignature.marker + [2, 4, 2, 0, 0, 0, 0, 0, UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)]
                + [UInt8](repeating: 0x55, count: n)
        }
        let far = file(signatureLength: PayloadSignature.maximumTrailer)
        let (body, signature) = try PayloadSignature.split(far, name: "far")
        XCTAssertNil(signature)
        XCTAssertEqual(body, far)
        XCTAssertThrowsError(try PayloadSignature.split(file(signatureLength: PayloadSignature.maximumSignatureLength + 1), name: "long")) { error in
            guard case .malformed? = error as? SignatureError else { return XCTFail("\(error)") }
        }
        // Within the window, the same header is a signature (whose lengths add up).
        let near = Array("ELF".utf8) + PayloadSignature.marker + [2, 4, 2, 0, 0, 0, 0, 0, 0, 0, 0, 3] + [1, 2, 3]
        XCTAssertEqual(try PayloadSignature.split(near, name: "near").signature?.signature, [1, 2, 3])
    }

    /// The build id is the hash of the whole file: the builder's note equals the hash
    /// recomputed from the bytes, sealing again changes nothing, two payloads of different
    /// contents have different ids, and one byte changed anywhere (here in the string
    /// table, which no other check reads) is refused.
    func testTheBuildIDIsTheHashOfTheContents() throws {
        let (p02, b02, _) = try PayloadTests.build("02-scaled-plus-two", "x86_64")
        let (p01, _, _) = try PayloadTests.build("01-greeting-len-fix", "x86_64")
        let range = try XCTUnwrap(PayloadFormat.buildIDRange(in: p02.elf))
        XCTAssertEqual(range.count, 20)
        XCTAssertEqual(PayloadFormat.buildID(of: b02, range: range), p02.buildID)
        XCTAssertEqual(try PayloadFormat.sealed(b02), b02)
        XCTAssertNotEqual(p01.buildID, p02.buildID)
        var zeroed = b02
        zeroed.replaceSubrange(range, with: [UInt8](repeating: 0, count: 20))
        XCTAssertEqual(Array(Insecure.SHA1.hash(data: zeroed)), p02.buildID, "not SHA-1 over the file with the id as zero")

        let strtab = try XCTUnwrap(p02.elf.section(named: ".strtab"))
        var edited = b02
        edited[Int(strtab.offset) + Int(strtab.size) - 2] ^= 0x20
        XCTAssertThrowsError(try Payload(bytes: edited, name: "edited")) { error in
            guard case .buildIDNotContents(note: p02.buildIDHex, contents: _)? = (error as? PayloadError)?.reason else {
                return XCTFail("\(error)")
            }
        }
        let resealed = try Payload(bytes: try PayloadFormat.sealed(edited), name: "resealed")
        XCTAssertNotEqual(resealed.buildID, p02.buildID)
    }
}
