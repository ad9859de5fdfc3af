import Courier
import CourierConformance
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
    static let bus = BusConformance { InMemoryTransport(broker: broker) }

    @Test("bus scenario", arguments: BusScenario.allCases)
    func scenario(_ scenario: BusScenario) async throws {
        let (line, failure) = try await Self.bus.outcome(of: scenario)
        print("[bus memory] \(line)")
        if let failure { Issue.record("\(failure)") }
    }
}
