import Courier
import Crdkafka
import Foundation
import Logging
import Synchronization

/// Names Courier gives Kafka consumer groups and dead-letter topics.
///
/// Topics and queues keep their names as Kafka topics. A subscription group `g` on topic `t`
/// is the consumer group `t.g` (a Courier group belongs to one topic; Kafka's group ids are
/// cluster-wide); a queue `q` is read by the consumer group `q`. Dead letters go to the topic
/// ``DeliveryOrigin/defaultDeadLetterQueue`` names: `t.g.dead-letter` or `q.dead-letter`.
public struct KafkaTopology: Sendable {
    /// The consumer group id of subscription group `group` on `topic`.
    public var groupID: @Sendable (_ topic: String, _ group: String) -> String = { "\($0).\($1)" }
    /// The consumer group id shared by every consumer of `queue`.
    public var queueGroupID: @Sendable (_ queue: String) -> String = { $0 }
    /// The topic that receives dead letters from `origin`.
    public var deadLetterTopic: @Sendable (_ origin: DeliveryOrigin) -> String = { $0.defaultDeadLetterQueue }
    /// The topic nacked messages of `origin` are republished to, with
    /// ``KafkaSettings/retryTopics``: `t.g.retry` or `q.retry`.
    public var retryTopic: @Sendable (_ origin: DeliveryOrigin) -> String = { origin in
        switch origin {
        case .topic(let topic, let group): "\(topic).\(group).retry"
        case .queue(let queue): "\(queue).retry"
        }
    }

    /// The documented defaults.
    public init() {}

    /// What reading `origin` uses on the cluster with `settings`: topics (created as
    /// ``KafkaSettings/topicCreation`` says) and the consumer group.
    public func declarations(for origin: DeliveryOrigin, settings: KafkaSettings) -> [String] {
        let partitions: String
        switch settings.topicCreation {
        case .admin:
            partitions =
                "created with \(settings.partitions) partitions, replication factor \(settings.replicationFactor < 0 ? "of the broker" : String(settings.replicationFactor))"
        case .auto: partitions = "created by the broker on first use, with its default partitions"
        case .off: partitions = "must exist (create_topics=off)"
        }
        var lines = ["topic \(origin.destination) (\(partitions))"]
        switch origin {
        case .topic(let topic, let group):
            lines.append("consumer group \(groupID(topic, group)) (new groups start at the subscription's start position)")
        case .queue(let queue):
            lines.append("consumer group \(queueGroupID(queue)) (shared by every consumer; starts at the earliest offset)")
        }
        if settings.retryTopics { lines.append("topic \(retryTopic(origin)) (\(partitions)), read by the same group: nacked messages") }
        lines.append("topic \(deadLetterTopic(origin)) (\(partitions)), on the first dead letter")
        return lines
    }
}

