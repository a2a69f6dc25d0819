import SpliceArchitectures
import SpliceDaemon
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
import Foundation

/// One line of an oracle's output: "function a b -> result".
public struct OracleCase: Equatable, Sendable {
    public var function: String
    public var arguments: [Int64]
    public var expected: Int64

    public struct Malformed: Error, CustomStringConvertible {
        public let line: Int, text: String
        public var description: String { "oracle output line \(line) is not 'function args -> result': \(text)" }
    }

    public static func parse(_ text: String) throws -> [OracleCase] {
        try text.split(separator: "\n").enumerated().map { index, line in
            let halves = line.components(separatedBy: " -> ")
            let words = halves[0].split(separator: " ")
            guard halves.count == 2, let name = words.first, let expected = Int64(halves[1]) else {
                throw Malformed(line: index + 1, text: String(line))
            }
            let args = try words.dropFirst().map { w -> Int64 in
                guard let v = Int64(w) else { throw Malformed(line: index + 1, text: String(line)) }
                return v
            }
            return OracleCase(function: String(name), arguments: args, expected: expected)
        }
    }

    public static func parse(file: String) throws -> [OracleCase] {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ELFError.io(path: file, message: "no such file or not readable")
        }
        return try parse(String(decoding: data, as: UTF8.self))
    }
}
