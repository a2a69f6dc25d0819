import Crypto
import Foundation
import SpliceBytes

/// An appended payload signature in the layout of Linux module signing
/// (which the xSplice design adopts): the payload bytes, then the marker `~Module signature appended~\n`,
/// a 12-byte header, the signature, the key identifier and the signer's name.
///
/// ```
/// u8 algo, u8 hash, u8 id_type, u8 signer_len, u8 key_id_len, u8 pad[3], be32 sig_len
/// ```
///
/// Linux's tables stop at DSA and RSA; Splice signs with ECDSA over P-256, so it adds
/// `algo` 2 (ECDSA P-256) and `id_type` 2 (the first 20 bytes of the SHA-256 of the
/// public key's X9.63 form); `hash` is Linux's 4 (SHA-256). The signature (DER) covers
/// every byte before the marker.
public struct PayloadSignature: Sendable, Equatable {
    public static let marker = Array("~Module signature appended~\n".utf8)
    public static let headerSize = 12
    public static let algorithmECDSAP256: UInt8 = 2
    public static let hashSHA256: UInt8 = 4
    public static let keyIDDigest: UInt8 = 2

    public var algorithm: UInt8
    public var hash: UInt8
    public var keyIDType: UInt8
    public var signature: [UInt8]
    public var keyID: [UInt8]
    public var signer: String


    /// The key identifier Splice uses for `key`.
    public static func keyID(of key: P256.Signing.PublicKey) -> [UInt8] {
        Array(SHA256.hash(data: key.x963Representation).prefix(20))
    }

    /// `payload` with a signature by `key` appended.
    public static func sign(_ payload: [UInt8], key: P256.Signing.PrivateKey, signer: String) throws -> [UInt8] {
        let signerBytes = Array(signer.utf8)
        guard signerBytes.count <= 255 else { throw SignatureError.badKey(signer, reason: "signer name longer than 255 bytes") }
        let signature = Array(try key.signature(for: payload).derRepresentation)
        let id = keyID(of: key.publicKey)
        var out = payload
        out += marker
        out += [algorithmECDSAP256, hashSHA256, keyIDDigest, UInt8(signerBytes.count), UInt8(id.count), 0, 0, 0]
        let n = UInt32(signature.count)
        out += [UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)]
        out += signature + id + signerBytes
        return out
    }

    /// The longest signature field accepted: 64 KiB, far above any scheme's (an ECDSA P-256
    /// signature is at most 72 bytes, an RSA-16384 one 2 KiB). It bounds where a marker can
    /// be: within `maximumTrailer` bytes of the end.
    public static let maximumSignatureLength = 1 << 16
    public static let maximumTrailer = marker.count + headerSize + maximumSignatureLength + 255 + 255

    /// Splits `bytes` into the payload and its appended signature (nil when there is none:
    /// no marker whose header accounts for exactly the bytes after it). Only the last
    /// `maximumTrailer` bytes are searched, without copying, so the cost does not grow with
    /// the payload (a 45 MB file of marker-like bytes is split as fast as a small one).
    public static func split(_ bytes: [UInt8], name: String) throws -> (payload: [UInt8], signature: PayloadSignature?) {
        // The last marker whose lengths add up to the end of the file: the payload itself
        // may contain the marker text anywhere.
        var end = bytes.count - marker.count - headerSize
        let lowest = max(0, bytes.count - maximumTrailer)
        var sawMarker = false
        while end >= lowest {
            if bytes[end] == marker[0], bytes[end..<end + marker.count].elementsEqual(marker) {
                sawMarker = true
                let h = end + marker.count
                let signerLength = Int(bytes[h + 3]), keyIDLength = Int(bytes[h + 4])
                let sigLength = Int(bytes[h + 8]) << 24 | Int(bytes[h + 9]) << 16 | Int(bytes[h + 10]) << 8 | Int(bytes[h + 11])
                let body = h + headerSize
                if sigLength <= maximumSignatureLength, body + sigLength + keyIDLength + signerLength == bytes.count {
                    let s = body, k = s + sigLength, n = k + keyIDLength
                    return (Array(bytes[..<end]), PayloadSignature(
                        algorithm: bytes[h], hash: bytes[h + 1], keyIDType: bytes[h + 2],
                        signature: Array(bytes[s..<k]), keyID: Array(bytes[k..<n]),
                        signer: String(decoding: bytes[n...], as: UTF8.self)))
                }
            }
            end -= 1
        }
        if sawMarker {
            throw SignatureError.malformed(name, reason: "a signature marker is present but no header's lengths (signature + key id + signer) reach exactly the end of the file")
        }
        return (bytes, nil)
    }

    /// The payload bytes of `bytes` once its signature is checked against `trusted`.
    public static func verified(_ bytes: [UInt8], name: String, trusted: P256.Signing.PublicKey) throws -> [UInt8] {
        let (payload, found) = try split(bytes, name: name)
        guard let sig = found else { throw SignatureError.unsigned(name) }
        guard sig.algorithm == algorithmECDSAP256, sig.hash == hashSHA256 else {
            throw SignatureError.unsupported(name, algorithm: sig.algorithm, hash: sig.hash)
        }
        let trustedID = keyID(of: trusted)
        guard sig.keyID == trustedID else {
            throw SignatureError.unknownKey(name, keyID: sig.keyID.hexDigits, trusted: trustedID.hexDigits)
        }
        guard let ecdsa = try? P256.Signing.ECDSASignature(derRepresentation: sig.signature),
              trusted.isValidSignature(ecdsa, for: payload)
        else { throw SignatureError.doesNotVerify(name, keyID: sig.keyID.hexDigits) }
        return payload
    }

    /// A private key from a PEM file (`splice keygen` writes them).
    public static func privateKey(pemFile path: String) throws -> P256.Signing.PrivateKey {
        do { return try P256.Signing.PrivateKey(pemRepresentation: try String(contentsOfFile: path, encoding: .utf8)) } catch {
            throw SignatureError.badKey(path, reason: "not a P-256 private key in PEM form (\(error))")
        }
    }

    public static func publicKey(pemFile path: String) throws -> P256.Signing.PublicKey {
        do { return try P256.Signing.PublicKey(pemRepresentation: try String(contentsOfFile: path, encoding: .utf8)) } catch {
            throw SignatureError.badKey(path, reason: "not a P-256 public key in PEM form (\(error))")
        }
    }
}

public enum SignatureError: Error, Equatable, CustomStringConvertible {
    case unsigned(String)
    case malformed(String, reason: String)
    case unsupported(String, algorithm: UInt8, hash: UInt8)
    case unknownKey(String, keyID: String, trusted: String)
    case doesNotVerify(String, keyID: String)
    case badKey(String, reason: String)

    public var description: String {
        switch self {
        case let .unsigned(name):
            return "\(name): not signed (no '~Module signature appended~' marker at its end); this machine requires a signature"
        case let .malformed(name, why): return "\(name): malformed signature: \(why)"
        case let .unsupported(name, a, h):
            return "\(name): signature algorithm \(a) / hash \(h) is not supported (Splice verifies algorithm 2, ECDSA P-256, with hash 4, SHA-256)"
        case let .unknownKey(name, id, trusted):
            return "\(name): signed with key \(id), but this machine trusts only key \(trusted)"
        case let .doesNotVerify(name, id):
            return "\(name): signature by key \(id) does not verify: the payload was changed after signing"
        case let .badKey(path, why): return "\(path): \(why)"
        }
    }
}
