import Foundation

/// Where a new subscription group starts reading a topic.
///
/// Only a group that does not exist yet uses it: an existing group resumes where it left off
/// (use ``Transport/rewind(topic:group:to:)`` to move it). Positions other than ``latest``
/// need ``TransportCapabilities/replay``.
public enum StartPosition: Sendable, Hashable {
    /// Only events published after the group is created.
    case latest
    /// Every event the transport still retains for the topic.
    case earliest
    /// Events published at or after the given time.
    case timestamp(Date)
}

/// How a subscription or queue consumer behaves.
public struct SubscriptionOptions: Sendable, Hashable {
    /// How many un-acked deliveries this consumer may hold at once. Default 256.
    public var prefetch: Int
    /// Where a new group starts. Default ``StartPosition/latest``.
    public var startPosition: StartPosition
    /// After this many delivery attempts a ``Delivery/nack(delay:)`` dead-letters the message
    /// instead of redelivering it. Default 10.
    public var maxDeliveryAttempts: Int

    /// Creates options; every parameter has the documented default.
    public init(prefetch: Int = 256, startPosition: StartPosition = .latest, maxDeliveryAttempts: Int = 10) {
        self.prefetch = prefetch
        self.startPosition = startPosition
        self.maxDeliveryAttempts = maxDeliveryAttempts
    }

    /// Throws ``CourierError/Code/invalidConfiguration`` for values out of range.
    public func validate() throws(CourierError) {
        guard prefetch >= 1 else {
            throw CourierError(.invalidConfiguration, "prefetch is \(prefetch); it must be at least 1")
        }
        guard maxDeliveryAttempts >= 1 else {
            throw CourierError(.invalidConfiguration, "maxDeliveryAttempts is \(maxDeliveryAttempts); it must be at least 1")
        }
    }
}
