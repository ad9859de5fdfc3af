import CRabbitMQ
import Courier
import DequeModule
import Foundation
import Synchronization

/// One subscription or queue consumer: a channel of the consuming connection with
/// `basic.qos` prefetch and `basic.consume`, feeding a ``Subscription``.
///
/// Deliveries with the same key are handed out one at a time (the next waits for the previous
/// one's settlement), which with a single consumer per queue gives per-key order.
/// Delivery tags carry the channel's generation in their top 16 bits (``RabbitMQConsumerState``): after a reconnect the
/// broker redelivers what was not acked, and settling a delivery of the lost connection is a
/// harmless no-op.
final class RabbitMQConsumer: DeliverySource, DeliverySettler, AMQPChannelOwner {
    let origin: DeliveryOrigin
    let options: SubscriptionOptions
    private unowned let transport: RabbitMQTransport
    private let state: Mutex<State>

    private typealias Machine = RabbitMQConsumerState<Delivery>
    private typealias Waiter = Waiters<Delivery?, Void>.Waiter

    /// The state machine and the waiting `next()` calls, under one lock.
    private struct State: Sendable {
        var machine: Machine
        var waiters = Waiters<Delivery?, Void>()
        /// Acks not yet handed to the connection's thread, and whether a flush is scheduled:
        /// one command carries many acks.
        var pendingAcks: [(channel: UInt16, tag: UInt64, generation: UInt64)] = []
        var flushScheduled = false

        init(ordered: Bool) {
            machine = Machine(ordered: ordered) { $0.envelope.key }
        }

        mutating func serve() -> [(Waiter, Delivery)] {
            var served: [(Waiter, Delivery)] = []
            while !waiters.isEmpty, let delivery = machine.next() {
                served.append((waiters.popFirst()!, delivery))
            }
            return served
        }
    }

    /// `ordered` false hands out messages without waiting for earlier ones of their key to
    /// be settled: for browsing, which settles nothing.
    init(transport: RabbitMQTransport, origin: DeliveryOrigin, options: SubscriptionOptions, ordered: Bool = true) {
        self.transport = transport
        self.origin = origin
        self.options = options
        self.state = Mutex(State(ordered: ordered))
    }

    // MARK: AMQPChannelOwner (on the consuming connection's thread)

    func open(_ connection: AMQPConnection, channel: UInt16, generation: UInt64) throws(CourierError) {
        guard let amqp = connection.connectionState else { throw connection.lost("not connected") }
        let topology = transport.configuration.topology
        switch origin {
        case .topic(let topic, let group):
            try topology.declareGroup(topic: topic, group: group, on: connection, channel: channel)
        case .queue(let queue):
            try topology.declareQueue(topology.commandQueue(queue), on: connection, channel: channel)
        }
        try connection.check(amqp.qos(channel, prefetch: options.prefetch), "setting prefetch on \(origin)")
        try connection.check(amqp.consume(channel, queue: topology.queue(for: origin)), "consuming \(origin)")
        state.withLock { $0.machine.opened(channel: channel, connectionGeneration: generation) }
    }

    func deliver(_ raw: RawDelivery, generation: UInt64) {
        var (envelope, attempt) = WireFormat.envelope(
            headers: raw.headers,
            payload: raw.body,
            fallbackID: raw.messageID,
            fallbackTime: raw.timestamp.map { Date(timeIntervalSince1970: TimeInterval($0)) },
            ignoring: RabbitMQTransport.ignoredBrokerHeaders
        )
        // A quorum queue counts the deliveries that came back unsettled (a consumer that
        // crashed or lost its connection while handling): each is an attempt too, so a
        // message that keeps killing its consumer runs out of attempts like one that keeps
        // failing (RabbitMQ's delivery limit, mapped onto Courier's attempts).
        if let returned = raw.headers["x-delivery-count"].flatMap(Int.init), returned > 0 {
            attempt += returned
        }
        let served = state.withLock { state -> [(Waiter, Delivery)] in
            let tag = state.machine.deliver(deliveryTag: raw.deliveryTag, envelope: envelope, attempt: attempt) { tag in
                Delivery(envelope: envelope, attempt: attempt, origin: origin, tag: tag, settler: self)
            }
            return tag == nil ? [] : state.serve()
        }
        for (waiter, delivery) in served { waiter.resume(returning: delivery) }
    }

    func channelLost(_ error: CourierError, final: Bool) {
        let (ended, failure) = state.withLock { state -> ([Waiter], CourierError?) in
            state.machine.channelLost(error, final: final) { $0.tag }
            return (final ? state.waiters.removeAll() : [], state.machine.failure)
        }
        for waiter in ended {
            if let failure { waiter.resume(throwing: failure) } else { waiter.resume(returning: nil) }
        }
    }

