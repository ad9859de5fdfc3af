import DequeModule
import Foundation
import Synchronization

/// Deliveries a consumer took from its queue ahead of being asked, at most `limit` (see
/// ``InMemoryConsumer``).
final class DeliveryBuffer: Sendable {
    let deliveries = Mutex(Deque<Delivery>())
    let limit: Int

    init(limit: Int) {
        self.limit = limit
    }
}

/// A message held by an in-memory queue, with its delivery attempt.
struct StoredMessage: Sendable {
    var envelope: Envelope
    var attempt: Int
}

/// One queue of the in-memory broker: a command queue, a dead-letter queue, or a topic's
/// subscription group. Consumers pull from it (a consumer that finds it empty waits), so
/// competing consumers share its messages, and a message stays "held" from enqueue until
/// it is acked or moved to a dead-letter queue: that count is what the capacity bounds.
///
/// Per-key order (when the broker is `ordered`, see ``KeyOrderGate``): a key whose message is in flight is *busy*; later messages
/// of that key are parked behind it and come back, in order, when it is settled. A nacked
/// or returned message goes back to the front, so it is redelivered before its key's later
/// messages.
final class InMemoryQueue: DeliverySettler {
    let origin: DeliveryOrigin
    let capacity: Int
    let byteCapacity: Int
    let rejectWhenFull: Bool
    /// Resume waiting publishers once the queue has drained to this many messages, so that a
    /// publisher at capacity wakes once per batch, not once per message.
    private let lowWater: Int
    private let lowWaterBytes: Int
    private unowned let broker: InMemoryBroker
    private let state: Mutex<State>

    init(origin: DeliveryOrigin, broker: InMemoryBroker) {
        self.origin = origin
        self.broker = broker
        let configuration = broker.configuration
        self.capacity = configuration.queueCapacity
        self.rejectWhenFull = configuration.overflow == .reject
        self.byteCapacity = configuration.queueByteCapacity
        self.lowWater = max(0, capacity - max(1, capacity / 4))
        self.lowWaterBytes = max(0, byteCapacity - max(1, byteCapacity / 4))
        self.state = Mutex(State(ordered: configuration.ordered))
    }

    private struct InFlight {
        var message: StoredMessage
        var consumer: Int
        var maxAttempts: Int
    }

    private struct Consumer {
        var prefetch: Int
        var maxAttempts: Int
        var inFlight = 0
    }

    /// A waiting consumer, tagged with its consumer id.
    private typealias ConsumerWaiter = Waiters<Delivery?, Int>.Waiter

    /// A consumer to resume, outside the lock, with what it waited for.
    private struct Wake {
        let waiter: ConsumerWaiter
        let delivery: Delivery?
        func resume() { waiter.resume(returning: delivery) }
    }

    private struct State {
        var waiting: KeyOrderGate<StoredMessage>
        var unacked: [UInt64: InFlight] = [:]
        var held = 0
        /// Payload bytes of the held messages.
        var heldBytes = 0
        var nextTag: UInt64 = 1
        var nextID = 1
        var consumers: [Int: Consumer] = [:]
        var consumerWaiters = Waiters<Delivery?, Int>()
        var publisherWaiters = Waiters<Void, Void>()
        var timers: [Int: Task<Void, Never>] = [:]
        var closed = false

        init(ordered: Bool) {
            waiting = KeyOrderGate(ordered: ordered) { $0.envelope.key }
        }

        mutating func makeID() -> Int {
            defer { nextID += 1 }
            return nextID
        }

        mutating func take(for consumerID: Int, queue: InMemoryQueue) -> Delivery? {
            guard let consumer = consumers[consumerID], consumer.inFlight < consumer.prefetch,
                let message = waiting.next()
            else { return nil }
            let tag = nextTag
            nextTag += 1
            unacked[tag] = InFlight(message: message, consumer: consumerID, maxAttempts: consumer.maxAttempts)
            consumers[consumerID]!.inFlight += 1
            return Delivery(envelope: message.envelope, attempt: message.attempt, origin: queue.origin, tag: tag, settler: queue)
        }

        /// Hands one available message to the first waiting consumer that may take it.
        mutating func serveOne(queue: InMemoryQueue) -> Wake? {
            guard !consumerWaiters.isEmpty, !waiting.isEmpty else { return nil }
            let consumers = self.consumers
            let ready = consumerWaiters.popFirst { consumers[$0].map { $0.inFlight < $0.prefetch } ?? false }
            guard let waiter = ready else { return nil }
            guard let delivery = take(for: waiter.tag, queue: queue) else {
                consumerWaiters.putBack(waiter)
                return nil
            }
            return Wake(waiter: waiter, delivery: delivery)
        }

        mutating func serveAll(queue: InMemoryQueue) -> [Wake] {
            var wakes: [Wake] = []
            while let wake = serveOne(queue: queue) { wakes.append(wake) }
            return wakes
        }

        /// Whether a message of `size` payload bytes fits: under both bounds, or the queue is
        /// empty (one message always fits, however large).
        func hasRoom(for size: Int, capacity: Int, byteCapacity: Int) -> Bool {
            held == 0 || (held < capacity && heldBytes + size <= byteCapacity)
        }

