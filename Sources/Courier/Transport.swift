/// A message broker behind one contract: events are published to topics and read by
/// subscription groups, commands are sent to queues and read by competing consumers.
///
/// Semantics every implementation keeps (and proves with `CourierConformance`):
/// - ``publish(_:to:)`` and ``send(_:to:)`` return only once the broker has taken
///   responsibility for every message; nothing they confirmed may be lost.
/// - Each subscription group of a topic gets its own copy of every event published after the
///   group exists; members of one group compete. A topic with no group drops its events.
/// - A queue keeps commands until a consumer acks them, even if no consumer ever ran yet.
/// - Delivery is at-least-once: a message not acked when its consumer stops is redelivered.
/// - Names are checked by ``DestinationName``; bad input throws ``CourierError``.
public protocol Transport: Sendable {
    /// What this transport can do.
    var capabilities: TransportCapabilities { get }

    /// Publishes events to `topic`, in order, returning once all are confirmed.
    func publish(_ envelopes: [Envelope], to topic: String) async throws
    /// Publishes one event to `topic`, returning once it is confirmed.
    func publish(_ envelope: Envelope, to topic: String) async throws
    /// Sends commands to `queue` (declaring it), in order, returning once all are confirmed.
    func send(_ envelopes: [Envelope], to queue: String) async throws
    /// Sends one command to `queue` (declaring it), returning once it is confirmed.
    func send(_ envelope: Envelope, to queue: String) async throws
    /// Joins `group` on `topic`, creating the group (durably) if it does not exist yet.
    func subscribe(to topic: String, group: String, options: SubscriptionOptions) async throws -> Subscription
    /// Consumes `queue`, declaring it if needed, competing with its other consumers.
    func consume(queue: String, options: SubscriptionOptions) async throws -> Subscription
    /// Moves `group` on `topic` back (or forward) to `position`: its next deliveries are the
    /// retained events from there. Needs ``TransportCapabilities/replay``.
    func rewind(topic: String, group: String, to position: StartPosition) async throws
    /// The queue that receives dead letters from `origin`; read it with ``consume(queue:options:)``.
    func deadLetterQueue(for origin: DeliveryOrigin) -> String
    /// Puts `envelopes` back into `origin` for its consumers only — one group of a topic (the
    /// topic's other groups do not see them again) or a queue — returning once all are
    /// confirmed. Replaying dead letters uses it. The default sends to a queue and refuses a
    /// topic with ``CourierError/Code/unsupportedCapability``.
    func redeliver(_ envelopes: [Envelope], to origin: DeliveryOrigin) async throws
    /// Up to `limit` messages waiting in `queue`, oldest first, without taking them: they stay
    /// for the queue's consumers. Listing dead letters uses it. The default reads with a
    /// consumer that settles nothing and closes, which returns everything it read.
    func browse(queue: String, limit: Int) async throws -> [Envelope]
    /// Stops intake, ends every subscription (returning un-acked deliveries), and closes the
    /// connection. Further calls throw ``CourierError/Code/transportClosed``. Idempotent.
    func shutdown() async throws
    /// The state of every connection to the broker, without waiting for the broker. The
    /// default reports no connection, which reads unhealthy: a transport implements it.
    func health() async -> TransportHealth
}

extension Transport {
    /// Runs `body` with this transport, then shuts the transport down, whether `body` threw
    /// or not (a shutdown error after a thrown one is dropped).
    public func withShutdown<T: Sendable>(_ body: (Self) async throws -> T) async throws -> T {
        do {
            let result = try await body(self)
            try await shutdown()
            return result
        } catch {
            try? await shutdown()
            throw error
        }
    }

    public func publish(_ envelope: Envelope, to topic: String) async throws {
        try await publish([envelope], to: topic)
    }

    public func send(_ envelope: Envelope, to queue: String) async throws {
        try await send([envelope], to: queue)
    }

    /// Joins `group` on `topic` with default ``SubscriptionOptions``.
    public func subscribe(to topic: String, group: String) async throws -> Subscription {
        try await subscribe(to: topic, group: group, options: SubscriptionOptions())
    }

    /// Consumes `queue` with default ``SubscriptionOptions``.
    public func consume(queue: String) async throws -> Subscription {
        try await consume(queue: queue, options: SubscriptionOptions())
    }

    public func rewind(topic: String, group: String, to position: StartPosition) async throws {
        throw CourierError(
            .unsupportedCapability,
            "the \(capabilities.system) transport cannot rewind group \(group) on topic \(topic): it does not retain history"
        )
    }

    public func health() async -> TransportHealth {
        TransportHealth(system: capabilities.system, connections: [])
    }

    public func deadLetterQueue(for origin: DeliveryOrigin) -> String {
        origin.defaultDeadLetterQueue
    }

    public func redeliver(_ envelopes: [Envelope], to origin: DeliveryOrigin) async throws {
        switch origin {
        case .queue(let queue):
            try await send(envelopes, to: queue)
        case .topic(let topic, let group):
            throw CourierError(
                .unsupportedCapability,
                "the \(capabilities.system) transport cannot put messages back into group \(group) of \(topic) alone; publish them to the topic to reach every group"
            )
        }
    }

    public func browse(queue: String, limit: Int) async throws -> [Envelope] {
        guard limit > 0 else { return [] }
        let subscription = try await consume(queue: queue, options: SubscriptionOptions(prefetch: limit))
        return try await Browsing.collect(subscription, limit: limit)
    }
}

/// Reading a queue without settling, for transports implementing
/// ``Transport/browse(queue:limit:)`` with a subscription.
public enum Browsing {
    /// Collects up to `limit` distinct messages from `subscription` without settling any, until
    /// a second passes without a delivery, then closes it (returning them all to the queue).
    public static func collect(_ subscription: Subscription, limit: Int) async throws -> [Envelope] {
        var iterator = subscription.makeAsyncIterator()
        var seen: [Envelope] = []
        var ids = Set<String>()
        while seen.count < limit {
            // What a queue holds arrives at once: a second without a delivery means no more.
            let timer = Task {
                try await Task.sleep(for: .seconds(1))
                await subscription.close()
            }
            let delivery = try await iterator.next()
            timer.cancel()
            guard let delivery else { break }
            if ids.insert(delivery.envelope.id).inserted { seen.append(delivery.envelope) }
        }
        await subscription.close()
        return seen
    }
}
