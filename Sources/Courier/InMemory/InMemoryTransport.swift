import Synchronization

/// The in-process transport: the full Courier semantics, deterministic and fast, with no
/// broker to run. It is what unit tests and `courier demo` use.
///
/// - Topics fan out to their groups; groups and queues are durable for the broker's lifetime.
/// - Messages with the same key are delivered in order, one at a time, even to competing
///   consumers (``TransportCapabilities/Ordering/perKey``).
/// - Memory is bounded: each queue holds at most ``InMemoryBroker/Configuration/queueCapacity``
///   messages, then publishers wait (or get ``CourierError/Code/queueFull``).
/// - `nack(delay:)` uses a timer in this process; nothing survives the process.
///
/// ```swift
/// let transport = InMemoryTransport()
/// let orders = try await transport.subscribe(to: "orders", group: "billing")
/// try await transport.publish(Envelope(text: "order 1"), to: "orders")
/// for try await delivery in orders {
///     print(delivery.envelope.text ?? "")
///     try await delivery.ack()
/// }
/// ```
public final class InMemoryTransport: Transport {
    /// The broker this transport is connected to.
    public let broker: InMemoryBroker
    public let capabilities: TransportCapabilities
    private let ownsBroker: Bool
    private let closed = Atomic<Bool>(false)
    private let consumers = Mutex<[ObjectIdentifier: InMemoryConsumer]>([:])

    /// Connects to `broker`, which outlives this transport.
    public convenience init(broker: InMemoryBroker) {
        self.init(broker: broker, owned: false)
    }

    /// Creates a transport with a private broker of its own.
    public convenience init(configuration: InMemoryBroker.Configuration = InMemoryBroker.Configuration()) throws(CourierError) {
        self.init(broker: try InMemoryBroker(configuration: configuration), owned: true)
    }

    private init(broker: InMemoryBroker, owned: Bool) {
        self.broker = broker
        self.ownsBroker = owned
        let configuration = broker.configuration
        self.capabilities = TransportCapabilities(
            system: "memory",
            ordering: configuration.ordered ? .perKey : .none,
            survivesBrokerRestart: false,
            replay: configuration.retention > 0,
            nativeDelayedRedelivery: false,
            maxPayloadSize: configuration.maxPayloadSize
        )
    }

    private func checkOpen(_ operation: @autoclosure () -> String) throws(CourierError) {
        if closed.load(ordering: .acquiring) { throw CourierError.transportClosed(operation()) }
    }

    public func publish(_ envelope: Envelope, to topic: String) async throws {
        try checkOpen("publishing to \(topic)")
        try capabilities.check(envelope)
        try await broker.topic(named: topic).publish(envelope)
    }

    public func publish(_ envelopes: [Envelope], to topic: String) async throws {
        try checkOpen("publishing to \(topic)")
        for envelope in envelopes { try capabilities.check(envelope) }
        let destination = try broker.topic(named: topic)
        for envelope in envelopes { try await destination.publish(envelope) }
    }

    public func send(_ envelope: Envelope, to queue: String) async throws {
        try checkOpen("sending to \(queue)")
        try capabilities.check(envelope)
        try await broker.queue(named: queue).enqueue(StoredMessage(envelope: envelope, attempt: 1))
    }

    public func send(_ envelopes: [Envelope], to queue: String) async throws {
        try checkOpen("sending to \(queue)")
        for envelope in envelopes { try capabilities.check(envelope) }
        let destination = try broker.queue(named: queue)
        for envelope in envelopes { try await destination.enqueue(StoredMessage(envelope: envelope, attempt: 1)) }
    }

    public func subscribe(to topic: String, group: String, options: SubscriptionOptions) async throws -> Subscription {
        try checkOpen("subscribing to \(topic)")
        try DestinationName.validate(group, as: .group)
        try capabilities.check(options)
        let queue = try broker.topic(named: topic).group(group, start: options.startPosition)
        return try attach(to: queue, options: options)
    }

    public func consume(queue: String, options: SubscriptionOptions) async throws -> Subscription {
        try checkOpen("consuming \(queue)")
        try capabilities.check(options)
        return try attach(to: broker.queue(named: queue), options: options)
    }

