import Courier
import CourierConformance
@_spi(Testing) import CourierKafka
import CourierStoreConformance
import Testing

extension BrokerIntegration.KafkaIntegration {
    /// The bus scenarios on Kafka (the mock cluster, or `COURIER_KAFKA_BROKERS`).
    @Suite("Bus conformance: KafkaTransport")
    struct KafkaBusTests {
        /// B7 runs with SQLite's inbox (CourierSQLite); B8's outage takes every mock broker
        /// down for longer than the transport's health timeout (2 s).
        static let bus = BusConformance(inbox: try! SQLiteConformanceInbox(), brokerOutage: outage) { try await KafkaBroker.connect() }

        static var outage: (@Sendable () async throws -> Void)? {
            guard let mock = KafkaBroker.mock else { return nil }
            return {
                mock.setAllBrokers(up: false)
                try await Task.sleep(for: .seconds(5))
                mock.setAllBrokers(up: true)
            }
        }

        @Test("bus scenario", arguments: BusScenario.allCases)
        func scenario(_ scenario: BusScenario) async throws {
            let (line, failure) = try await Self.bus.outcome(of: scenario)
            print("[bus kafka] \(line)")
            if let failure { Issue.record("\(failure)") }
        }

        /// With retry topics, a group's dead letters go back to that group alone.
        @Test func deadLettersReplayToOneGroupWithRetryTopics() async throws {
            let bus = BusConformance { try await KafkaBroker.connect("retry_topics=true") }
            let (line, failure) = try await bus.outcome(of: .deadLetterReplay)
            print("[bus kafka retry_topics] \(line)")
            if let failure { Issue.record("\(failure)") }
            #expect(line.contains("replayed to that group alone"), "\(line)")
        }
    }
}
