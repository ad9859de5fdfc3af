/// Where a delivery comes from: a topic read by a subscription group, or a queue.
public enum DeliveryOrigin: Sendable, Hashable, CustomStringConvertible {
    /// An event topic, read by the named group.
    case topic(String, group: String)
    /// A command queue.
    case queue(String)

    /// The topic or queue name.
    public var destination: String {
        switch self {
        case .topic(let topic, _): topic
        case .queue(let queue): queue
        }
    }

    /// The group, for topic deliveries.
    public var group: String? {
        if case .topic(_, let group) = self { return group }
        return nil
    }

    /// `"topic"` or `"queue"`, as written in ``CourierHeader/deadLetterOriginKind``.
    public var kind: String {
        switch self {
        case .topic: "topic"
        case .queue: "queue"
        }
    }

    /// The default dead-letter queue name: `<queue>.dead-letter` for a queue, and
    /// `<topic>.<group>.dead-letter` for a group. Dead letters are read with
    /// ``Transport/consume(queue:options:)`` on this name.
    public var defaultDeadLetterQueue: String {
        switch self {
        case .topic(let topic, let group): "\(topic).\(group).dead-letter"
        case .queue(let queue): "\(queue).dead-letter"
        }
    }

    public var description: String {
        switch self {
        case .topic(let topic, let group): "topic \(topic) (group \(group))"
        case .queue(let queue): "queue \(queue)"
        }
    }
}