/// A ``Transport`` over Apache Kafka, through librdkafka.
///
/// Topics are Kafka topics; a subscription group is a consumer group; a command queue is a
/// topic read by one consumer group shared by all its consumers. Keys choose partitions, so
/// per-key order holds. Publishing uses an idempotent producer with `acks=all` and returns
/// when every delivery report is in. `ack` marks an offset; the highest contiguous acked
/// offset per partition is committed periodically, on rebalance and on shutdown. `nack`
/// redelivers the message in order after its delay; exhausted or dead-lettered messages go
/// to the dead-letter topic. New groups start at ``StartPosition/latest``, `earliest` or a
/// time, and groups can be rewound.
///
/// ```swift
/// let transport = try await KafkaTransport.connect("kafka://localhost:9092")
/// try await transport.publish(Envelope(payload: Array("hello".utf8)), to: "greetings")
/// ```
///
/// librdkafka is driven by threads the transport owns (one for the producer, one per
/// consumer group member); nothing blocks Swift's cooperative pool.
public final class KafkaTransport: Transport {
    /// Everything a ``KafkaTransport`` is made of.
    public struct Configuration: Sendable {
        /// Servers, security, topic creation and pass-through librdkafka properties.
        public var settings: KafkaSettings
        /// Consumer group and dead-letter topic names.
        public var topology = KafkaTopology()
        /// How often acked offsets are committed. Default 200 ms.
        public var commitInterval: Duration = .milliseconds(200)
        /// Limit for one broker operation: connecting, metadata, topic creation, offset
        /// lookups. Default 10 s.
        public var operationTimeout: Duration = .seconds(10)
        /// How long ``KafkaTransport/connect(_:)-(Configuration)`` waits for a bootstrap server.
        /// Default: the settings' ``KafkaSettings/connectionTimeoutSeconds`` (URL
        /// `connection_timeout`, 10 s). When every bootstrap server refuses the connection,
        /// connecting fails after librdkafka's reconnect attempts, well before this.
        public var connectTimeout: Duration
        /// Limit for joining a consumer group. Default 60 s.
        public var joinTimeout: Duration = .seconds(60)
        /// How long ``KafkaTransport/health()`` waits for a broker to answer. Default 2 s.
        public var healthTimeout: Duration = .seconds(2)
        /// How many polled and unsettled messages a consumer-group member buffers before it
        /// pauses fetching (back-pressure); it resumes at half. At least the sum of its
        /// subscriptions' prefetch. Handlers take from this buffer without waiting for a fetch,
        /// so handler concurrency and prefetch do not slow fetching down. Default 10,000.
        public var bufferedMessages = 10_000
        /// The same bound in payload bytes. Default 32 MiB.
        public var bufferedBytes = 32 << 20
        /// How long a member losing partitions in a rebalance waits for their deliveries in
        /// flight to be settled before it commits and gives them up (what is still unsettled
        /// then is delivered again to the new owner). Default 5 s.
        public var revokeTimeout: Duration = .seconds(5)
        /// How long ``KafkaTransport/shutdown()`` waits for messages still in flight. Default 10 s.
        public var shutdownTimeout: Duration = .seconds(10)
        /// The largest payload accepted. Default 983,040 bytes: librdkafka's default
        /// `message.max.bytes` (1,000,000) less room for headers.
        public var maxPayloadSize = 983_040
        /// Where the adapter logs: group assignments and revocations, failed commits, and
        /// librdkafka's own errors. Default label `courier.kafka`.
        public var logger = Logger(label: "courier.kafka")

        /// A configuration for `settings`, with the documented defaults.
        public init(settings: KafkaSettings) {
            self.settings = settings
            self.connectTimeout = .seconds(min(max(1, settings.connectionTimeoutSeconds), 86_400))
        }

        /// A configuration from a `kafka://` URL.
        public init(url: String) throws(CourierError) {
            guard case .kafka(let settings) = try TransportURL(url) else {
                throw CourierError(.invalidURL, "\(TransportURL.redacted(url)) is not a kafka:// URL")
            }
            self.init(settings: settings)
        }
    }

    /// The librdkafka version linked into this program. Courier builds against 2.0.2 and newer and
    /// is tested with 2.0.2 (mock cluster) and 2.8.0 (Tansu); use 2.2 or newer against real brokers.
    public static var librdkafkaVersion: String { RDKafkaClient.version }

    public let configuration: Configuration
    public let capabilities: TransportCapabilities
    let producer: KafkaProducer
    private let state = Mutex<(closed: Bool, members: [DeliveryOrigin: KafkaGroupMember], retired: KafkaConsumerStatistics)>(
        (false, [:], .init()))

    /// What this transport's consumer-group members did so far (closed ones included): pauses
    /// for back-pressure, revokes, and what rebalances cost.
    public var consumerStatistics: KafkaConsumerStatistics {
        let (members, retired) = state.withLock { (Array($0.members.values), $0.retired) }
        return members.reduce(retired) { $0 + $1.counters }
    }

    static let closedError = CourierError(.transportClosed, "the Kafka transport was shut down; create a new transport to continue")

