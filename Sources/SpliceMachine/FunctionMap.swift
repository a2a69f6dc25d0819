import SpliceELF

/// The functions of loaded code, by address: which one holds a PC or a return address.
/// A stack walk asks it where a function starts (to read its prologue).
public struct FunctionMap: Sendable {
    /// Sorted by start; functions of size 0 are left out (nothing can be inside one).
    private let functions: [ELFSymbol]

    public init(_ symbols: [ELFSymbol]) {
        functions = symbols.filter { $0.isFunction && $0.size > 0 }.sorted { $0.value < $1.value }
    }

    /// The function whose bytes hold `address`.
    public func function(containing address: UInt64) -> ELFSymbol? {
        var lo = 0, hi = functions.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if functions[mid].value <= address { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0 else { return nil }
        let f = functions[lo - 1]
        return address < f.value + f.size ? f : nil
    }
}

extension LoadedImage {
    /// The image's functions by address.
    public var functionMap: FunctionMap { FunctionMap(elf.symbols) }
}
