import Courier
@_spi(Testing) import CourierKafka
import Foundation
import Testing

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
            // The value may carry options of its own (`host:9092?rdkafka.session.timeout.ms=10000`);
            // an option given here replaces one of the same name.
            let parts = brokers.split(separator: "?", maxSplits: 1).map(String.init)
            let given = options.flatMap { $0.split(separator: "&").map(String.init) }
            let names = Set(given.map { String($0.split(separator: "=", maxSplits: 1)[0]) })
            let base = (parts.count > 1 ? parts[1].split(separator: "&").map(String.init) : [])
                .filter { !names.contains(String($0.split(separator: "=", maxSplits: 1)[0])) }
            let query = (base + given).joined(separator: "&")
            return "kafka://\(parts[0])" + (query.isEmpty ? "" : "?" + query)
        }
        return mock!.url(options.joined(separator: "&"))
    }

    /// Conformance scenarios the broker under test is known to fail, by number, with the
    /// reason: `COURIER_KAFKA_DECLARED="1=reason;17=reason"`. Only for a real cluster.
    static let declared: [Int: String] = {
        guard mock == nil, let value = ProcessInfo.processInfo.environment["COURIER_KAFKA_DECLARED"] else { return [:] }
        var declared: [Int: String] = [:]
        for entry in value.split(separator: ";") {
            let parts = entry.split(separator: "=", maxSplits: 1)
            if parts.count == 2, let number = Int(parts[0]) { declared[number] = String(parts[1]) }
        }
        return declared
    }()

    /// For tests that inject faults through the mock cluster: skipped, with this reason, when
    /// the tests run against a real cluster.
    static var mockOnly: ConditionTrait {
        .enabled(if: mock != nil, "injects faults through librdkafka's mock cluster; COURIER_KAFKA_BROKERS names a real cluster")
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