    private init(configuration: Configuration, producer: KafkaProducer) {
        self.configuration = configuration
        self.producer = producer
        capabilities = TransportCapabilities(
            system: "kafka",
            ordering: .perKey,
            survivesBrokerRestart: true,
            replay: true,
            nativeDelayedRedelivery: configuration.settings.retryTopics,
            maxPayloadSize: configuration.maxPayloadSize
        )
    }

    /// Connects to the cluster a `kafka://` URL names.
    public static func connect(_ url: String) async throws -> KafkaTransport {
        try await connect(Configuration(url: url))
    }

    /// Connects to a cluster: creates the producer and checks that a bootstrap server
    /// answers within ``Configuration/connectTimeout``, failing sooner when librdkafka has
    /// reported every bootstrap server down and none came up in the second after the first try
    /// (librdkafka reconnects meanwhile).
    public static func connect(_ configuration: Configuration) async throws -> KafkaTransport {
        let producer = try KafkaProducer(settings: configuration.settings, logger: configuration.logger)
        let timeout = configuration.connectTimeout
        let name = producer.name
        KafkaLogs.watchBrokersDown(name)
        defer { KafkaLogs.unwatchBrokersDown(name) }
        do {
            try await KafkaClient.offload("connect") { () throws(CourierError) in
                let servers = configuration.settings.description
                let start = ContinuousClock.now
                let deadline = start + timeout
                while true {
                    let wait = min(.milliseconds(250), max(.milliseconds(1), deadline - .now))
                    let error = producer.ping(timeout: wait)
                    if error == RD_KAFKA_RESP_ERR_NO_ERROR { return }
                    let transient =
                        error == RD_KAFKA_RESP_ERR__TIMED_OUT || error == RD_KAFKA_RESP_ERR__TRANSPORT
                        || error == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN
                    guard transient else { throw KafkaClient.error(error, "connecting to \(servers)") }
                    if KafkaLogs.brokersDownCount(name) >= 1, ContinuousClock.now - start >= .seconds(1) {
                        throw CourierError(
                            .unreachable,
                            "every Kafka bootstrap server of \(servers) refused the connection or closed it, and none came up within a second of reconnects; check the addresses and that the brokers are up",
                            isRetriable: true
                        )
                    }
                    if ContinuousClock.now >= deadline {
                        throw CourierError(
                            .unreachable,
                            "no Kafka bootstrap server of \(servers) answered within \(timeout) (\(RDKafkaClient.describe(error))); check the addresses and that the brokers are up, or raise connection_timeout",
                            isRetriable: true
                        )
                    }
                }
            }
        } catch {
            await producer.close(timeout: .zero)
            throw error
        }
        return KafkaTransport(configuration: configuration, producer: producer)
    }

    private func checkOpen(_ what: @autoclosure () -> String) throws(CourierError) {
        if state.withLock({ $0.closed }) {
            throw CourierError(.transportClosed, "\(what()): the Kafka transport was shut down; create a new transport to continue")
        }
    }

    private func check(_ envelopes: [Envelope], to name: String, as kind: DestinationName.Kind) throws(CourierError) {
        try checkOpen("\(kind == .queue ? "sending to" : "publishing to") \(name)")
        try DestinationName.validate(name, as: kind)
        for envelope in envelopes { try capabilities.check(envelope) }
    }

    public func publish(_ envelopes: [Envelope], to topic: String) async throws {
        try check(envelopes, to: topic, as: .topic)
        try await producer.ensureTopic(topic, timeout: configuration.operationTimeout)
        try await producer.produce(envelopes, to: topic)
    }

    public func send(_ envelopes: [Envelope], to queue: String) async throws {
        try check(envelopes, to: queue, as: .queue)
        try await producer.ensureTopic(queue, timeout: configuration.operationTimeout)
        try await producer.produce(envelopes, to: queue)
    }

