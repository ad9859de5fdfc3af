/// What a transport implements to feed a ``Subscription``. Applications use ``Subscription``.
public protocol DeliverySource: Sendable {
    /// The next delivery, suspending until one is available; `nil` once the source is closed
    /// or the calling task is cancelled.
    func next() async throws -> Delivery?
    /// Stops intake and returns every un-acked delivery to its queue for redelivery.
    /// Idempotent.
    func close() async
}

/// A stream of deliveries from a topic (as a group) or a queue.
///
/// Iterate it with `for try await delivery in subscription`, settle each delivery, and
/// ``close()`` it when done: the iteration then ends, and deliveries not yet settled go back
/// to the group or queue for another consumer. Several tasks may iterate one subscription
/// at once; they compete for its deliveries.
public final class Subscription: AsyncSequence, Sendable {
    public typealias Element = Delivery

    /// The topic and group, or the queue, this subscription reads.
    public let origin: DeliveryOrigin
    private let source: any DeliverySource

    /// Creates a subscription. For transport implementations.
    public init(origin: DeliveryOrigin, source: any DeliverySource) {
        self.origin = origin
        self.source = source
    }

    /// Stops the subscription: iteration ends and un-acked deliveries are returned for
    /// redelivery. Calling it again does nothing.
    public func close() async {
        await source.close()
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(source: source)
    }

    /// Iterates deliveries until the subscription is closed.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let source: any DeliverySource

        public mutating func next() async throws -> Delivery? {
            try await source.next()
        }
    }
}
