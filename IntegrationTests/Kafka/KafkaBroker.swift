import Courier
import CourierKafka
import Foundation

/// The Kafka cluster the integration tests use: librdkafka's mock cluster, started in this
/// process, or the real cluster `COURIER_KAFKA_BROKERS` names (`host:9092[,host2:9092]`).
enum KafkaBroker {
    /// The in-process mock cluster; `nil` when the tests run against a real cluster.
    static let mock: KafkaMockCluster? = {
        guard ProcessInfo.processInfo.environment["COURIER_KAFKA_BROKERS"] == nil else { return nil }
        do {
            return try KafkaMockCluster(brokers: 3)
        } catch {
            fatalError("could not start librdkafka's mock cluster: \(error)")
        }
    }()

    /// The URL of the cluster under test, with `options` appended.
    static func url(_ options: String...) -> String { url(options) }

    static func url(_ options: [String]) -> String {
        if let brokers = ProcessInfo.processInfo.environment["COURIER_KAFKA_BROKERS"] {
            return "kafka://\(brokers)" + (options.isEmpty ? "" : "?" + options.joined(separator: "&"))
        }
        return mock!.url(options.joined(separator: "&"))
    }

    /// A new transport client of the cluster under test; `options` are URL options
    /// (`retry_topics=true`, `rdkafka.debug=cgrp`).
    static func connect(_ options: String...) async throws -> KafkaTransport {
        try await KafkaTransport.connect(url(options))
    }

    /// Restarts every broker of the mock cluster: down, a pause, up. `nil` for a real cluster.
    static var restart: (@Sendable () async throws -> Void)? {
        guard let mock else { return nil }
        return {
            mock.setAllBrokers(up: false)
            try await Task.sleep(for: .seconds(2))
            mock.setAllBrokers(up: true)
        }
    }
}
