import Foundation
import SpliceHarness

// Built two ways (scripts/fuzz.sh):
// - with -sanitize=fuzzer,address -DFUZZING: libFuzzer's driver runs the target picked by
//   SPLICE_FUZZ=elf|payload|control (libFuzzer's own flags and corpus folders as arguments);
// - plainly: `splice-fuzz elf|payload|control FILE...` replays inputs (a finding, the corpus).

let target: ([UInt8]) -> Void = {
    let env = ProcessInfo.processInfo.environment["SPLICE_FUZZ"]
    switch env ?? CommandLine.arguments.dropFirst().first {
    case "payload"?: return FuzzTargets.payload
    case "elf"?: return FuzzTargets.elf
    case "control"?: return FuzzTargets.control
    default:
        FileHandle.standardError.write(Data("splice-fuzz: set SPLICE_FUZZ=elf, payload or control (or name it first to replay files)\n".utf8))
        exit(2)
    }
}()

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    target(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

#if FUZZING
// libFuzzer's entry for a program with its own main (SwiftPM gives every executable one).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32
#endif

@main
struct FuzzMain {
    static func main() {
        #if FUZZING
        _ = target
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzzOne($0, $1) })
        #else
        let files = CommandLine.arguments.dropFirst(2)
        for path in files {
            guard let data = FileManager.default.contents(atPath: path) else { print("cannot read \(path)"); exit(1) }
            target([UInt8](data))
        }
        print("replayed \(files.count) inputs without a crash")
        #endif
    }
}
