import Courier
import CourierConformance
import CourierRabbitMQ
import Testing

extension BrokerIntegration.RabbitMQIntegration {
    /// The bus scenarios on RabbitMQ.
    @Suite("Bus conformance: RabbitMQTransport")
    struct RabbitMQBusTests {
        static let bus = BusConformance { try await RabbitMQBroker.connect() }

        @Test("bus scenario", arguments: BusScenario.allCases)
        func scenario(_ scenario: BusScenario) async throws {
            let (line, failure) = try await Self.bus.outcome(of: scenario)
            print("[bus rabbitmq] \(line)")
            if let failure { Issue.record("\(failure)") }
        }
    }
}