    public func rewind(topic: String, group: String, to position: StartPosition) async throws {
        try checkOpen("rewinding \(group) on \(topic)")
        guard capabilities.replay else {
            throw CourierError(
                .unsupportedCapability, "this in-memory broker retains no history (retention 0); it cannot rewind group \(group)")
        }
        try broker.topic(named: topic).rewind(group: group, to: position)
    }

    public func redeliver(_ envelopes: [Envelope], to origin: DeliveryOrigin) async throws {
        try checkOpen("redelivering to \(origin)")
        for envelope in envelopes { try capabilities.check(envelope) }
        let queue: InMemoryQueue
        switch origin {
        case .queue(let name):
            queue = try broker.queue(named: name)
        case .topic(let topic, let group):
            try DestinationName.validate(group, as: .group)
            queue = try broker.topic(named: topic).group(group, start: .latest)
        }
        for envelope in envelopes { try await queue.enqueue(StoredMessage(envelope: envelope, attempt: 1)) }
    }

    public func browse(queue: String, limit: Int) async throws -> [Envelope] {
        try checkOpen("browsing \(queue)")
        return try broker.queue(named: queue).snapshot(limit: limit)
    }

    /// One connection, `in-process`: connected until ``shutdown()``. The broker lives in this
    /// process, so there is nothing to lose contact with.
    public func health() async -> TransportHealth {
        let state: TransportHealth.Connection.State = closed.load(ordering: .acquiring) ? .closed : .connected
        return TransportHealth(system: capabilities.system, connections: [.init(name: "in-process", state: state)])
    }

    public func shutdown() async throws {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let open = consumers.withLock { consumers in
            defer { consumers.removeAll() }
            return Array(consumers.values)
        }
        for consumer in open { consumer.stop() }
        if ownsBroker { broker.close() }
    }

    private func attach(to queue: InMemoryQueue, options: SubscriptionOptions) throws -> Subscription {
        let consumer = InMemoryConsumer(queue: queue, id: try queue.addConsumer(options), transport: self)
        consumers.withLock { $0[ObjectIdentifier(consumer)] = consumer }
        // A shutdown that raced with this subscribe must not leave the consumer open.
        if closed.load(ordering: .acquiring) {
            consumer.stop()
            throw CourierError.transportClosed("subscribing to \(queue.origin)")
        }
        return Subscription(origin: queue.origin, source: consumer)
    }

    fileprivate func forget(_ consumer: InMemoryConsumer) {
        _ = consumers.withLock { $0.removeValue(forKey: ObjectIdentifier(consumer)) }
    }
}

/// One consumer of an in-memory queue, feeding a ``Subscription``.
///
/// It takes deliveries from the queue in batches (up to ``batch`` beyond the one asked for,
/// within the subscription's prefetch) and hands them out one by one: the queue's lock,
/// shared with the publishers, is taken once per batch. The batch is in flight for this
/// consumer, as a broker's prefetch is: ``close()`` returns it to the queue.
final class InMemoryConsumer: DeliverySource {
    let queue: InMemoryQueue
    let id: Int
    private unowned let transport: InMemoryTransport
    /// Deliveries taken from the queue and not yet handed out: at most ``batch``.
    private let taken = DeliveryBuffer(limit: batch)
    /// At most this many are taken ahead: enough to amortise the lock, few enough that
    /// competing consumers still share a short burst.
    static let batch = 32

    init(queue: InMemoryQueue, id: Int, transport: InMemoryTransport) {
        self.queue = queue
        self.id = id
        self.transport = transport
    }

    func next() async throws -> Delivery? {
        if let delivery = taken.deliveries.withLock({ $0.popFirst() }) { return delivery }
        return await queue.next(consumer: id, takingAheadInto: taken)
    }

    func close() async {
        stop()
        transport.forget(self)
    }

    func stop() {
        // The queue takes back everything in flight for this consumer, the batch included;
        // the batch is dropped here before (nothing more is handed from it) and after (a
        // concurrent next() may have refilled it meanwhile).
        taken.deliveries.withLock { $0.removeAll() }
        queue.removeConsumer(id)
        taken.deliveries.withLock { $0.removeAll() }
    }
}
