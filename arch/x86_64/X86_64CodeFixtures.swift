import SplicePatching

/// x86-64 code fixtures (SysV: the argument in rdi, the result in rax).
public struct X86_64CodeFixtures: CodeFixtures {
    public init() {}
    typealias E = X86_64Encoder

    public func addConstant(_ value: Int16) -> [UInt8] { E.leaRAX(rdiPlus: Int32(value)) + E.ret }

    public func double() -> [UInt8] { E.movRAXRDI + E.addRAXRAX + E.ret }

    /// `mov rax, [rip + global]; imul rax, rdi; ret`, PC32 against the global (the field
    /// ends the instruction, so the addend is -4).
    public func multiplyByGlobal(_ global: String) -> FixtureFunction {
        FixtureFunction(code: E.movRAX(ripPlus: 0) + E.imulRAXRDI + E.ret,
                        relocations: [.init(offset: 3, type: X86_64Relocation.pc32.rawValue, symbol: global, addend: -4)])
    }
}
