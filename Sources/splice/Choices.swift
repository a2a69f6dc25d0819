import ArgumentParser
import SpliceArchitectures
import SpliceDaemon
import SpliceMachine
import SplicePatching

// Closed choices of the command line, parsed (and listed in --help) by ArgumentParser.
// The ISA names and return strategies come from the registry, so a new backend adds its
// values here without a change to the CLI.

extension PatchEngineKind: ExpressibleByArgument {}
extension EntryKind: ExpressibleByArgument {}

/// An ISA that has a patch backend, by the name the registry gives it.
struct ISAName: ExpressibleByArgument, Hashable, CustomStringConvertible {
    let name: String

    init?(argument: String) {
        guard Architectures.backends.contains(where: { $0.architecture.name == argument }) else { return nil }
        name = argument
    }

    private init(name: String) { self.name = name }

    /// The first backend the registry lists.
    static var first: ISAName { ISAName(name: Architectures.backends[0].architecture.name) }
    static var allValueStrings: [String] { Architectures.backends.map(\.architecture.name) }
    var defaultValueDescription: String { name }
    var description: String { name }
}

/// A return strategy some backend offers (`PatchBackend.returnStrategies`).
struct ReturnStrategyName: ExpressibleByArgument, Hashable, CustomStringConvertible {
    let name: String

    init?(argument: String) {
        guard Architectures.returnStrategies.contains(argument) else { return nil }
        name = argument
    }

    static var allValueStrings: [String] { Architectures.returnStrategies }
    var description: String { name }
}

/// Which scenarios `splice matrix` runs without --scenario.
enum ScenarioSuite: String, ExpressibleByArgument, CaseIterable {
    /// Both of the others.
    case all
    /// scenarios/: the bundled live-machine scenarios.
    case demo
    /// samples/conformance/: the Xen and Linux conformance cases.
    case conformance
}
