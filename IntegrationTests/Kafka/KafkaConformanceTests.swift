import Courier
import CourierConformance
import CourierKafka
import Testing

extension BrokerIntegration {
    /// Every test that talks to the Kafka cluster, one at a time: fault injection (brokers down,
    /// request errors) would disturb anything running beside it.
    @Suite("Kafka", .serialized)
    enum KafkaIntegration {}
}

extension BrokerIntegration.KafkaIntegration {
    /// The whole conformance suite, full counts, on librdkafka's mock cluster (or the real
    /// cluster `COURIER_KAFKA_BROKERS` names).
    @Suite("Conformance: KafkaTransport")
    struct KafkaConformanceTests {
        static let suite: ConformanceSuite = {
            var configuration = ConformanceConfiguration()
            configuration.idleTimeout = .seconds(15)
            configuration.restartBroker = KafkaBroker.restart
            return ConformanceSuite(configuration: configuration) { try await KafkaBroker.connect() }
        }()

        @Test("scenario", arguments: ConformanceScenario.allCases)
        func scenario(_ scenario: ConformanceScenario) async throws {
            let (line, failure) = try await Self.suite.outcome(of: scenario)
            print("[conformance kafka] \(line)")
            guard let failure else { return }
            if let reason = KafkaBroker.declared[scenario.rawValue] {
                // A failure the broker under test is known for (scripts/test-kafka-compat declares
                // them): reported as a known issue, with its reason.
                print("[conformance kafka] DECLARED scenario \(scenario.rawValue): \(reason)")
                withKnownIssue(Comment(rawValue: reason)) { Issue.record("\(failure)") }
            } else {
                Issue.record("\(failure)")
            }
        }

        @Test("scenarios skipped for a missing capability")
        func skippedScenarios() async throws {
            if let skipped = try await Self.suite.skippedSummary() { try Test.cancel(Comment(rawValue: skipped)) }
        }
    }

    /// The scenarios that nack, with nacks republished to retry topics (`retry_topics=true`).
    @Suite("Conformance: KafkaTransport with retry topics")
    struct KafkaRetryTopicConformanceTests {
        static let suite: ConformanceSuite = {
            var configuration = ConformanceConfiguration()
            configuration.idleTimeout = .seconds(15)
            configuration.namePrefix = "conformance-retry"
            return ConformanceSuite(configuration: configuration) { try await KafkaBroker.connect("retry_topics=true") }
        }()

        @Test(
            "scenario",
            arguments: [ConformanceScenario.nackRedelivers, .ackGatesOrder, .continueAfterErrors, .deadLetter, .consumerDiesBeforeAck])
        func scenario(_ scenario: ConformanceScenario) async throws {
            let (line, failure) = try await Self.suite.outcome(of: scenario)
            print("[conformance kafka retry topics] \(line)")
            if let failure { Issue.record("\(failure)") }
        }
    }
}
