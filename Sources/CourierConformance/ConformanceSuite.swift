import Courier

/// The transport conformance suite: the behaviours every ``Transport`` must prove.
///
/// Any transport — Courier's own or a third party's — runs it by giving a factory that
/// connects a new client to one shared broker:
///
/// ```swift
/// let broker = try InMemoryBroker()
/// let suite = ConformanceSuite { InMemoryTransport(broker: broker) }
/// for scenario in ConformanceScenario.allCases {
///     let report = try await suite.run(scenario)   // throws ConformanceFailure
///     print(report)
/// }
/// ```
///
/// Each scenario uses fresh, unique names, so scenarios run in any order and concurrently
/// against one broker. Reading is ack-and-collect: ids are de-duplicated (delivery is
/// at-least-once) and a read passes when the set received equals the set sent. Timeouts are
/// idle gaps, not total budgets. A scenario that needs a capability the transport does not
/// declare returns a report with ``ConformanceOutcome/skipped(_:)`` — visible, never a pass.
public struct ConformanceSuite: Sendable {
    /// Sizes, timeouts and hooks.
    public let configuration: ConformanceConfiguration
    let makeTransport: @Sendable () async throws -> any Transport
    private let knownCapabilities = Locked<TransportCapabilities?>(nil)

    /// Creates a suite.
    /// - Parameters:
    ///   - configuration: Sizes, timeouts and the broker restart hook.
    ///   - makeTransport: Connects a **new** transport client to the broker under test. It is
    ///     called several times per scenario; every client must reach the same broker.
    public init(
        configuration: ConformanceConfiguration = ConformanceConfiguration(),
        makeTransport: @escaping @Sendable () async throws -> any Transport
    ) {
        self.configuration = configuration
        self.makeTransport = makeTransport
    }

    /// Runs one scenario: returns its report when it passed or was skipped, throws
    /// ``ConformanceFailure`` (saying what was missing, extra or out of order) when it failed.
    public func run(_ scenario: ConformanceScenario) async throws -> ConformanceReport {
        let clock = ContinuousClock()
        let start = clock.now
        let outcome = try await Scenarios(suite: self, scenario: scenario).run()
        return ConformanceReport(scenario: scenario, outcome: outcome, duration: clock.now - start)
    }

    /// Runs `scenario` for a test target that records failures rather than throwing them:
    /// returns the line to print (the report, or the failure with its ids) and the failure.
    public func outcome(of scenario: ConformanceScenario) async throws -> (line: String, failure: ConformanceFailure?) {
        do {
            return ("\(try await run(scenario))", nil)
        } catch let failure as ConformanceFailure {
            return ("\(failure)", failure)
        }
    }

    /// One line naming the scenarios skipped for a missing capability, with reasons; `nil`
    /// when none is skipped.
    public func skippedSummary() async throws -> String? {
        let skipped = try await skippedScenarios()
        return skipped.isEmpty ? nil : skipped.map { "\($0.scenario): \($0.reason)" }.joined(separator: "; ")
    }

    /// The transport's capabilities, read from one client the first time and remembered.
    func capabilities() async throws -> TransportCapabilities {
        if let known = knownCapabilities.value { return known }
        let transport = try await makeTransport()
        let capabilities = transport.capabilities
        try await transport.shutdown()
        knownCapabilities.withLock { $0 = capabilities }
        return capabilities
    }

    /// The scenarios this transport skips for a missing capability, each with the reason.
    public func skippedScenarios() async throws -> [(scenario: ConformanceScenario, reason: String)] {
        let capabilities = try await capabilities()
        return ConformanceScenario.allCases.compactMap { scenario in
            Scenarios.skipReason(for: scenario, capabilities: capabilities, configuration: configuration).map { (scenario, $0) }
        }
    }

    /// Runs every scenario in order and returns their reports; stops at the first failure.
    public func runAll() async throws -> [ConformanceReport] {
        var reports: [ConformanceReport] = []
        for scenario in ConformanceScenario.allCases {
            reports.append(try await run(scenario))
        }
        return reports
    }
}

/// How big and how patient the suite is.
public struct ConformanceConfiguration: Sendable {
    /// Message counts: CONFORMANCE.md's full counts (CI) or its short ones.
    public enum Size: Sendable, Hashable {
        case full, short
    }

