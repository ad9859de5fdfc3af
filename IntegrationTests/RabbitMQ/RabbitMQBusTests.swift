import Courier
import CourierConformance
import CourierRabbitMQ
import CourierStoreConformance
import Testing

extension BrokerIntegration.RabbitMQIntegration {
    /// The bus scenarios on RabbitMQ.
    @Suite("Bus conformance: RabbitMQTransport")
    struct RabbitMQBusTests {
        /// B7 runs with SQLite's inbox (CourierSQLite).
        static let bus = BusConformance(inbox: try! SQLiteConformanceInbox()) { try await RabbitMQBroker.connect() }

        @Test("bus scenario", arguments: BusScenario.allCases)
        func scenario(_ scenario: BusScenario) async throws {
            let (line, failure) = try await Self.bus.outcome(of: scenario)
            print("[bus rabbitmq] \(line)")
            if let failure { Issue.record("\(failure)") }
        }

        /// B7 with PostgreSQL's inbox (CourierPostgres).
        @Test func exactlyOnceWithPostgreSQLsInbox() async throws {
            let inbox = PostgresConformanceInbox(url: PostgresDatabase.url)
            let bus = BusConformance(inbox: inbox) { try await RabbitMQBroker.connect() }
            let (line, failure) = try await bus.outcome(of: .exactlyOnceWithInbox)
            await inbox.close()
            print("[bus rabbitmq, PostgreSQL inbox] \(line)")
            if let failure { Issue.record("\(failure)") }
        }
    }
}
