import CRabbitMQ
import Courier
import Foundation
import Logging

/// Courier's transport over RabbitMQ (librabbitmq, AMQP 0-9-1).
///
/// Topics are durable fanout exchanges, groups and command queues durable queues (see
/// ``RabbitMQTopology``). Messages are persistent; `publish` and `send` return when the
/// broker's publisher confirm arrives (many in flight, matched by delivery tag); consumers use
/// manual acks with `basic.qos` prefetch, and contiguous acks go out as one `multiple` ack.
/// `nack` republishes the message with its attempt + 1 (through a TTL'd delay queue when it
/// has a delay) and then acks the original, so redeliveries carry their attempt number and
/// survive broker restarts; dead letters go to a durable dead-letter queue.
///
/// Two connections (one publishing, one consuming, as RabbitMQ recommends: flow control on
/// publishers never stalls acks), each owned by a thread of its own. When a connection is
/// lost the adapter reconnects with backoff, re-declares, resumes consumers and republishes
/// every message whose confirm had not arrived (same id: duplicates are possible, losses not).
///
/// ```swift
/// let transport = try await RabbitMQTransport.connect("amqp://guest:guest@localhost:5672/")
/// try await transport.send(Envelope(text: "hello"), to: "greetings")
/// ```
public final class RabbitMQTransport: Transport {
    /// Headers for the AMQP basic properties that have no CloudEvents attribute.
    ///
    /// How the standard basic properties of a received message appear in Courier, so that
    /// messages from other clients (pika, amqplib, the management UI) read as Courier's own.
    /// A header of the same name, when the message also carries one, wins.
    ///
    /// | AMQP property | Courier |
    /// |---|---|
    /// | `message_id` | ``Envelope/id`` (when there is no `ce_id` header) |
    /// | `timestamp` | ``Envelope/timestamp`` (when there is no `ce_time` header) |
    /// | `content_type` | header `content-type` |
    /// | `content_encoding` | header `amqp_content_encoding` (``contentEncoding``) |
    /// | `correlation_id` | header `ce_correlationid` |
    /// | `type` | header `ce_type` |
    /// | `app_id` | header `ce_source` |
    /// | `reply_to` | header `amqp_reply_to` (``replyTo``) |
    /// | `expiration` | header `amqp_expiration` (``expiration``) |
    public enum PropertyHeader {
        /// The `content_encoding` property.
        public static let contentEncoding = "amqp_content_encoding"
        /// The `reply_to` property.
        public static let replyTo = "amqp_reply_to"
        /// The `expiration` property (a per-message TTL in milliseconds, as text).
        public static let expiration = "amqp_expiration"
    }

    /// How the transport connects and behaves.
    public struct Configuration: Sendable {
        /// Where and how to connect.
        public var settings: AMQPSettings
        /// What is declared on the broker, under which names.
        public var topology: RabbitMQTopology
        /// How long a publish waits for its confirm (across reconnects) before it fails with
        /// ``CourierError/Code/notConfirmed``. Default 60 s.
        public var confirmTimeout: Duration = .seconds(60)
        /// The largest payload accepted. Default 16 MiB (RabbitMQ 4's default limit).
        public var maxPayloadSize: Int = 16 << 20
        /// Where the adapter logs: lost connections, reconnects, consumers that could not be
        /// resumed. Default label `courier.rabbitmq`.
        public var logger = Logger(label: "courier.rabbitmq")

        /// Configuration for `settings`, with the default topology and queue type from the
        /// settings.
        public init(settings: AMQPSettings, topology: RabbitMQTopology = RabbitMQTopology()) {
            self.settings = settings
            self.topology = topology
            self.topology.queueType = settings.queueType
        }
    }

    public let configuration: Configuration
    public let capabilities: TransportCapabilities
    let publisher: AMQPConnection
    let consumer: AMQPConnection
    private let subscriptions = ConsumerRegistry()
    private let closed = LockedFlag()

    /// Connects to the broker an `amqp://` or `amqps://` URL names.
    public static func connect(_ url: String) async throws -> RabbitMQTransport {
        guard case .amqp(let settings) = try TransportURL(url) else {
            throw CourierError(.invalidURL, "\(TransportURL.redacted(url)) is not an amqp:// or amqps:// URL")
        }
        return try await connect(Configuration(settings: settings))
    }