    /// Which counts to use. Default ``Size/full``.
    public var size: Size = .full
    /// How long a read waits with no new message before it gives up. Default 5 s.
    public var idleTimeout: Duration = .seconds(5)
    /// How long a read keeps listening after it has everything, to catch extra messages.
    /// Default 300 ms.
    public var quietPeriod: Duration = .milliseconds(300)
    /// Restarts the broker under test (stop, start, wait until ready). When `nil`, the
    /// reconnect scenario is skipped and reported so.
    public var restartBroker: (@Sendable () async throws -> Void)?
    /// Prefix of every topic, queue and group name the suite creates.
    public var namePrefix: String = "conformance"

    /// The defaults.
    public init() {}
}

/// The scenarios of CONFORMANCE.md, numbered as there.
public enum ConformanceScenario: Int, CaseIterable, Sendable, CustomStringConvertible {
    case publishSubscribe = 1
    case concurrentPublishersAndSubscribers
    case manyTopics
    case nackRedelivers
    case ackGatesOrder
    case groupsAreDurable
    case concurrentClose
    case continueAfterErrors
    case perKeyOrder
    case groupsFanOut
    case commandsGoToExactlyOne
    case commandsWaitForTheirConsumer
    case publisherClose
    case topicsAreIsolated
    case deadLetter
    case consumerDiesBeforeAck
    case reconnect
    case lateGroupReadsHistory
    case headersAndKeysSurvive
    case badInput

    public var description: String {
        let names: [ConformanceScenario: String] = [
            .publishSubscribe: "publish-subscribe",
            .concurrentPublishersAndSubscribers: "concurrent publishers and subscribers",
            .manyTopics: "many topics",
            .nackRedelivers: "nack redelivers",
            .ackGatesOrder: "ack gates order",
            .groupsAreDurable: "groups are durable",
            .concurrentClose: "concurrent close",
            .continueAfterErrors: "continue after errors",
            .perKeyOrder: "per-key order",
            .groupsFanOut: "groups fan out",
            .commandsGoToExactlyOne: "commands go to exactly one",
            .commandsWaitForTheirConsumer: "commands wait for their consumer",
            .publisherClose: "publisher close",
            .topicsAreIsolated: "topics are isolated",
            .deadLetter: "dead letter",
            .consumerDiesBeforeAck: "consumer dies before ack",
            .reconnect: "reconnect",
            .lateGroupReadsHistory: "late group reads history",
            .headersAndKeysSurvive: "headers and keys survive",
            .badInput: "bad input",
        ]
        return "\(rawValue). \(names[self]!)"
    }
}

/// How a scenario ended, when it did not fail.
public enum ConformanceOutcome: Sendable, Hashable {
    /// It passed; the text summarises what was checked (counts, duplicates).
    case passed(String)
    /// It did not run because the transport lacks a capability; the text says which.
    case skipped(String)
}

/// The result of one scenario that did not fail.
public struct ConformanceReport: Sendable, CustomStringConvertible {
    public let scenario: ConformanceScenario
    public let outcome: ConformanceOutcome
    public let duration: Duration

    /// Whether the scenario was skipped for a missing capability.
    public var isSkipped: Bool {
        if case .skipped = outcome { return true }
        return false
    }

    private var milliseconds: Int64 {
        duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
    }

    public var description: String {
        switch outcome {
        case .passed(let summary): "PASSED  \(scenario) — \(summary) (\(milliseconds) ms)"
        case .skipped(let reason): "SKIPPED \(scenario) — \(reason)"
        }
    }
}

/// A failed scenario: what went wrong, with the ids that were missing, extra or out of order.
public struct ConformanceFailure: Error, Sendable, CustomStringConvertible {
    public let scenario: ConformanceScenario
    public let message: String
    public var missing: [String] = []
    public var extra: [String] = []
    public var outOfOrder: [String] = []

    public var description: String {
        var lines = ["FAILED  \(scenario): \(message)"]
        func list(_ title: String, _ ids: [String]) {
            guard !ids.isEmpty else { return }
            let shown = ids.prefix(10).joined(separator: ", ")
            lines.append("  \(title) (\(ids.count)): \(shown)\(ids.count > 10 ? ", …" : "")")
        }
        list("missing", missing)
        list("extra", extra)
        list("out of order", outOfOrder)
        return lines.joined(separator: "\n")
    }
}
