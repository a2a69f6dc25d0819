// swift-tools-version:6.0
import PackageDescription

// Layering, every arrow pointing down (docs/architecture.md):
//   splice CLI (the parts it uses), splice-fuzz (SpliceHarness); Splice, the umbrella, re-exports all
//   -> SpliceBench -> SpliceScenarios (Yams) -> SpliceHarness -> SpliceDaemon
//   -> SpliceArchitectures (the registry: the one module outside arch/ naming a backend)
//   -> arch/<isa> backends -> SpliceRuntime -> SplicePayload -> SplicePatching
//   -> SpliceMachine (Unicorn), SpliceELF (libelf), SpliceDisassembly (Capstone), SpliceFiles
//   -> SpliceBytes (little-endian bytes, hex) -> C system libraries and small C shims.
// Each module is a library product of its own, so a consumer can depend on less than the
// umbrella (the runtime and one backend build without Yams, the harness or the benchmarks).
let package = Package(
    name: "Splice",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "Splice", targets: ["Splice"]),
        .library(name: "SpliceRuntime", targets: ["SpliceRuntime"]),
        .library(name: "SpliceBytes", targets: ["SpliceBytes"]),
        .library(name: "SpliceX86_64", targets: ["SpliceX86_64"]),
        .library(name: "SplicePPC64LE", targets: ["SplicePPC64LE"]),
        .library(name: "SpliceArchitectures", targets: ["SpliceArchitectures"]),
        .library(name: "SpliceDaemon", targets: ["SpliceDaemon"]),
        .library(name: "SpliceHarness", targets: ["SpliceHarness"]),
        .library(name: "SpliceScenarios", targets: ["SpliceScenarios"]),
        .library(name: "SpliceBench", targets: ["SpliceBench"]),
        .executable(name: "splice", targets: ["splice"]),
        .executable(name: "unicorn-bare-bench", targets: ["unicorn-bare-bench"]),
        .executable(name: "splice-fuzz", targets: ["splice-fuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
    ],
    targets: [
        .systemLibrary(name: "CUnicorn", pkgConfig: "unicorn",
                       providers: [.apt(["libunicorn-dev"])]),
        .systemLibrary(name: "CCapstone", pkgConfig: "capstone",
                       providers: [.apt(["libcapstone-dev"])]),
        .systemLibrary(name: "CLibelf", pkgConfig: "libelf",
                       providers: [.apt(["libelf-dev"])]),
        .target(name: "CSpliceShims", dependencies: ["CUnicorn"]),
        // SO_PEERCRED for the control socket (struct ucred is not visible to Swift).
        .target(name: "CSpliceSocket"),

        // Files and directories created safely next to other users (checked directories,
        // O_EXCL|O_NOFOLLOW, atomic replacement).
        .target(name: "SpliceFiles"),
        // Little-endian bytes and the hex people read: one reader, one writer, one formatter.
        .target(name: "SpliceBytes"),
        .target(name: "SpliceELF", dependencies: ["CLibelf", "SpliceBytes"]),
        .target(name: "SpliceDisassembly", dependencies: ["CCapstone", "SpliceBytes"]),
        .target(name: "SpliceMachine",
                dependencies: ["CUnicorn", "CSpliceShims", "SpliceBytes", "SpliceELF", "SpliceDisassembly"]),

        .target(name: "SplicePatching", dependencies: ["SpliceBytes", "SpliceMachine", "SpliceELF"]),

        .target(name: "SplicePayload", dependencies: [
            "SpliceBytes", "SpliceELF", "SpliceMachine", "SplicePatching", .product(name: "Crypto", package: "swift-crypto"),
        ]),

        .target(name: "SpliceRuntime", dependencies: ["CSpliceShims", "SpliceBytes", "SpliceMachine", "SplicePatching", "SplicePayload"]),

        .target(name: "SpliceX86_64", dependencies: ["CCapstone", "SpliceBytes", "SpliceMachine", "SplicePatching"], path: "arch/x86_64",
                exclude: ["README.md"]),
        .target(name: "SplicePPC64LE", dependencies: ["CCapstone", "SpliceBytes", "SpliceMachine", "SplicePatching"], path: "arch/ppc64le",
                exclude: ["README.md"]),

        // The registry: the one place outside arch/ that names the backends.
        .target(name: "SpliceArchitectures", dependencies: ["SpliceMachine", "SpliceELF", "SplicePatching", "SpliceX86_64", "SplicePPC64LE"]),
        // A live machine: vCPUs running a workload, the payload life cycle, the control socket.
        .target(name: "SpliceDaemon",
                dependencies: ["SpliceBytes", "SpliceArchitectures", "SpliceMachine", "SpliceELF", "SpliceDisassembly", "SplicePatching", "SplicePayload", "SpliceRuntime", "SpliceFiles", "CSpliceSocket",
                               .product(name: "Crypto", package: "swift-crypto")]),
        // The samples and what checks them: sample paths and payloads, the workload oracle,
        // stress and soak runs, the inspector and redirect preview, the demo, fuzz targets.
        .target(name: "SpliceHarness",
                dependencies: ["SpliceBytes", "SpliceDaemon", "SpliceArchitectures", "SpliceMachine", "SpliceELF", "SpliceDisassembly", "SplicePatching", "SplicePayload", "SpliceRuntime", "SpliceFiles",
                               .product(name: "Crypto", package: "swift-crypto")]),
        // Scenario files (YAML) and their runner, the matrix, traces; the only user of Yams.
        .target(name: "SpliceScenarios",
                dependencies: ["SpliceHarness", "SpliceBytes", "SpliceDaemon", "SpliceArchitectures", "SpliceMachine", "SpliceELF", "SpliceDisassembly", "SplicePatching", "SplicePayload", "SpliceRuntime", "SpliceFiles",
                               .product(name: "Yams", package: "Yams")]),
        // Every benchmark `splice bench` runs.
        .target(name: "SpliceBench",
                dependencies: ["SpliceBytes", "SpliceHarness", "SpliceDaemon", "SpliceArchitectures", "SpliceMachine", "SpliceELF", "SpliceDisassembly", "SplicePatching", "SplicePayload", "SpliceRuntime", "SpliceFiles",
                               .product(name: "Crypto", package: "swift-crypto")]),
        // The umbrella: re-exports only.
        .target(name: "Splice",
                dependencies: ["SpliceBytes", "SpliceArchitectures", "SpliceDaemon", "SpliceHarness", "SpliceScenarios", "SpliceBench", "SpliceMachine", "SpliceELF", "SpliceDisassembly", "SplicePatching", "SplicePayload", "SpliceRuntime", "SpliceFiles",
                               "SpliceX86_64", "SplicePPC64LE"]),
        // The CLI depends on the parts it uses, not on the umbrella.
        .executableTarget(name: "splice", dependencies: [
            "SpliceArchitectures", "SpliceBench", "SpliceBytes", "SpliceDaemon", "SpliceDisassembly", "SpliceELF", "SpliceFiles",
            "SpliceHarness", "SpliceMachine", "SplicePatching", "SplicePayload", "SpliceRuntime", "SpliceScenarios",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // The bare-Unicorn reference that `splice bench emu` compares against: the same
        // guest loop driven by plain C calls into libunicorn, no Splice in between.
        .executableTarget(name: "unicorn-bare-bench", dependencies: ["CUnicorn", "CLibelf"], path: "bench/unicorn-bare-bench"),
        // The libFuzzer harness (scripts/fuzz.sh); built plainly it replays inputs.
        .executableTarget(name: "splice-fuzz", dependencies: ["SpliceHarness"], path: "fuzz/Sources"),

        .testTarget(name: "SpliceTests", dependencies: ["Splice", .product(name: "Crypto", package: "swift-crypto")],
                    resources: []),
    ],
    swiftLanguageModes: [.v5]
)