        /// Stores `message` as waiting, counted against both bounds.
        mutating func store(_ message: StoredMessage) {
            waiting.append(message)
            held += 1
            heldBytes += message.envelope.payload.count
        }

        mutating func release(_ message: StoredMessage) {
            held -= 1
            heldBytes -= message.envelope.payload.count
        }

        mutating func publishersToWake(lowWater: Int, lowWaterBytes: Int) -> [Waiters<Void, Void>.Waiter] {
            guard !publisherWaiters.isEmpty, held <= lowWater, heldBytes <= lowWaterBytes else { return [] }
            return publisherWaiters.removeAll()
        }
    }

    // MARK: Producing

    /// Stores a message, waiting for space (back-pressure) or throwing when full, as configured.
    func enqueue(_ message: StoredMessage) async throws {
        while true {
            enum Outcome { case stored(Wake?), full, closed }
            let outcome: Outcome = state.withLock { state in
                if state.closed { return .closed }
                if !state.hasRoom(for: message.envelope.payload.count, capacity: capacity, byteCapacity: byteCapacity) { return .full }
                state.store(message)
                return .stored(state.serveOne(queue: self))
            }
            switch outcome {
            case .stored(let wake):
                wake?.resume()
                return
            case .closed:
                throw CourierError.transportClosed("storing a message in \(origin)")
            case .full:
                if rejectWhenFull {
                    throw CourierError(
                        .queueFull,
                        "\(origin) is full (capacity \(capacity) messages or \(byteCapacity) payload bytes; it holds \(count) messages); consume faster, raise queueCapacity or queueByteCapacity (memory:// options capacity and capacity_bytes), or choose the back-pressure overflow policy",
                        isRetriable: true
                    )
                }
                try await waitForSpace(size: message.envelope.payload.count)
            }
        }
    }

    private func waitForSpace(size: Int) async throws {
        try await Waiters.wait(in: state, \.publisherWaiters, cancelled: .failure(CancellationError())) { state in
            if state.closed { return .failure(CourierError.transportClosed("waiting for space in \(origin)")) }
            return state.hasRoom(for: size, capacity: capacity, byteCapacity: byteCapacity) ? .success(()) : nil
        }
    }

    // MARK: Consuming

    func addConsumer(_ options: SubscriptionOptions) throws -> Int {
        try state.withLock { state in
            if state.closed { throw CourierError.transportClosed("consuming \(origin)") }
            let id = state.makeID()
            state.consumers[id] = Consumer(prefetch: options.prefetch, maxAttempts: options.maxDeliveryAttempts)
            return id
        }
    }

    /// The next delivery for `consumer`, waiting when none can go. Under the same lock,
    /// further deliveries that can go now are taken into `buffer`, up to its limit (they count
    /// against the consumer's prefetch like any other in flight), so that a consumer keeping up
    /// takes the queue's lock once per batch instead of once per message.
    func next(consumer: Int, takingAheadInto buffer: DeliveryBuffer) async -> Delivery? {
        // Never throws: nothing here fails, and a cancelled wait ends with nil.
        let delivery = try? await Waiters.wait(in: state, \.consumerWaiters, tag: consumer, cancelled: .success(nil)) { state in
            guard state.consumers[consumer] != nil else { return .success(nil) }
            guard let first = state.take(for: consumer, queue: self) else { return nil }
            buffer.deliveries.withLock { taken in
                while taken.count < buffer.limit, let next = state.take(for: consumer, queue: self) { taken.append(next) }
            }
            return .success(first)
        }
        return delivery ?? nil
    }

    /// Removes a consumer: its waits end, and its un-acked messages go back to the front, in
    /// their original order, for the other consumers.
    func removeConsumer(_ consumer: Int) {
        let (ended, wakes): ([ConsumerWaiter], [Wake]) = state.withLock { state in
            guard state.consumers.removeValue(forKey: consumer) != nil else { return ([], []) }
            let returned = state.unacked.filter { $0.value.consumer == consumer }.sorted { $0.key > $1.key }
            for (tag, inFlight) in returned {
                state.unacked.removeValue(forKey: tag)
                state.waiting.returnToFront(inFlight.message)
            }
            let ended = state.consumerWaiters.removeAll { $0 == consumer }
            return (ended, state.serveAll(queue: self))
        }
        for waiter in ended { waiter.resume(returning: nil) }
        for wake in wakes { wake.resume() }
    }

    // MARK: Settling

    func ack(tag: UInt64) throws {
        let (publishers, wakes): ([Waiters<Void, Void>.Waiter], [Wake]) = try state.withLock { state in
            guard let inFlight = state.unacked.removeValue(forKey: tag) else { throw CourierError.alreadySettled(deliveryTag: tag) }
            state.consumers[inFlight.consumer]?.inFlight -= 1
            state.release(inFlight.message)
            state.waiting.release(key: inFlight.message.envelope.key)
            let publishers = state.publishersToWake(lowWater: lowWater, lowWaterBytes: lowWaterBytes)
            return (publishers, state.consumerWaiters.isEmpty ? [] : state.serveAll(queue: self))
        }
        for publisher in publishers { publisher.resume() }
        for wake in wakes { wake.resume() }
    }

