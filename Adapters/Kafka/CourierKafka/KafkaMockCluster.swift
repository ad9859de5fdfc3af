import Courier
import Crdkafka
import Foundation

/// A Kafka-protocol broker in this process, for tests: librdkafka's mock cluster
/// (`rdkafka_mock.h`), listening on loopback, with fault injection.
///
/// Test-only API, outside the library's stable surface: import it with
/// `@_spi(Testing) import CourierKafka` (as swift-kafka-client keeps its test hooks apart).
///
/// ```swift
/// let cluster = try KafkaMockCluster(brokers: 3)
/// let transport = try await KafkaTransport.connect(cluster.url)
/// cluster.setBroker(1, up: false)   // a broker goes away …
/// ```
///
/// The mock keeps messages in memory, about 5 MiB per partition (older ones are dropped
/// silently), creates unknown topics with 4 partitions on first use, and has no Admin API,
/// so ``url`` says `create_topics=auto`. Its group coordinator waits one session timeout for
/// members to rejoin a rebalance, and an empty fetch waits the whole `fetch.wait.max.ms` even
/// when messages arrive meanwhile, so ``url`` also lowers `session.timeout.ms` and
/// `fetch.wait.max.ms`.
@_spi(Testing) public final class KafkaMockCluster: @unchecked Sendable {
    /// A Kafka protocol request type, for ``failRequests(_:with:count:)``.
    public struct API: RawRepresentable, Sendable, Hashable {
        public let rawValue: Int16
        public init(rawValue: Int16) { self.rawValue = rawValue }
        public static let produce = API(rawValue: 0)
        public static let fetch = API(rawValue: 1)
        public static let listOffsets = API(rawValue: 2)
        public static let metadata = API(rawValue: 3)
        public static let offsetCommit = API(rawValue: 8)
        public static let offsetFetch = API(rawValue: 9)
        public static let findCoordinator = API(rawValue: 10)
        public static let joinGroup = API(rawValue: 11)
        public static let heartbeat = API(rawValue: 12)
        public static let syncGroup = API(rawValue: 14)
    }

    /// A Kafka protocol error code, for injected failures.
    public struct ErrorCode: RawRepresentable, Sendable, Hashable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        public static let unknownTopicOrPartition = ErrorCode(rawValue: 3)
        public static let notLeaderForPartition = ErrorCode(rawValue: 6)
        public static let requestTimedOut = ErrorCode(rawValue: 7)
        public static let notEnoughReplicas = ErrorCode(rawValue: 19)
        public static let coordinatorNotAvailable = ErrorCode(rawValue: 15)
        public static let notCoordinator = ErrorCode(rawValue: 16)
        public static let rebalanceInProgress = ErrorCode(rawValue: 27)
    }

    /// `host:port` of every broker, comma-separated.
    public let bootstrapServers: String
    /// Broker ids are 1 through this.
    public let brokerCount: Int
    private let cluster: RDKafkaMockCluster

    /// Starts a cluster of `brokers` brokers on loopback.
    public init(brokers: Int = 1) throws(CourierError) {
        cluster = try RDKafkaMockCluster(brokers: brokers)
        brokerCount = brokers
        bootstrapServers = cluster.bootstraps
    }

    /// A `kafka://` URL for this cluster: topics created on first use, short group sessions.
    /// `options` are appended (`"rdkafka.linger.ms=1"`, or several joined by `&`); one with the
    /// name of a default replaces it (`"create_topics=off"`).
    public func url(_ options: String...) -> String {
        let given = options.flatMap { $0.split(separator: "&").map(String.init) }.filter { !$0.isEmpty }
        let names = Set(given.map { $0.split(separator: "=", maxSplits: 1).first.map(String.init) ?? $0 })
        let base = [
            "create_topics=auto", "rdkafka.session.timeout.ms=6000", "rdkafka.heartbeat.interval.ms=500", "rdkafka.fetch.wait.max.ms=100",
        ]
        .filter { !names.contains(String($0.split(separator: "=", maxSplits: 1)[0])) }
        return "kafka://\(bootstrapServers)?" + (base + given).joined(separator: "&")
    }

    /// The URL with the defaults of ``url(_:)``.
    public var url: String { url() }

    /// Creates `topic` with `partitions` partitions.
    public func createTopic(_ topic: String, partitions: Int, replicationFactor: Int = 1) throws(CourierError) {
        let error = cluster.createTopic(topic, partitions: partitions, replicationFactor: replicationFactor)
        if error != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaClient.error(error, "creating mock topic \(topic)") }
    }

    /// Takes broker `id` down (its connections close, it accepts none) or brings it back.
    public func setBroker(_ id: Int, up: Bool) {
        cluster.setBroker(id, up: up)
    }

    /// Takes every broker down or brings every broker back.
    public func setAllBrokers(up: Bool) {
        for id in 1...brokerCount { setBroker(id, up: up) }
    }

    /// Makes broker `id` the leader of `topic`'s `partition` (the topic is created if it does
    /// not exist): clients get `NOT_LEADER_FOR_PARTITION` from the old leader and move, as
    /// when a real cluster elects a new leader.
    public func setPartitionLeader(_ topic: String, partition: Int, broker id: Int) throws(CourierError) {
        let error = cluster.setPartitionLeader(topic, partition: partition, broker: id)
        if error != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaClient.error(error, "moving the leader of \(topic)[\(partition)]") }
    }

    /// Makes broker `id` the coordinator of consumer group `groupID` (the Kafka group id,
    /// ``KafkaTopology/groupID``): the group's members find the new coordinator and rejoin.
    public func setGroupCoordinator(_ groupID: String, broker id: Int) throws(CourierError) {
        let error = cluster.setGroupCoordinator(groupID, broker: id)
        if error != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaClient.error(error, "moving the coordinator of group \(groupID)") }
    }

    /// Makes broker `id` answer every request after `rtt` more.
    public func setRoundTripTime(broker id: Int, _ rtt: Duration) {
        cluster.setRoundTripTime(broker: id, rtt)
    }

    /// Makes the next `count` requests of type `api`, to any broker, fail with `error`.
    public func failRequests(_ api: API, with error: ErrorCode, count: Int = 1) {
        cluster.failRequests(api.rawValue, with: error.rawValue, count: count)
    }

    /// Makes metadata for `topic` report `error` (`nil` clears it).
    public func setTopicError(_ topic: String, _ error: ErrorCode?) {
        cluster.setTopicError(topic, error?.rawValue ?? 0)
    }

    /// Removes every injected request error.
    public func clearRequestErrors() {
        for api in [
            API.produce, .fetch, .listOffsets, .metadata, .offsetCommit, .offsetFetch, .findCoordinator, .joinGroup, .heartbeat, .syncGroup,
        ] {
            cluster.clearRequestErrors(api.rawValue)
        }
    }
}
