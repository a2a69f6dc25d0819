import ArgumentParser
import Crypto
import Foundation
import SpliceBytes
import SpliceFiles
import SplicePayload

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a P-256 signing key pair for payload signatures: PREFIX.pem (private, 0600) and PREFIX.pub.pem.")
    @Argument(help: "Path prefix of the two files.") var prefix: String
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try reportingErrors {
            let key = P256.Signing.PrivateKey()
            let privatePath = prefix + ".pem", publicPath = prefix + ".pub.pem"
            // Each created exclusively (an existing key or a symlink is refused), the
            // private one 0600 from its first byte; both or neither.
            try SafeFile.createNew([(privatePath, Array(key.pemRepresentation.utf8), 0o600),
                                    (publicPath, Array(key.publicKey.pemRepresentation.utf8), 0o644)])
            let id = PayloadSignature.keyID(of: key.publicKey).hexDigits
            if json { try printJSON(["privateKey": privatePath, "publicKey": publicPath, "keyID": id]); return }
            print("wrote \(privatePath) and \(publicPath); key id \(id)")
        }
    }
}

struct Sign: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Append a signature to a payload (Linux module signing's layout, as the xSplice design adopts it: marker, header, signature, key id, signer).")
    @Argument(help: "The payload file.") var payload: String
    @Option(help: "The private key (PEM; splice keygen).") var key: String
    @Option(help: "The signer's name recorded in the signature.") var signer = "splice"
    @Option(name: .shortAndLong, help: "Output file (default: PAYLOAD.signed).") var output: String?
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try reportingErrors {
            let bytes = [UInt8](try readPayloadFile(payload))
            if try PayloadSignature.split(bytes, name: payload).signature != nil {
                throw CommandError(description: "\(payload) is already signed")
            }
            _ = try Payload(bytes: bytes, name: payload) // sign only what a machine would accept
            let privateKey = try PayloadSignature.privateKey(pemFile: key)
            let signed = try PayloadSignature.sign(bytes, key: privateKey, signer: signer)
            let out = output ?? payload + ".signed"
            try SafeFile.write(signed, to: out)
            let id = PayloadSignature.keyID(of: privateKey.publicKey).hexDigits
            if json {
                try printJSON(["payload": payload, "output": out, "keyID": id, "signer": signer, "appended": String(signed.count - bytes.count)])
                return
            }
            print("signed \(payload) -> \(out): \(signed.count - bytes.count) bytes appended, key id \(id), signer \(signer)")
        }
    }
}
