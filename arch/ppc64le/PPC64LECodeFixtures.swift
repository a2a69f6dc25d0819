import SplicePatching

/// ppc64le code fixtures (ELFv2: the argument and the result in r3).
public struct PPC64LECodeFixtures: CodeFixtures {
    public init() {}
    typealias P = PPC64LEEncoder

    public func addConstant(_ value: Int16) -> [UInt8] { [P.addi(3, 3, value), P.blr].flatMap(PPC64LEInstruction.bytes) }

    public func double() -> [UInt8] { [P.add(3, 3, 3), P.blr].flatMap(PPC64LEInstruction.bytes) }

    /// A global entry that computes r2 from r12 against `.TOC.` (REL16_HA/LO), then
    /// `addis r9,r2; ld r9,(r9)` of the global (TOC16_HA/LO_DS), `mulld r3,r3,r9; blr`.
    /// The local entry is 8 bytes in (st_other 3 << 5).
    public func multiplyByGlobal(_ global: String) -> FixtureFunction {
        let words = [P.addis(2, 12, 0), P.addi(2, 2, 0), P.addis(9, 2, 0), P.ld(9, 0, 9), P.mulld(3, 3, 9), P.blr]
        let toc = PPC64LEPatchBackend().tocSymbol!
        return FixtureFunction(code: words.flatMap(PPC64LEInstruction.bytes), relocations: [
            .init(offset: 0, type: PPC64Relocation.rel16HA.rawValue, symbol: toc, addend: 0),
            .init(offset: 4, type: PPC64Relocation.rel16LO.rawValue, symbol: toc, addend: 4),
            .init(offset: 8, type: PPC64Relocation.toc16HA.rawValue, symbol: global, addend: 0),
            .init(offset: 12, type: PPC64Relocation.toc16LODS.rawValue, symbol: global, addend: 0),
        ], symbolOther: 3 << 5)
    }
}