    /// A queue's commands go back to its topic (only the queue's group reads it). A group's
    /// events go to the group's retry topic, which only that group reads: this needs
    /// `retry_topics=true` (``KafkaSettings/retryTopics``); without it a Kafka group reads
    /// nothing but its topic, and publishing there again would reach every group.
    public func redeliver(_ envelopes: [Envelope], to origin: DeliveryOrigin) async throws {
        switch origin {
        case .queue(let queue):
            try await send(envelopes, to: queue)
        case .topic(let topic, let group):
            try check(envelopes, to: topic, as: .topic)
            try DestinationName.validate(group, as: .group)
            guard configuration.settings.retryTopics else {
                throw CourierError(
                    .unsupportedCapability,
                    "a Kafka group reads only its topic, so messages cannot go back to group \(group) of \(topic) alone; connect with retry_topics=true (its retry topic \(configuration.topology.retryTopic(origin)) takes them), or publish them to \(topic) for every group"
                )
            }
            let retryTopic = configuration.topology.retryTopic(origin)
            try await producer.ensureTopic(retryTopic, timeout: configuration.operationTimeout)
            try await producer.produce(envelopes, to: retryTopic)  // no due time: due at once
        }
    }

    /// Reads the queue's topic from its group's committed offsets to the end, with a
    /// short-lived consumer that assigns the partitions itself: it neither joins the group nor
    /// commits, so the queue's consumers are not disturbed. Messages come oldest first (by
    /// timestamp) within the `limit` read.
    public func browse(queue: String, limit: Int) async throws -> [Envelope] {
        try DestinationName.validate(queue, as: .queue)
        try checkOpen("browsing \(queue)")
        guard limit > 0 else { return [] }
        try await producer.ensureTopic(queue, timeout: configuration.operationTimeout)
        return try await KafkaBrowse.read(
            configuration: configuration, topic: queue, groupID: configuration.topology.queueGroupID(queue), limit: limit
        )
    }

    public func subscribe(to topic: String, group: String, options: SubscriptionOptions) async throws -> Subscription {
        try DestinationName.validate(topic, as: .topic)
        try DestinationName.validate(group, as: .group)
        try capabilities.check(options)
        let origin = DeliveryOrigin.topic(topic, group: group)
        return try await attach(
            origin: origin, groupID: configuration.topology.groupID(topic, group), start: options.startPosition, options: options)
    }

    public func consume(queue: String, options: SubscriptionOptions) async throws -> Subscription {
        try DestinationName.validate(queue, as: .queue)
        try capabilities.check(options)
        // A queue keeps commands sent before its first consumer: it starts at the beginning.
        return try await attach(
            origin: .queue(queue), groupID: configuration.topology.queueGroupID(queue), start: .earliest, options: options)
    }

    private func attach(origin: DeliveryOrigin, groupID: String, start: StartPosition, options: SubscriptionOptions) async throws
        -> Subscription
    {
        try checkOpen("subscribing to \(origin)")
        try await producer.ensureTopic(origin.destination, timeout: configuration.operationTimeout)
        if configuration.settings.retryTopics {
            try await producer.ensureTopic(configuration.topology.retryTopic(origin), timeout: configuration.operationTimeout)
        }
        while true {
            let member = try member(for: origin, groupID: groupID, start: start, options: options)
            let attached: Result<KafkaSubscription, CourierError>
            do { attached = .success(try await member.attach(prefetch: options.prefetch)) } catch { attached = .failure(error) }
            switch attached {
            case .success(let source):
                return Subscription(origin: origin, source: source)
            case .failure(let error) where error.code == .subscriptionClosed:
                // The member was leaving the group as we came: forget it and join afresh.
                state.withLock { state in
                    if state.members[origin] === member { state.members[origin] = nil }
                }
            case .failure(let error):
                throw error
            }
        }
    }