    /// Connects with `configuration`; fails fast with ``CourierError/Code/unreachable`` or
    /// ``CourierError/Code/authenticationFailed``.
    public static func connect(_ configuration: Configuration) async throws -> RabbitMQTransport {
        let transport = RabbitMQTransport(configuration)
        try await transport.publisher.start()
        do {
            try await transport.consumer.start()
        } catch {
            await transport.publisher.stop()
            throw error
        }
        return transport
    }

    private init(_ configuration: Configuration) {
        self.configuration = configuration
        self.publisher = AMQPConnection(
            settings: configuration.settings, label: "publish", confirmTimeout: configuration.confirmTimeout, logger: configuration.logger)
        self.consumer = AMQPConnection(settings: configuration.settings, label: "consume", logger: configuration.logger)
        self.capabilities = TransportCapabilities(
            system: "rabbitmq",
            ordering: .perKeySingleConsumer,
            survivesBrokerRestart: true,
            replay: false,
            nativeDelayedRedelivery: true,
            maxPayloadSize: configuration.maxPayloadSize
        )
    }

    private var topology: RabbitMQTopology { configuration.topology }

    private func checkOpen(_ what: @autoclosure () -> String) throws(CourierError) {
        if closed.isSet {
            throw CourierError(.transportClosed, "\(what()): the transport was shut down; create a new transport to continue")
        }
    }

    // MARK: Producing

    public func publish(_ envelopes: [Envelope], to topic: String) async throws {
        try check(envelopes, to: topic, as: .topic, "publishing to")
        let exchange = topology.exchange(topic)
        let topology = self.topology
        try await publish(envelopes, exchange: exchange, routingKey: "") { connection throws(CourierError) in
            try topology.declareExchange(exchange, on: connection, channel: AMQPConnection.publishChannel)
        }
    }

    public func send(_ envelopes: [Envelope], to queue: String) async throws {
        try check(envelopes, to: queue, as: .queue, "sending to")
        try await publish(envelopes, toQueue: topology.commandQueue(queue))
    }

    /// Publishes straight to the group's (or queue's) broker queue through the default
    /// exchange, so the topic's other groups do not see the messages again.
    public func redeliver(_ envelopes: [Envelope], to origin: DeliveryOrigin) async throws {
        try check(envelopes, to: origin.destination, as: origin.group == nil ? .queue : .topic, "redelivering to")
        guard case .topic(let topic, let group) = origin else {
            try await publish(envelopes, toQueue: topology.queue(for: origin))
            return
        }
        try DestinationName.validate(group, as: .group)
        let topology = self.topology
        try await publish(envelopes, exchange: "", routingKey: topology.groupQueue(topic, group)) { connection throws(CourierError) in
            try topology.declareGroup(topic: topic, group: group, on: connection, channel: AMQPConnection.publishChannel)
        }
    }

    private func check(_ envelopes: [Envelope], to name: String, as kind: DestinationName.Kind, _ what: String) throws(CourierError) {
        try checkOpen("\(what) \(name)")
        try DestinationName.validate(name, as: kind)
        for envelope in envelopes { try capabilities.check(envelope) }
    }

    /// Publishes `envelopes` through the default exchange to `queue`, declaring it first.
    private func publish(_ envelopes: [Envelope], attempt: Int = 1, toQueue queue: String) async throws {
        let topology = self.topology
        try await publish(envelopes, attempt: attempt, exchange: "", routingKey: queue) { connection throws(CourierError) in
            try topology.declareQueue(queue, on: connection, channel: AMQPConnection.publishChannel)
        }
    }

    /// Publishes `envelopes` with one shared `declare` for their destination.
    private func publish(
        _ envelopes: [Envelope], attempt: Int = 1, exchange: String, routingKey: String,
        declare: @escaping (AMQPConnection) throws(CourierError) -> Void
    ) async throws {
        try await publish(
            envelopes.map {
                Self.outgoing(
                    $0, attempt: attempt, mapping: configuration.settings.attributes, exchange: exchange, routingKey: routingKey,
                    declare: declare)
            })
    }

