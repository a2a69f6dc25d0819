import SpliceArchitectures
import SpliceDaemon
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceHarness
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
import Crypto
import Foundation

/// `splice bench signature`: what finding an upload's appended signature costs, next to the
/// floor any verifier pays, hashing the same bytes once (SHA-256). Measured on a 45 MB upload
/// of `~` bytes (every byte could start the marker) and on a 45 MB payload with a real
/// signature, so that a scan that grows with the payload shows.
public enum SignatureBenchmark {
    public struct Row: Codable, Sendable {
        public var input: String
        public var bytes: Int
        /// `PayloadSignature.split` (marker search and header), best of the rounds.
        public var splitMilliseconds: Double
        /// `PayloadSignature.verified` (split, then ECDSA over SHA-256), best of the rounds.
        public var verifyMilliseconds: Double?
        /// SHA-256 of the same bytes, best of the rounds.
        public var sha256Milliseconds: Double
    }

    public static func run(megabytes: Int = 45, rounds: Int = 5) throws -> [Row] {
        let size = megabytes * 1_000_000
        let key = P256.Signing.PrivateKey()
        let tildes = [UInt8](repeating: UInt8(ascii: "~"), count: size)
        var body = [UInt8](repeating: 0, count: size)
        var rng = SplitMix64(seed: 45)
        body.withUnsafeMutableBytes { raw in
            for i in 0..<size / 8 { raw.storeBytes(of: rng.next(), toByteOffset: 8 * i, as: UInt64.self) }
        }
        let signed = try PayloadSignature.sign(body, key: key, signer: "bench")

        func best(_ body: () throws -> Void) rethrows -> Double {
            var b = Double.infinity
            for _ in 0..<rounds {
                let start = DispatchTime.now().uptimeNanoseconds
                try body()
                b = min(b, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
            }
            return b
        }
        var sink = 0
        let tildeSplit = try best { sink &+= try PayloadSignature.split(tildes, name: "bench").payload.count }
        let tildeHash = best { sink &+= SHA256.hash(data: tildes).description.count }
        let signedSplit = try best { sink &+= try PayloadSignature.split(signed, name: "bench").payload.count }
        let signedVerify = try best { sink &+= try PayloadSignature.verified(signed, name: "bench", trusted: key.publicKey).count }
        let signedHash = best { sink &+= SHA256.hash(data: signed).description.count }
        precondition(sink != 0)
        return [
            Row(input: "\(megabytes) MB of '~' (unsigned)", bytes: tildes.count, splitMilliseconds: tildeSplit, verifyMilliseconds: nil,
                sha256Milliseconds: tildeHash),
            Row(input: "\(megabytes) MB payload, signed", bytes: signed.count, splitMilliseconds: signedSplit,
                verifyMilliseconds: signedVerify, sha256Milliseconds: signedHash),
        ]
    }
}
