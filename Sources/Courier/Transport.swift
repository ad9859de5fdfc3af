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
    /// Stops intake, ends every subscription (returning un-acked deliveries), and closes the
    /// connection. Further calls throw ``CourierError/Code/transportClosed``. Idempotent.
    func shutdown() async throws
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

    public func deadLetterQueue(for origin: DeliveryOrigin) -> String {
        origin.defaultDeadLetterQueue
    }
}
