import Courier
import CourierConformance
import CourierKafka
import Testing

extension BrokerIntegration.KafkaIntegration {
/// The bus scenarios on Kafka (the mock cluster, or `COURIER_KAFKA_BROKERS`).
@Suite("Bus conformance: KafkaTransport")
struct KafkaBusTests {
    static let bus = BusConformance { try await KafkaBroker.connect() }

    @Test("bus scenario", arguments: BusScenario.allCases)
    func scenario(_ scenario: BusScenario) async throws {
        let (line, failure) = try await Self.bus.outcome(of: scenario)
        print("[bus kafka] \(line)")
        if let failure { Issue.record("\(failure)") }
    }
}
}