    // MARK: DeliverySource

    func next() async throws -> Delivery? {
        try await Waiters.wait(in: state, \.waiters, cancelled: .success(nil)) { state in
            if let delivery = state.machine.next() { return .success(delivery) }
            if state.machine.closed { return state.machine.failure.map { .failure($0) } ?? .success(nil) }
            return nil
        }
    }

    func close() async {
        let (ended, channel) = state.withLock { state -> ([Waiter], UInt16) in
            guard let channel = state.machine.close() else { return ([], 0) }
            return (state.waiters.removeAll(), channel)
        }
        for waiter in ended { waiter.resume(returning: nil) }
        guard channel != 0 else { return }
        // Closing the channel hands every un-acked delivery back to the broker.
        try? await transport.consumer.perform { connection throws(CourierError) in connection.detach(channel) }
        transport.forget(self)
    }

    // MARK: DeliverySettler

    /// Settles `tag` and serves the waiters; throws `deliveryAlreadySettled` for a tag
    /// settled before (or returned by `close`).
    private func settle(_ tag: UInt64) throws(CourierError) -> Machine.Settlement {
        let (settlement, served) = state.withLock { state -> (Machine.Settlement?, [(Waiter, Delivery)]) in
            let settlement = state.machine.settle(tag)
            guard case .current = settlement else { return (settlement, []) }
            return (settlement, state.serve())
        }
        for (waiter, delivery) in served { waiter.resume(returning: delivery) }
        guard let settlement else { throw CourierError.alreadySettled(deliveryTag: tag & Machine.tagMask) }
        return settlement
    }

    /// What `tag` holds (`nil`: a delivery of a lost channel); throws for a settled tag.
    private func peek(_ tag: UInt64) throws(CourierError) -> Machine.Outstanding? {
        guard let found = state.withLock({ $0.machine.peek(tag) }) else {
            throw CourierError.alreadySettled(deliveryTag: tag & Machine.tagMask)
        }
        return found
    }

    func ack(tag: UInt64) async throws {
        guard case .current(_, let channel, let generation) = try settle(tag) else { return }
        let schedule = state.withLock { state in
            state.pendingAcks.append((channel, tag & Machine.tagMask, generation))
            defer { state.flushScheduled = true }
            return !state.flushScheduled
        }
        guard schedule else { return }
        transport.consumer.submit { [self] connection in
            let acks = state.withLock { state in
                state.flushScheduled = false
                defer { state.pendingAcks.removeAll(keepingCapacity: true) }
                return state.pendingAcks
            }
            for ack in acks { connection.ack(channel: ack.channel, tag: ack.tag, generation: ack.generation) }
        }
    }

    func nack(tag: UInt64, delay: Duration) async throws {
        // A delivery of a lost channel comes again from the broker: nothing to do.
        guard let outstanding = try peek(tag) else { return }
        if outstanding.attempt >= options.maxDeliveryAttempts {
            try await deadLetter(
                tag: tag, reason: "delivery attempts exhausted: \(outstanding.attempt) of \(options.maxDeliveryAttempts)", headers: [:])
            return
        }
        // The copy is confirmed before the original is acked: a crash in between duplicates,
        // never loses.
        try await transport.redeliver(outstanding.envelope, attempt: outstanding.attempt + 1, origin: origin, delay: delay)
        try await ack(tag: tag)
    }

    func deadLetter(tag: UInt64, reason: String, headers: [String: String]) async throws {
        guard let outstanding = try peek(tag) else { return }
        try await transport.deadLetter(
            outstanding.envelope, reason: reason, origin: origin, attempts: outstanding.attempt, headers: headers)
        try await ack(tag: tag)
    }
}

/// The subscriptions of a transport, for shutdown.
final class ConsumerRegistry: Sendable {
    private let members = Mutex<[ObjectIdentifier: RabbitMQConsumer]>([:])
    func insert(_ consumer: RabbitMQConsumer) { members.withLock { $0[ObjectIdentifier(consumer)] = consumer } }
    func remove(_ consumer: RabbitMQConsumer) { _ = members.withLock { $0.removeValue(forKey: ObjectIdentifier(consumer)) } }
    func all() -> [RabbitMQConsumer] { members.withLock { Array($0.values) } }
}

/// A flag set once.
final class LockedFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    var isSet: Bool { flag.load(ordering: .acquiring) }
    /// Sets the flag; false if it was already set.
    func set() -> Bool { !flag.exchange(true, ordering: .acquiringAndReleasing) }
}
