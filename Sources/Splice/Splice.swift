// The library's front: it only re-exports the modules, each of one purpose
// (docs/architecture.md). Import a single module to depend on less. The backends come
// through SpliceArchitectures, the one module outside arch/ that names them.
@_exported import SpliceArchitectures
@_exported import SpliceBench
@_exported import SpliceBytes
@_exported import SpliceDaemon
@_exported import SpliceDisassembly
@_exported import SpliceELF
@_exported import SpliceFiles
@_exported import SpliceHarness
@_exported import SpliceScenarios
@_exported import SpliceMachine
@_exported import SplicePatching
@_exported import SplicePayload
@_exported import SpliceRuntime