    /// Publishes on the confirm channel and waits for every confirm.
    func publish(_ messages: [OutgoingMessage]) async throws {
        guard !messages.isEmpty else { return }
        let deadline = ContinuousClock.now + configuration.confirmTimeout
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            guard !publisher.isStopping else {
                continuation.resume(
                    throwing: CourierError(.transportClosed, "publishing: the transport was shut down; create a new transport to continue"))
                return
            }
            let sink = ConfirmSink(count: messages.count, deadline: deadline, continuation: continuation)
            publisher.submit { connection in
                for message in messages { connection.publish(message, sink: sink) }
            }
        }
    }

    static let ignoredBrokerHeaders: Set<String> = [
        "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
        "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count",
    ]

    /// An envelope as a persistent AMQP message: the well-known attributes as basic properties
    /// (``AMQPSettings/AttributeMapping``), the rest as headers.
    static func outgoing(
        _ envelope: Envelope, attempt: Int, mapping: AMQPSettings.AttributeMapping, exchange: String, routingKey: String,
        declare: @escaping (AMQPConnection) throws(CourierError) -> Void
    ) -> OutgoingMessage {
        let fields = PropertyFields(envelope, attempt: attempt, mapping: mapping)
        let seconds = UInt64(max(0, envelope.timestamp.clampedMillisecondsSince1970 / 1000))
        let body = envelope.payload
        return OutgoingMessage(id: envelope.id, declare: declare) { state, channel in
            AMQPCodec.withTable(fields.headers) { table in
                fields.withProperties { properties in
                    AMQPCodec.withBytes(exchange) { exchangeBytes in
                        AMQPCodec.withBytes(routingKey) { routing in
                            properties._flags |= amqp_flags_t(
                                AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG)
                            properties.headers = table
                            properties.delivery_mode = 2
                            properties.timestamp = seconds
                            return body.withUnsafeBytes { raw in
                                let bytes = amqp_bytes_t(len: raw.count, bytes: UnsafeMutableRawPointer(mutating: raw.baseAddress))
                                return state.publish(
                                    channel, exchange: exchangeBytes, routingKey: routing, properties: &properties, body: bytes)
                            }
                        }
                    }
                }
            }
        }
    }

    /// The string basic properties of one message and the headers left for its table.
    struct PropertyFields: Sendable {
        private(set) var messageID: String?
        private(set) var contentType: String?
        private(set) var type: String?
        private(set) var appID: String?
        private(set) var correlationID: String?
        private(set) var headers: [(String, AMQPCodec.Argument)] = []

        /// The largest AMQP short string, which every string property is.
        static let maximumLength = 255

        init(_ envelope: Envelope, attempt: Int, mapping: AMQPSettings.AttributeMapping) {
            headers.reserveCapacity(envelope.headers.count + 3)
            let idFits = envelope.id.utf8.count <= Self.maximumLength
            if idFits { messageID = envelope.id }
            WireFormat.forEachHeader(of: envelope, attempt: attempt) { name, value in
                let fits = value.utf8.count <= Self.maximumLength
                switch name {
                case CourierHeader.contentType where fits:
                    contentType = value
                    if mapping == .properties { return }
                case CourierHeader.id where mapping == .properties && idFits, CourierHeader.specVersion where mapping == .properties:
                    return
                case CourierHeader.type where mapping == .properties && fits:
                    type = value
                    return
                case CourierHeader.source where mapping == .properties && fits:
                    appID = value
                    return
                case CourierHeader.correlationID where mapping == .properties && fits:
                    correlationID = value
                    return
                default:
                    break
                }
                headers.append((name, .string(value)))
            }
        }

        /// Calls `body` with basic properties holding these strings, valid during the call
        /// (borrowed from the strings, nothing copied).
        func withProperties<R>(_ body: (inout amqp_basic_properties_t) -> R) -> R {
            func with(_ text: String?, _ body: (amqp_bytes_t?) -> R) -> R {
                guard let text else { return body(nil) }
                return AMQPCodec.withBytes(text) { body($0) }
            }
            return with(messageID) { messageID in
                with(contentType) { contentType in
                    with(type) { type in
                        with(appID) { appID in
                            with(correlationID) { correlationID in
                                var properties = amqp_basic_properties_t()
                                func set(
                                    _ flag: Int32, _ value: amqp_bytes_t?, _ field: WritableKeyPath<amqp_basic_properties_t, amqp_bytes_t>
                                ) {
                                    guard let value else { return }
                                    properties._flags |= amqp_flags_t(flag)
                                    properties[keyPath: field] = value
                                }
                                set(AMQP_BASIC_MESSAGE_ID_FLAG, messageID, \.message_id)
                                set(AMQP_BASIC_CONTENT_TYPE_FLAG, contentType, \.content_type)
                                set(AMQP_BASIC_TYPE_FLAG, type, \.type)
                                set(AMQP_BASIC_APP_ID_FLAG, appID, \.app_id)
                                set(AMQP_BASIC_CORRELATION_ID_FLAG, correlationID, \.correlation_id)
                                return body(&properties)
                            }
                        }
                    }
                }
            }
        }
    }

    // MARK: Consuming

    public func subscribe(to topic: String, group: String, options: SubscriptionOptions) async throws -> Subscription {
        try checkOpen("subscribing to \(topic)")
        try DestinationName.validate(topic, as: .topic)
        try DestinationName.validate(group, as: .group)
        try capabilities.check(options)
        return try await attach(origin: .topic(topic, group: group), options: options)
    }

    public func consume(queue: String, options: SubscriptionOptions) async throws -> Subscription {
        try checkOpen("consuming \(queue)")
        try DestinationName.validate(queue, as: .queue)
        try capabilities.check(options)
        return try await attach(origin: .queue(queue), options: options)
    }

    /// Reads with a consumer that does not hold messages back behind an earlier one of their
    /// key (it settles nothing, so it would see one per key), then closes it, which returns
    /// everything to the queue.
    public func browse(queue: String, limit: Int) async throws -> [Envelope] {
        try DestinationName.validate(queue, as: .queue)
        guard limit > 0 else { return [] }
        let subscription = try await attach(
            origin: .queue(queue), options: SubscriptionOptions(prefetch: min(limit, 65_535)), ordered: false)
        return try await Browsing.collect(subscription, limit: limit)
    }

    private func attach(origin: DeliveryOrigin, options: SubscriptionOptions, ordered: Bool = true) async throws -> Subscription {
        let source = RabbitMQConsumer(transport: self, origin: origin, options: options, ordered: ordered)
        try await consumer.perform { connection throws(CourierError) in
            _ = try connection.attach(source)
        }
        subscriptions.insert(source)
        if closed.isSet {
            await source.close()
            throw CourierError(.transportClosed, "subscribing to \(origin): the transport was shut down")
        }
        return Subscription(origin: origin, source: source)
    }

    func forget(_ source: RabbitMQConsumer) {
        subscriptions.remove(source)
    }

    public func deadLetterQueue(for origin: DeliveryOrigin) -> String {
        topology.deadLetterQueue(origin)
    }

    /// The publishing and the consuming connection: each `connected`, `reconnecting` (with
    /// the last error) or `closed`, with its node and how long ago the broker last sent on it.
    ///
    /// A node that dies closes its sockets: the connections report `reconnecting` at once. A
    /// node that goes silent (a network partition, a hung VM) makes them `unresponsive` after
    /// two heartbeats (``AMQPSettings/heartbeatSeconds``, default 30 s), when librabbitmq also
    /// closes them and they start reconnecting. `connected` again after the reconnect.
    public func health() async -> TransportHealth {
        TransportHealth(system: capabilities.system, connections: [publisher.health(), consumer.health()])
    }

    public func shutdown() async throws {
        guard closed.set() else { return }
        for source in subscriptions.all() { await source.close() }
        await publisher.stop()
        await consumer.stop()
    }

    // MARK: Redelivery and dead letters (used by consumers)

    /// Republishes `envelope` to the queue of `origin` with `attempt`, through a delay queue
    /// when `delay` is positive; returns once confirmed.
    func redeliver(_ envelope: Envelope, attempt: Int, origin: DeliveryOrigin, delay: Duration) async throws {
        let target = topology.queue(for: origin)
        if delay <= .zero {
            // The queue exists: its consumer just received from it.
            try await publish([envelope], attempt: attempt, exchange: "", routingKey: target) { _ throws(CourierError) in }
            return
        }
        let milliseconds = RabbitMQTopology.delayBucket(delay)
        let topology = self.topology
        let delayQueue = topology.delayQueue(target, milliseconds)
        try await publish([envelope], attempt: attempt, exchange: "", routingKey: delayQueue) { connection throws(CourierError) in
            try topology.declareDelayQueue(delayQueue, target: target, milliseconds: milliseconds, on: connection)
        }
    }

    /// Publishes `envelope` as a dead letter of `origin`; returns once confirmed.
    func deadLetter(_ envelope: Envelope, reason: String, origin: DeliveryOrigin, attempts: Int, headers: [String: String]) async throws {
        let letter = WireFormat.deadLetter(envelope, reason: reason, origin: origin, attempts: attempts, extra: headers)
        try await publish([letter], toQueue: topology.deadLetterQueue(origin))
    }
}
