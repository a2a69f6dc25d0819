import SpliceMachine
import SplicePatching

/// What payload code calls into the host for: shadow variables (Linux's klp_shadow_*) and
/// the states of the applied payloads (klp_state), reached through host calls whose entries
/// are mapped near the image's text, so a payload placed there calls them directly.
/// A loader makes one for its machine; it lives as long as the machine.
public final class PayloadServices {
    public let shadows: ShadowVariables
    /// The applied payloads' states, for `splice_state_prev` (the loader keeps it).
    public let states = PayloadStates()
    public let hostCalls: HostCalls

    /// Maps the host-call entries and the shadow heap. The vCPUs must not be running (the
    /// host calls hook every one of them).
    public init(patcher: LivePatcher) throws {
        let image = patcher.image, space = patcher.space
        shadows = try ShadowVariables(space: space)
        let functions = shadows.hostFunctions + states.hostFunctions
        let text = image.regions.filter { $0.permissions.contains(.execute) }.map { $0.end }.max()
        // A region of their own: code arenas come and go with redirects, this stays.
        let entries = try space.mapFree(name: "hostcalls", size: UInt64(functions.count) * HostCalls.entrySize,
                                        near: text ?? space.defaultBase, reach: 1 << 30, permissions: [.read, .execute])
        hostCalls = try HostCalls(machine: image.machine, base: entries.base, functions: functions)
    }
}