    /// This transport's member of the group behind `origin`, created on first use.
    private func member(for origin: DeliveryOrigin, groupID: String, start: StartPosition, options: SubscriptionOptions)
        throws(CourierError) -> KafkaGroupMember
    {
        try state.withLock { state throws(CourierError) -> KafkaGroupMember in
            guard !state.closed else { throw Self.closedError }
            if let member = state.members[origin] { return member }
            let member = try KafkaGroupMember(
                origin: origin,
                topic: origin.destination,
                groupID: groupID,
                options: options,
                startPosition: start,
                deadLetterTopic: configuration.topology.deadLetterTopic(origin),
                retryTopic: configuration.settings.retryTopics ? configuration.topology.retryTopic(origin) : nil,
                configuration: configuration,
                producer: producer
            ) { [weak self] member in
                let counters = member.counters
                self?.state.withLock { state in
                    if state.members[member.origin] === member { state.members[member.origin] = nil }
                    state.retired = state.retired + counters
                }
            }
            state.members[origin] = member
            return member
        }
    }

    public func rewind(topic: String, group: String, to position: StartPosition) async throws {
        try DestinationName.validate(topic, as: .topic)
        try DestinationName.validate(group, as: .group)
        try checkOpen("rewinding group \(group) on \(topic)")
        let origin = DeliveryOrigin.topic(topic, group: group)
        if state.withLock({ $0.members[origin] != nil }) {
            throw CourierError(
                .unsupportedCapability,
                "group \(group) on \(topic) has open subscriptions in this process; close them before rewinding (Kafka lets only an empty group move its offsets)"
            )
        }
        try await producer.ensureTopic(topic, timeout: configuration.operationTimeout)
        try await KafkaRewind.commit(
            configuration: configuration,
            topic: topic,
            groupID: configuration.topology.groupID(topic, group),
            position: position,
            description: "group \(group) on \(topic)"
        )
    }

    public func deadLetterQueue(for origin: DeliveryOrigin) -> String {
        configuration.topology.deadLetterTopic(origin)
    }

    /// The producer and every consumer-group member.
    ///
    /// librdkafka reconnects to brokers by itself and does not report when one comes back,
    /// so the producer's state is asked for: a metadata request to any broker, answered
    /// within ``Configuration/healthTimeout`` (default 2 s) or `reconnecting` with the error.
    /// With every broker down, `health()` therefore reports unhealthy after at most that
    /// timeout, and healthy again on the first call after a broker answers. Each group member
    /// is `connected` once it has joined its group and reports its lag (the high watermarks
    /// of its partitions minus its position, from the last fetch responses, updated every
    /// second).
    public func health() async -> TransportHealth {
        let members = state.withLock { Array($0.members.values) }
        let producer = await producer.health(timeout: configuration.healthTimeout)
        return TransportHealth(system: capabilities.system, connections: [producer] + members.map { $0.health() })
    }

    public func shutdown() async throws {
        let members = state.withLock { state -> [KafkaGroupMember]? in
            guard !state.closed else { return nil }
            state.closed = true
            return Array(state.members.values)
        }
        guard let members else { return }
        await withTaskGroup(of: Void.self) { group in
            for member in members { group.addTask { await member.close() } }
        }
        await producer.close(timeout: configuration.shutdownTimeout)
    }
}

