import Courier
import CourierConformance
import CourierRabbitMQ
import Testing

extension BrokerIntegration {
    /// Every test that talks to the RabbitMQ broker, one at a time: the reconnect scenario
    /// restarts the broker for real, which would disturb anything running beside it.
    @Suite("RabbitMQ", .serialized)
    enum RabbitMQIntegration {}
}

extension BrokerIntegration.RabbitMQIntegration {
    /// The whole conformance suite, full counts, on a real RabbitMQ.
    @Suite("Conformance: RabbitMQTransport")
    struct RabbitMQConformanceTests {
        static let suite: ConformanceSuite = {
            var configuration = ConformanceConfiguration()
            configuration.idleTimeout = .seconds(10)
            configuration.restartBroker = { try await RabbitMQBroker.restart() }
            return ConformanceSuite(configuration: configuration) { try await RabbitMQBroker.connect() }
        }()

        @Test("scenario", arguments: ConformanceScenario.allCases)
        func scenario(_ scenario: ConformanceScenario) async throws {
            let (line, failure) = try await Self.suite.outcome(of: scenario)
            print("[conformance rabbitmq] \(line)")
            if let failure { Issue.record("\(failure)") }
        }

        @Test("scenarios skipped for a missing capability")
        func skippedScenarios() async throws {
            if let skipped = try await Self.suite.skippedSummary() { try Test.cancel(Comment(rawValue: skipped)) }
        }
    }
}
