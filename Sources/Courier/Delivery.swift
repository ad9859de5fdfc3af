/// What a transport implements to settle its deliveries. Applications use ``Delivery``.
///
/// `tag` is the transport's own delivery handle. Each method is called at most once per
/// delivery by ``Delivery``; a second settlement of one tag throws
/// ``CourierError/Code/deliveryAlreadySettled``.
public protocol DeliverySettler: Sendable {
    /// Removes the message for its group or queue.
    func ack(tag: UInt64) async throws
    /// Returns the message for redelivery with attempt + 1, after `delay`; past the
    /// subscription's ``SubscriptionOptions/maxDeliveryAttempts`` it is dead-lettered instead.
    func nack(tag: UInt64, delay: Duration) async throws
    /// Moves the message to its dead-letter queue with `reason`, adding `headers` to the dead
    /// letter (such as ``CourierHeader/errorType``; the dead-letter headers themselves win).
    func deadLetter(tag: UInt64, reason: String, headers: [String: String]) async throws
}

/// A message handed to a consumer, to be settled exactly once with ``ack()``,
/// ``nack(delay:)`` or ``deadLetter(reason:)``.
///
/// A delivery that is never settled before its subscription closes (or its process dies)
/// is redelivered to another consumer of the same group or queue: at-least-once.
public struct Delivery: Sendable {
    /// The message.
    public let envelope: Envelope
    /// The delivery attempt: 1 on first delivery, +1 on each ``nack(delay:)``. A redelivery
    /// after a consumer stopped without settling keeps the attempt number (brokers cannot
    /// count those uniformly); it is visible as a duplicate ``Envelope/id``.
    public let attempt: Int
    /// The topic and group, or the queue, this delivery comes from.
    public let origin: DeliveryOrigin
    /// The transport's delivery handle.
    public let tag: UInt64
    private let settler: any DeliverySettler

    /// Creates a delivery. For transport implementations.
    public init(envelope: Envelope, attempt: Int, origin: DeliveryOrigin, tag: UInt64, settler: any DeliverySettler) {
        self.envelope = envelope
        self.attempt = attempt
        self.origin = origin
        self.tag = tag
        self.settler = settler
    }

    /// Acknowledges the message: it is removed for this group or queue.
    public func ack() async throws {
        try await settler.ack(tag: tag)
    }

    /// Negatively acknowledges the message: it is delivered again to this group or queue,
    /// with ``attempt`` + 1, after `delay`. Past the subscription's
    /// ``SubscriptionOptions/maxDeliveryAttempts`` it is dead-lettered instead.
    public func nack(delay: Duration = .zero) async throws {
        precondition(delay >= .zero, "a nack delay cannot be negative")
        try await settler.nack(tag: tag, delay: delay)
    }

    /// Moves the message to the dead-letter queue of its origin, with `reason`, the attempt
    /// count and the origin in headers (``CourierHeader/deadLetterReason`` and friends). No
    /// consumer of the group or queue sees it again.
    ///
    /// `headers` are added to the dead letter, for example the failing handler's error
    /// (``CourierHeader/errorType``, ``CourierHeader/errorMessage``).
    public func deadLetter(reason: String, headers: [String: String] = [:]) async throws {
        try await settler.deadLetter(tag: tag, reason: reason, headers: headers)
    }
}
