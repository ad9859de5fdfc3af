import Courier
import CourierBus
import CourierConformance
import CourierStoreConformance
import Synchronization
import Testing

/// The whole conformance suite, full counts, on the in-memory transport.
@Suite("Conformance: InMemoryTransport")
struct InMemoryConformanceTests {
    static let broker = try! InMemoryBroker()
    static let suite = ConformanceSuite { InMemoryTransport(broker: broker) }

    @Test("scenario", arguments: ConformanceScenario.allCases)
    func scenario(_ scenario: ConformanceScenario) async throws {
        let (line, failure) = try await Self.suite.outcome(of: scenario)
        print("[conformance memory] \(line)")
        if let failure { Issue.record("\(failure)") }
    }

    /// Reports, as a skipped test, the scenarios the transport's capabilities rule out.
    @Test("scenarios skipped for a missing capability")
    func skippedScenarios() async throws {
        if let skipped = try await Self.suite.skippedSummary() { try Test.cancel(Comment(rawValue: skipped)) }
    }
}

@Suite("Conformance: README usage")
struct ConformanceReadmeTests {
    /// The README's conformance example, with the short counts.
    @Test func runAllReportsEveryScenario() async throws {
        let broker = try InMemoryBroker()
        var configuration = ConformanceConfiguration()
        configuration.size = .short
        let suite = ConformanceSuite(configuration: configuration) { InMemoryTransport(broker: broker) }
        let reports = try await suite.runAll()
        for report in reports { print(report) }
        #expect(reports.count == ConformanceScenario.allCases.count)
        #expect(reports.filter(\.isSkipped).map(\.scenario) == [.reconnect])
    }
}

/// The bus scenarios on the in-memory transport.
@Suite("Bus conformance: InMemoryTransport")
struct InMemoryBusConformanceTests {
    static let broker = try! InMemoryBroker()
    /// B7 runs with SQLite's inbox (CourierSQLite).
    static let bus = BusConformance(inbox: try! SQLiteConformanceInbox()) { InMemoryTransport(broker: broker) }

    @Test("bus scenario", arguments: BusScenario.allCases)
    func scenario(_ scenario: BusScenario) async throws {
        let (line, failure) = try await Self.bus.outcome(of: scenario)
        print("[bus memory] \(line)")
        if let failure { Issue.record("\(failure)") }
    }

    /// B7 with the library's reference inbox, as a transport author without a database runs it.
    @Test func exactlyOnceWithTheReferenceInbox() async throws {
        let bus = BusConformance(inbox: InMemoryConformanceInbox()) { InMemoryTransport(broker: Self.broker) }
        let (line, failure) = try await bus.outcome(of: .exactlyOnceWithInbox)
        print("[bus memory, reference inbox] \(line)")
        if let failure { Issue.record("\(failure)") }
    }

    /// B7 can fail: a handler that commits its effect but records no message id counts the
    /// redelivered commands twice.
    @Test func exactlyOnceFailsWithoutAnInbox() async throws {
        let bus = BusConformance(inbox: NoInbox()) { InMemoryTransport(broker: Self.broker) }
        let (line, failure) = try await bus.outcome(of: .exactlyOnceWithInbox)
        #expect(failure?.message.contains("more than once") == true, "\(line)")
    }
}

/// Effects without an inbox: every call that does not throw counts.
final class NoInbox: ConformanceInbox {
    private let counted = Mutex<[Int: Int]>([:])

    func handle<C: IntegrationCommand>(
        _ type: C.Type, on bus: MessageBus, options: HandlerOptions, effect: @escaping @Sendable (C) -> Int,
        then: @escaping @Sendable (C) throws -> Void
    ) async throws {
        try await bus.handle(C.self, options: options) { command, _ in
            try then(command)
            self.counted.withLock { $0[effect(command), default: 0] += 1 }
        }
    }

    func effects() async throws -> [Int: Int] { counted.withLock { $0 } }
}
