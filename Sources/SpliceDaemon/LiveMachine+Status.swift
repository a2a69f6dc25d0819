import SpliceArchitectures
import SpliceBytes
import SpliceDisassembly
import SpliceELF
import SpliceFiles
import SpliceMachine
import SplicePatching
import SplicePayload
import SpliceRuntime
import Crypto
import Foundation

// What a live machine reports: each payload's status, a page of them, each vCPU's state
// and newest workload records, and the whole machine.

extension LiveMachine {
    /// A payload as a client sees it: its settled state, or PROGRESS with the action.
    public struct PayloadStatus: Codable, Sendable, Equatable {
        /// The life-cycle states of `LivePatchService.State`, and PROGRESS while an action
        /// runs (the xSplice design's asynchronous status).
        public enum State: String, Codable, Sendable, CaseIterable, CustomStringConvertible {
            case loaded = "LOADED", checked = "CHECKED", applied = "APPLIED", reverted = "REVERTED", progress = "PROGRESS"

            public init(_ settled: LivePatchService.State) {
                switch settled {
                case .loaded: self = .loaded
                case .checked: self = .checked
                case .applied: self = .applied
                case .reverted: self = .reverted
                }
            }

            public var description: String { rawValue }
        }

        public var id: String
        public var state: State
        /// The action in progress (with `.progress`).
        public var action: LivePatchService.Action?
        /// 0, or the negative errno of the last failed action, with its reason.
        public var rc: Int32
        public var error: String?
        public var buildID: String

        public init(id: String, state: State, action: LivePatchService.Action? = nil, rc: Int32 = 0, error: String? = nil, buildID: String) {
            self.id = id
            self.state = state
            self.action = action
            self.rc = rc
            self.error = error
            self.buildID = buildID
        }
    }

    public struct Page: Codable, Sendable, Equatable {
        public var version: UInt64
        public var total: Int
        public var start: Int
        public var statuses: [PayloadStatus]

        public init(version: UInt64, total: Int, start: Int, statuses: [PayloadStatus]) {
            self.version = version
            self.total = total
            self.start = start
            self.statuses = statuses
        }
    }

    /// One workload record: x and the results the workload computed from it.
    public struct Record: Codable, Sendable, Equatable {
        public var x: Int64
        public var results: [Int64]
    }

    public struct VCPUStatus: Codable, Sendable, Equatable {
        public enum State: String, Codable, Sendable {
            case running, returned, faulted, stopped
        }

        public var index: Int
        public var state: State
        /// What it returned, or its fault.
        public var detail: String?
        public var iterations: UInt64
        /// The newest records, oldest first.
        public var records: [Record]

        /// The state and its detail, for people ("faulted: guest fault: ...").
        public var summary: String { state.rawValue + (detail.map { ": " + $0 } ?? "") }
    }

    public struct Status: Codable, Sendable, Equatable {
        public var image: String
        public var architecture: String
        public var buildID: String
        public var cpus: Int
        public var workload: String?
        public var engine: PatchEngineKind
        public var returnStrategy: String?
        public var version: UInt64
        public var payloads: Int
        public var activeRedirects: Int
        public var rendezvousCompleted: Int
        public var requiresSignature: String?
        public var vcpus: [VCPUStatus]
    }
}