    func nack(tag: UInt64, delay: Duration) async throws {
        enum Outcome { case requeued([Wake]), delayed, exhausted(InFlight) }
        let outcome: Outcome = try state.withLock { state in
            guard let inFlight = state.unacked.removeValue(forKey: tag) else { throw CourierError.alreadySettled(deliveryTag: tag) }
            state.consumers[inFlight.consumer]?.inFlight -= 1
            if inFlight.message.attempt >= inFlight.maxAttempts { return .exhausted(inFlight) }
            var message = inFlight.message
            message.attempt += 1
            if delay <= .zero {
                state.waiting.returnToFront(message)
                return .requeued(state.serveAll(queue: self))
            }
            // The key stays busy during the delay, so its later messages wait behind this one.
            let timer = state.makeID()
            state.timers[timer] = Task { [self] in
                try? await Task.sleep(for: delay)
                self.redeliver(message, timer: timer)
            }
            return .delayed
        }
        switch outcome {
        case .requeued(let wakes):
            for wake in wakes { wake.resume() }
        case .delayed:
            break
        case .exhausted(let inFlight):
            try await moveToDeadLetters(
                inFlight.message,
                reason: "delivery attempts exhausted: \(inFlight.message.attempt) of \(inFlight.maxAttempts)"
            )
        }
    }

    private func redeliver(_ message: StoredMessage, timer: Int) {
        let wakes: [Wake] = state.withLock { state in
            guard state.timers.removeValue(forKey: timer) != nil, !state.closed else { return [] }
            state.waiting.returnToFront(message)
            return state.serveAll(queue: self)
        }
        for wake in wakes { wake.resume() }
    }

    func deadLetter(tag: UInt64, reason: String, headers: [String: String]) async throws {
        let message: StoredMessage = try state.withLock { state in
            guard let inFlight = state.unacked.removeValue(forKey: tag) else { throw CourierError.alreadySettled(deliveryTag: tag) }
            state.consumers[inFlight.consumer]?.inFlight -= 1
            return inFlight.message
        }
        try await moveToDeadLetters(message, reason: reason, headers: headers)
    }

    /// Stores the message in the dead-letter queue first, then drops it here: if the
    /// dead-letter queue refuses it, the message is returned for redelivery, never lost.
    private func moveToDeadLetters(_ message: StoredMessage, reason: String, headers: [String: String] = [:]) async throws {
        let envelope = WireFormat.deadLetter(message.envelope, reason: reason, origin: origin, attempts: message.attempt, extra: headers)
        do {
            let deadLetters = try broker.queue(named: origin.defaultDeadLetterQueue)
            try await deadLetters.enqueue(StoredMessage(envelope: envelope, attempt: 1))
        } catch {
            let wakes: [Wake] = state.withLock { state in
                state.waiting.returnToFront(message)
                return state.serveAll(queue: self)
            }
            for wake in wakes { wake.resume() }
            throw error
        }
        let (publishers, wakes): ([Waiters<Void, Void>.Waiter], [Wake]) = state.withLock { state in
            state.release(message)
            state.waiting.release(key: message.envelope.key)
            return (state.publishersToWake(lowWater: lowWater, lowWaterBytes: lowWaterBytes), state.serveAll(queue: self))
        }
        for publisher in publishers { publisher.resume() }
        for wake in wakes { wake.resume() }
    }

    // MARK: Replay and shutdown

    /// Up to `limit` messages the queue holds, without taking them: those in flight (by
    /// delivery order) first, then the waiting ones.
    func snapshot(limit: Int) -> [Envelope] {
        state.withLock { state in
            let inFlight = state.unacked.sorted { $0.key < $1.key }.map(\.value.message.envelope)
            return Array((inFlight + state.waiting.elements.map(\.envelope)).prefix(limit))
        }
    }

    /// Replaces the waiting messages with `messages` (a rewind); in-flight ones stay in flight.
    func replace(with messages: [StoredMessage]) {
        let wakes: [Wake] = state.withLock { state in
            for message in state.waiting.removeAll(forgetInFlight: false) { state.release(message) }
            for message in messages { state.store(message) }
            return state.serveAll(queue: self)
        }
        for wake in wakes { wake.resume() }
    }

    /// How many messages the queue holds (waiting, delayed and in flight).
    var count: Int { state.withLock { $0.held } }

    /// Ends every wait and timer; further operations throw ``CourierError/Code/transportClosed``.
    func close() {
        let (consumers, publishers, timers) = state.withLock { state in
            state.closed = true
            state.consumers.removeAll()
            defer { state.timers.removeAll() }
            return (state.consumerWaiters.removeAll(), state.publisherWaiters.removeAll(), Array(state.timers.values))
        }
        for waiter in consumers { waiter.resume(returning: nil) }
        for publisher in publishers { publisher.resume(throwing: CourierError.transportClosed("waiting for space in \(origin)")) }
        for timer in timers { timer.cancel() }
    }
}
