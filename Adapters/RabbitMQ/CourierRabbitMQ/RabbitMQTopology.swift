import CRabbitMQ
import Courier

/// What Courier declares on RabbitMQ, and under which names. Replace any naming function to
/// fit an existing installation; every declaration is durable and idempotent.
///
/// | Courier | RabbitMQ |
/// |---|---|
/// | topic `T` | durable `fanout` exchange `T` |
/// | group `G` on topic `T` | durable queue `T.G`, bound to exchange `T` |
/// | command queue `Q` | durable queue `Q` (declared by senders and consumers) |
/// | dead letters of a queue or group | durable queue `Q.dead-letter` / `T.G.dead-letter` |
/// | `nack(delay: d)` | durable classic queue `Q.delay.<ms>ms` with `x-message-ttl` = d and dead-lettering back to `Q` through the default exchange |
///
/// Queues are classic or quorum (`x-queue-type`) as ``AMQPSettings/queueType`` says; delay
/// queues are always classic. Delays are rounded up to two significant digits (1234 ms →
/// 1300 ms) so that backoff with jitter reuses a bounded set of delay queues; a delay queue
/// deletes itself (`x-expires`) five minutes after its last use.
public struct RabbitMQTopology: Sendable {
    /// The exchange of a topic. Default: the topic name.
    public var exchange: @Sendable (_ topic: String) -> String = { $0 }
    /// The queue of a subscription group. Default: `<topic>.<group>`.
    public var groupQueue: @Sendable (_ topic: String, _ group: String) -> String = { "\($0).\($1)" }
    /// The queue of a command queue. Default: the queue name.
    public var commandQueue: @Sendable (_ queue: String) -> String = { $0 }
    /// The dead-letter queue of an origin. Default: ``DeliveryOrigin/defaultDeadLetterQueue``.
    public var deadLetterQueue: @Sendable (_ origin: DeliveryOrigin) -> String = { $0.defaultDeadLetterQueue }
    /// The delay queue for redeliveries to `queue` after `milliseconds`.
    public var delayQueue: @Sendable (_ queue: String, _ milliseconds: Int) -> String = { "\($0).delay.\($1)ms" }
    /// Queue type for group, command and dead-letter queues.
    public var queueType: AMQPSettings.QueueType = .classic

    /// The default convention.
    public init() {}

    /// The broker queue a delivery origin reads.
    public func queue(for origin: DeliveryOrigin) -> String {
        switch origin {
        case .topic(let topic, let group): groupQueue(topic, group)
        case .queue(let queue): commandQueue(queue)
        }
    }

    /// `delay` in milliseconds, rounded up to two significant digits (at least 1 ms).
    public static func delayBucket(_ delay: Duration) -> Int {
        // RabbitMQ takes a TTL of at most 2^32 − 1 ms (about 49 days).
        let exact = Int(min(max(1, delay.clampedMilliseconds), Int64(UInt32.max)))
        var scale = 1
        while exact / scale >= 100 { scale *= 10 }
        return (exact + scale - 1) / scale * scale
    }

    // MARK: Declarations (on the connection's thread)

    /// The arguments of every group, command and dead-letter queue Courier declares.
    public var queueArguments: [String: String] { ["x-queue-type": queueType.rawValue] }

    /// What reading `origin` declares on the broker (all durable), in order: for a group the
    /// fanout exchange, the group's queue and its binding; for a queue the queue. Dead-letter
    /// and delay queues come on first use (``deadLetterQueue``, ``delayQueue``).
    public func declarations(for origin: DeliveryOrigin) -> [String] {
        let arguments = queueArguments.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", ")
        var lines: [String] = []
        if case .topic(let topic, let group) = origin {
            lines.append("exchange \(exchange(topic)) (fanout, durable)")
            lines.append("queue \(groupQueue(topic, group)) (durable, \(arguments))")
            lines.append("binding \(exchange(topic)) -> \(groupQueue(topic, group))")
        } else {
            lines.append("queue \(queue(for: origin)) (durable, \(arguments)), declared by senders and consumers")
        }
        lines.append("queue \(deadLetterQueue(origin)) (durable, \(arguments)), on the first dead letter")
        lines.append(
            "queue \(delayQueue(queue(for: origin), 0).replacingOccurrences(of: "0ms", with: "<ms>ms")) (durable, x-queue-type=classic, x-message-ttl=<ms>, x-dead-letter-exchange=\"\", x-dead-letter-routing-key=\(queue(for: origin)), x-expires=<ms>+300000), per nack delay, rounded up to 2 significant digits"
        )
        return lines
    }

    func declareExchange(_ name: String, on connection: AMQPConnection, channel: UInt16) throws(CourierError) {
        try connection.declareOnce("exchange:\(name)", channel: channel) { state throws(CourierError) in
            try connection.check(state.exchangeDeclare(channel, name: name, type: "fanout"), "declaring exchange \(name)")
        }
    }

    func declareQueue(_ name: String, on connection: AMQPConnection, channel: UInt16) throws(CourierError) {
        try connection.declareOnce("queue:\(name)", channel: channel) { state throws(CourierError) in
            let arguments = queueArguments.sorted { $0.key < $1.key }.map { ($0.key, AMQPCodec.Argument.string($0.value)) }
            try declare(queue: name, arguments: arguments, state: state, connection: connection, channel: channel)
        }
    }

    func declareGroup(topic: String, group: String, on connection: AMQPConnection, channel: UInt16) throws(CourierError) {
        let exchangeName = exchange(topic)
        let queueName = groupQueue(topic, group)
        try declareExchange(exchangeName, on: connection, channel: channel)
        try declareQueue(queueName, on: connection, channel: channel)
        try connection.declareOnce("binding:\(queueName)<-\(exchangeName)", channel: channel) { state throws(CourierError) in
            try connection.check(
                state.queueBind(channel, queue: queueName, exchange: exchangeName), "binding queue \(queueName) to exchange \(exchangeName)"
            )
        }
    }

    /// Declared on every use: redeclaring restarts the queue's `x-expires` clock, so a delay
    /// queue never expires while it still holds messages.
    func declareDelayQueue(_ name: String, target: String, milliseconds: Int, on connection: AMQPConnection) throws(CourierError) {
        try connection.declareNow { state throws(CourierError) in
            try declare(
                queue: name,
                arguments: [
                    ("x-queue-type", .string("classic")),
                    ("x-message-ttl", .int(Int64(milliseconds))),
                    ("x-dead-letter-exchange", .string("")),
                    ("x-dead-letter-routing-key", .string(target)),
                    ("x-expires", .int(Int64(milliseconds) + 300_000)),
                ],
                state: state, connection: connection, channel: AMQPConnection.publishChannel
            )
        }
    }

    private func declare(
        queue name: String, arguments: [(String, AMQPCodec.Argument)], state: AMQPClient, connection: AMQPConnection,
        channel: UInt16
    ) throws(CourierError) {
        try connection.check(state.queueDeclare(channel, name: name, arguments: arguments), "declaring queue \(name)")
    }
}
