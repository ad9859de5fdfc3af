/// What a transport can do, declared so that the bus and the conformance suite adapt to it,
/// and so that a configuration asking for more is refused at start with a clear error.
public struct TransportCapabilities: Sendable, Hashable {
    /// Which ordering a transport guarantees for messages that share a key.
    public enum Ordering: Sendable, Hashable {
        /// No ordering guarantee.
        case none
        /// Per key, even with competing consumers: a key's next message is delivered only after
        /// the previous one is acked (or dead-lettered).
        case perKey
        /// Per key, when a group or queue has a single consumer.
        case perKeySingleConsumer
    }

    /// A short, constant name of the transport (`memory`, `rabbitmq`, `kafka`).
    public var system: String
    /// Ordering guarantee for messages with the same ``Envelope/key``.
    public var ordering: Ordering
    /// Whether confirmed messages survive a restart of the broker.
    public var survivesBrokerRestart: Bool
    /// Whether a new group can start at ``StartPosition/earliest`` or a timestamp, and a group
    /// can be rewound.
    public var replay: Bool
    /// Whether `nack(delay:)` is implemented by the broker (durable), rather than by a timer in
    /// the consuming process.
    public var nativeDelayedRedelivery: Bool
    /// The largest payload accepted, in bytes.
    public var maxPayloadSize: Int

    /// Creates a capability declaration.
    public init(
        system: String,
        ordering: Ordering,
        survivesBrokerRestart: Bool,
        replay: Bool,
        nativeDelayedRedelivery: Bool,
        maxPayloadSize: Int
    ) {
        self.system = system
        self.ordering = ordering
        self.survivesBrokerRestart = survivesBrokerRestart
        self.replay = replay
        self.nativeDelayedRedelivery = nativeDelayedRedelivery
        self.maxPayloadSize = maxPayloadSize
    }

    /// Throws ``CourierError/Code/unsupportedCapability`` unless `options` can be honoured.
    public func check(_ options: SubscriptionOptions) throws(CourierError) {
        try options.validate()
        if options.startPosition != .latest && !replay {
            throw CourierError(
                .unsupportedCapability,
                "the \(system) transport cannot start a group at \(options.startPosition): it does not retain history; use .latest or a transport with replay"
            )
        }
    }

    /// Throws ``CourierError/Code/payloadTooLarge`` when `envelope` is too big.
    public func check(_ envelope: Envelope) throws(CourierError) {
        if envelope.payload.count > maxPayloadSize {
            throw CourierError(
                .payloadTooLarge,
                "message \(envelope.id) has a payload of \(envelope.payload.count) bytes; the \(system) transport accepts at most \(maxPayloadSize). Store large data elsewhere and send a reference"
            )
        }
    }
}