/// Moving an idle group's committed offsets (``KafkaTransport/rewind(topic:group:to:)``): a
/// short-lived member joins the group, checks that it was given every partition (nobody else
/// is reading), commits the new offsets as a member, and leaves.
enum KafkaRewind {
    static func commit(
        configuration: KafkaTransport.Configuration, topic: String, groupID: String, position: StartPosition, description: String
    ) async throws {
        let timeout = configuration.operationTimeout
        let joinTimeout = configuration.joinTimeout
        try await KafkaClient.withShortLivedConsumer(
            configuration: configuration, groupID: groupID, topic: topic, what: "rewinding \(description)"
        ) {
            (client, partitions) throws(CourierError) in
            let subscribed = client.subscribe([topic])
            guard subscribed == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaClient.error(subscribed, "rewinding \(description)") }
            let deadline = ContinuousClock.now + joinTimeout
            var assigned = 0
            while assigned == 0 {
                guard ContinuousClock.now < deadline else {
                    throw CourierError(
                        .timeout, "rewinding \(description): joining the group took longer than \(joinTimeout)", isRetriable: true)
                }
                client.consumerPoll(milliseconds: 100)?.destroy()
                assigned = client.assignment()?.count ?? 0
            }
            guard assigned == partitions else {
                throw CourierError(
                    .brokerRejected,
                    "rewinding \(description): other consumers hold \(partitions - assigned) of its \(partitions) partitions; stop every consumer of the group, then rewind"
                )
            }
            let list = PartitionList(capacity: partitions)
            for partition in 0..<Int32(partitions) {
                let (low, high, error) = client.watermarks(topic, partition, timeout: timeout)
                guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaClient.error(error, "rewinding \(description)") }
                switch position {
                case .earliest: list.add(topic, partition, offset: low)
                case .latest: list.add(topic, partition, offset: high)
                case .timestamp(let date):
                    let cut = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
                    let query = PartitionList(capacity: 1)
                    query.add(topic, partition, offset: cut)
                    let found =
                        client.offsetsForTimes(query, timeout: timeout) == RD_KAFKA_RESP_ERR_NO_ERROR
                        && query.elements[0].err == RD_KAFKA_RESP_ERR_NO_ERROR
                    guard found else {
                        throw CourierError(
                            .brokerRejected,
                            "rewinding \(description) to \(date): the broker could not look the time up in partition \(partition)")
                    }
                    // No message at or after the time: the partition's end.
                    list.add(topic, partition, offset: query.elements[0].offset >= 0 ? query.elements[0].offset : high)
                }
            }
            let committed = client.commit(list)
            guard committed == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaClient.error(committed, "rewinding \(description)") }
        }
    }
}

/// Reading a topic from a group's committed offsets without joining the group
/// (``KafkaTransport/browse(queue:limit:)``).
enum KafkaBrowse {
    static func read(configuration: KafkaTransport.Configuration, topic: String, groupID: String, limit: Int) async throws -> [Envelope] {
        let timeout = configuration.operationTimeout
        return try await KafkaClient.withShortLivedConsumer(
            configuration: configuration, groupID: groupID, topic: topic, what: "browsing \(topic)"
        ) {
            (client, partitions) throws(CourierError) -> [Envelope] in
            let committed = PartitionList(capacity: partitions)
            for partition in 0..<Int32(partitions) { committed.add(topic, partition) }
            let lookup = client.committed(committed, timeout: timeout)
            guard lookup == RD_KAFKA_RESP_ERR_NO_ERROR else {
                throw KafkaClient.error(lookup, "browsing \(topic): reading group \(groupID)'s offsets")
            }
            let assignment = PartitionList(capacity: partitions)
            var ends: [Int32: Int64] = [:]
            for element in committed.elements {
                let (low, high, marks) = client.watermarks(topic, element.partition, timeout: timeout)
                guard marks == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaClient.error(marks, "browsing \(topic)") }
                let start = element.offset >= 0 ? max(element.offset, low) : low
                if start < high {
                    assignment.add(topic, element.partition, offset: start)
                    ends[element.partition] = high
                }
            }
            guard assignment.count > 0 else { return [] }
            client.assign(assignment)
            defer { client.assign(nil) }
            var envelopes: [(Envelope, Int64)] = []
            let deadline = ContinuousClock.now + timeout
            while !ends.isEmpty && envelopes.count < limit && ContinuousClock.now < deadline {
                guard let message = client.consumerPoll(milliseconds: 100) else { continue }
                defer { message.destroy() }
                guard message.error == RD_KAFKA_RESP_ERR_NO_ERROR else { continue }
                let (pending, timestamp) = KafkaGroupMember.pending(message)
                envelopes.append((pending.envelope, timestamp))
                if let end = ends[message.partition], message.offset + 1 >= end { ends[message.partition] = nil }
            }
            return envelopes.sorted { $0.1 < $1.1 }.map(\.0)
        }
    }
}
