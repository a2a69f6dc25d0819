/// Small functions of a known shape, written with an ISA's own encoder, for benchmarks and
/// tests that need guest code without a compiler. Each backend offers its own (arch/<isa>),
/// so common code asks for "a function that adds 7" and never holds an ISA's bytes.
public protocol CodeFixtures: Sendable {
    /// `long f(long x) { return x + value; }`: position-independent, no other reference.
    func addConstant(_ value: Int16) -> [UInt8]
    /// `long f(long x) { return 2 * x; }`: position-independent, no other reference.
    func double() -> [UInt8]
    /// `long f(long x) { return x * global; }` for a 64-bit global named `global`, as a
    /// payload function: its code and the relocations it needs.
    func multiplyByGlobal(_ global: String) -> FixtureFunction
}

/// A fixture that lives in a relocatable object: code, relocations against symbols by
/// name, and the symbol's `st_other` (ELFv2 keeps the local entry offset there).
public struct FixtureFunction: Sendable {
    public struct Relocation: Sendable {
        public var offset: UInt64
        public var type: UInt32
        public var symbol: String
        public var addend: Int64
        public init(offset: UInt64, type: UInt32, symbol: String, addend: Int64) {
            self.offset = offset
            self.type = type
            self.symbol = symbol
            self.addend = addend
        }
    }

    public var code: [UInt8]
    public var relocations: [Relocation]
    public var symbolOther: UInt8

    public init(code: [UInt8], relocations: [Relocation], symbolOther: UInt8 = 0) {
        self.code = code
        self.relocations = relocations
        self.symbolOther = symbolOther
    }
}
