import Courier
import Crdkafka
import DequeModule
import Foundation
import Logging
import Synchronization

/// One member of a Kafka consumer group: a librdkafka consumer driven by a thread of its own,
/// shared by every ``Subscription`` of one transport to the same group or queue (they compete
/// for its deliveries, as members of a group do).
///
/// The bookkeeping — buffer, hand-outs, offsets, the phases of a rebalance — is
/// ``KafkaMemberState``; this class makes the librdkafka calls it asks for, on its thread:
///
/// - Fetching is decoupled from handing out: the thread pulls messages into the buffer while
///   it is below ``KafkaTransport/Configuration/bufferedMessages`` and
///   ``KafkaTransport/Configuration/bufferedBytes``; it pauses the partitions only when the
///   buffer is full (back-pressure) and resumes at half. Subscriptions take from the buffer
///   without waiting for a fetch; per-key order is kept by ``KeyOrderGate``.
/// - Commits go out every `commitInterval`, on revoke and on close: the lowest unsettled
///   offset per partition.
/// - On revoke: buffered messages of the revoked partitions are dropped, the thread waits up
///   to ``KafkaTransport/Configuration/revokeTimeout`` for their in-flight deliveries to be
///   settled, commits synchronously, then gives the partitions up. With the cooperative-sticky
///   assignor (`rdkafka.partition.assignment.strategy=cooperative-sticky`; the default stays
///   `range,roundrobin` for rolling upgrades) only the partitions that move are revoked.
/// - On assign, a partition with no committed offset starts at the group's start position,
///   and that offset is committed at once, so the group exists durably.
final class KafkaGroupMember: @unchecked Sendable {
    typealias Position = KafkaMemberState.Position
    typealias Pending = KafkaMemberState.Pending

    let origin: DeliveryOrigin
    let topic: String
    /// The retry topic read beside `topic`, when nacks republish (``KafkaSettings/retryTopics``).
    let retryTopic: String?
    let groupID: String
    let options: SubscriptionOptions
    private let startPosition: StartPosition
    private let commitInterval: Duration
    private let timeout: Duration
    private let revokeTimeout: Duration
    private let bufferedMessages: Int
    private let deadLetterTopic: String
    private let producer: KafkaProducer
    let logger: Logger
    private let onClosed: @Sendable (KafkaGroupMember) -> Void

    // Thread-confined: touched only on the member's thread (and in init).
    private var client: RDKafkaClient!
    /// The consumer queue: messages and rebalance events. Woken from other threads (under
    /// the state lock, while it exists: see ``wake()``).
    private var queue: RDKafkaQueue!
    /// Where the results of this member's commits arrive, each tagged with the rebalance
    /// round it was sent in (a refusal from an earlier round says nothing about this one).
    private var commitResults: RDKafkaQueue!
    private var round = 1
    private var lastCommit = ContinuousClock.now
    private var lastLagCheck = ContinuousClock.now
    private let started = ContinuousClock.now
    private var arrived: [(pending: Pending, timestamp: Int64)] = []
    private let joinTimeout: Duration

    private let state: Mutex<Shared>

    /// The header carrying when a message republished to the retry topic is due (ms since 1970).
    static let retryAtHeader = "ce_courierretryat"

    private typealias Waiter = Waiters<Delivery?, KafkaSubscription>.Waiter

    /// The state machine and the waiters around it, under one lock.
    private struct Shared {
        var machine: KafkaMemberState
        var waiters = Waiters<Delivery?, KafkaSubscription>()
        var subscriptions: [Int: Int] = [:]
        var nextSubscription = 0
        /// Subscriptions waiting for the first assignment: resumed with `nil`, or the failure.
        var joinWaiters = Waiters<CourierError?, Void>()
        var closeWaiters = Waiters<Void, Void>()
        var failure: CourierError?
        var recommit = false
        /// A commit met a rebalance: no periodic commits until the next rebalance callback.
        var commitsSuspended = false
        /// The thread has destroyed the queues: nothing may wake them any more.
        var queuesDestroyed = false
        /// Messages beyond the member's position on its partitions, updated by the thread.
        var lag: Int?

        /// Hands what can go to the waiting subscriptions.
        mutating func serve() -> [(Waiter, Delivery)] {
            var served: [(Waiter, Delivery)] = []
            while let subscription = waiters.first?.tag, let delivery = handOut(to: subscription) {
                served.append((waiters.popFirst()!, delivery))
            }
            return served
        }

        mutating func handOut(to subscription: KafkaSubscription) -> Delivery? {
            guard let (tag, pending) = machine.handOut(to: subscription.id) else { return nil }
            let attempt = pending.attempt
            return Delivery(
                envelope: (consume pending).envelope, attempt: attempt, origin: subscription.origin, tag: tag, settler: subscription)
        }
    }

    init(
        origin: DeliveryOrigin,
        topic: String,
        groupID: String,
        options: SubscriptionOptions,
        startPosition: StartPosition,
        deadLetterTopic: String,
        retryTopic: String?,
        configuration: KafkaTransport.Configuration,
        producer: KafkaProducer,
        onClosed: @escaping @Sendable (KafkaGroupMember) -> Void
    ) throws(CourierError) {
        self.origin = origin
        self.topic = topic
        self.retryTopic = retryTopic
        self.groupID = groupID
        self.options = options
        self.startPosition = startPosition
        self.commitInterval = configuration.commitInterval
        self.timeout = configuration.operationTimeout
        self.revokeTimeout = configuration.revokeTimeout
        self.joinTimeout = configuration.joinTimeout
        self.bufferedMessages = max(1, configuration.bufferedMessages)
        self.deadLetterTopic = deadLetterTopic
        self.producer = producer
        self.onClosed = onClosed
        state = Mutex(
            Shared(
                machine: KafkaMemberState(
                    limits: .init(messages: max(1, configuration.bufferedMessages), bytes: max(1, configuration.bufferedBytes)))))
        var logger = configuration.logger
        logger[metadataKey: "kafka-group"] = "\(groupID)"
        self.logger = logger
        var properties = KafkaClient.properties(configuration.settings)
        let reset = startPosition == .latest ? "latest" : "earliest"
        properties.insert(
            contentsOf: [
                ("group.id", groupID),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", reset),
                ("enable.partition.eof", "false"),
                ("partition.assignment.strategy", "range,roundrobin"),
                ("allow.auto.create.topics", "false"),
            ], at: properties.count - configuration.settings.properties.count)
        // The handle lives no longer than the member: the thread holding `self` destroys it.
        client = try RDKafkaClient(.consumer, properties: properties, callbacks: .rebalances(self), logger: configuration.logger)
        client.pollSetConsumer()
        queue = client.consumerQueue()
        commitResults = client.newQueue()
        let error = client.subscribe(topics)
        if error != RD_KAFKA_RESP_ERR_NO_ERROR {
            destroyClient()
            throw KafkaClient.error(error, "subscribing to \(topic) as group \(groupID)")
        }
        let thread = Thread { [self] in run() }
        thread.name = "courier.kafka.consumer"
        thread.start()
    }

    /// The topics the member reads: the topic, and the retry topic if any.
    private var topics: [String] { [topic] + (retryTopic.map { [$0] } ?? []) }

    /// The position of `partition` of the topic named `name`.
    private func position(_ name: UnsafePointer<CChar>?, _ partition: Int32) -> Position {
        guard let retryTopic, let name else { return Position(topic: 0, partition: partition) }
        return Position(topic: String(cString: name) == retryTopic ? 1 : 0, partition: partition)
    }

    /// This member as a connection of the transport's health: `connected` once it has joined
    /// the group, `reconnecting` while it joins, `closed` when closed or failed (with why).
    func health() -> TransportHealth.Connection {
        state.withLock { state in
            let name = "group \(groupID)"
            if let failure = state.failure { return .init(name: name, state: .closed, lastError: failure.message, lag: state.lag) }
            if state.machine.isClosing { return .init(name: name, state: .closed, lag: state.lag) }
            if !state.machine.joined { return .init(name: name, state: .reconnecting, lastError: "joining the group", lag: state.lag) }
            return .init(name: name, state: .connected, lag: state.lag)
        }
    }

    /// What happened so far (pauses, revokes, late settlements).
    var counters: KafkaConsumerStatistics { state.withLock { $0.machine.counters } }

    // MARK: Subscriptions

    /// Adds a subscription, waiting until the member has joined the group and has its first
    /// assignment (so that whatever is published after this returns reaches the group).
    func attach(prefetch: Int) async throws(CourierError) -> KafkaSubscription {
        let id = try state.withLock { state throws(CourierError) -> Int in
            guard !state.machine.isClosing else {
                throw CourierError(.subscriptionClosed, "the consumer of \(origin) is closing; subscribe again")
            }
            state.nextSubscription += 1
            state.subscriptions[state.nextSubscription] = prefetch
            state.machine.limits.messages = max(bufferedMessages, state.subscriptions.values.reduce(0, +))
            return state.nextSubscription
        }
        let subscription = KafkaSubscription(member: self, id: id)
        // Not cancellable (as before): the join ends with the first assignment, a close or the join timeout.
        let failure = try? await Waiters.wait(in: state, \.joinWaiters, cancelled: nil) { state -> Result<CourierError?, any Error>? in
            if state.machine.joined { return .success(nil) }
            if state.machine.phase == .closed { return .success(state.failure ?? KafkaTransport.closedError) }
            return nil
        }
        if let failure {  // never throws: not cancellable, and the attempt never fails
            await detach(subscription)
            throw failure
        }
        return subscription
    }

    /// Removes a subscription: its unsettled deliveries go back to the front for the other
    /// subscriptions; the last one closes the member (leaving the group).
    func detach(_ subscription: KafkaSubscription) async {
        let (ended, served, last) = state.withLock { state -> ([Waiter], [(Waiter, Delivery)], Bool) in
            guard state.subscriptions.removeValue(forKey: subscription.id) != nil else { return ([], [], false) }
            state.machine.detach(subscription: subscription.id)
            let ended = state.waiters.removeAll { $0.id == subscription.id }
            let last = state.subscriptions.isEmpty
            if last { state.machine.beginClose() }
            return (ended, last ? [] : state.serve(), last)
        }
        for waiter in ended { waiter.resume(returning: nil) }
        resume(served)
        if last { await close() }
    }

    /// Leaves the group: commits what is settled, ends every waiter, and waits for the thread
    /// to destroy the consumer. Idempotent.
    func close() async {
        let ended = state.withLock { state -> [Waiter] in
            state.machine.beginClose()
            return state.waiters.removeAll()
        }
        for waiter in ended { waiter.resume(returning: nil) }
        wake()
        // Not cancellable (as before): returns once the member's thread has destroyed the consumer.
        _ = try? await Waiters.wait(in: state, \.closeWaiters, cancelled: nil) { state in
            state.machine.phase == .closed ? .success(()) : nil
        }
    }

    // MARK: Deliveries

    func next(for subscription: KafkaSubscription) async throws -> Delivery? {
        try await Waiters.wait(in: state, \.waiters, tag: subscription, cancelled: .success(nil)) { state in
            guard state.subscriptions[subscription.id] != nil, !state.machine.isClosing else {
                return state.failure.map { .failure($0) } ?? .success(nil)
            }
            return state.handOut(to: subscription).map { .success($0) }
        }
    }

    private func resume(_ served: [(Waiter, Delivery)]) {
        for (waiter, delivery) in served { waiter.resume(returning: delivery) }
    }

    /// Runs `change` on the state machine, serves the waiters, and wakes the paused thread
    /// when the buffer has room again.
    @discardableResult
    private func settling<T, E: Error>(_ change: (inout KafkaMemberState) throws(E) -> T) throws(E) -> T {
        let (result, served, wake) = try state.withLock { state throws(E) in
            let result = try change(&state.machine)
            return (result, state.waiters.isEmpty ? [] : state.serve(), state.machine.shouldResume)
        }
        resume(served)
        if wake { self.wake() }
        return result
    }

    /// Wakes the member's thread from its poll, unless it has finished.
    private func wake() {
        state.withLock { state in
            if !state.queuesDestroyed { queue.yield() }
        }
    }

    /// Destroys the queues, then the client (the order librdkafka requires).
    private func destroyClient() {
        state.withLock { $0.queuesDestroyed = true }
        queue.destroy()
        commitResults.destroy()
        client.destroy()
    }

    /// Settles `tag` (the hot path of every ack).
    func ack(tag: UInt64) throws(CourierError) {
        _ = try settling { machine throws(CourierError) in try machine.ack(tag) }
    }

    func nack(tag: UInt64, delay: Duration) async throws {
        guard let pending = try settling({ machine throws(CourierError) in try machine.begin(tag) }) else { return }
        guard pending.attempt < options.maxDeliveryAttempts else {
            try await deadLetter(
                pending, tag: tag, reason: "delivery attempts exhausted: \(pending.attempt) of \(options.maxDeliveryAttempts)", headers: [:]
            )
            return
        }
        if let retryTopic {
            try await republish(pending, tag: tag, to: retryTopic, delay: delay)
            return
        }
        var again = pending
        again.attempt += 1
        // The key stays in flight until the redelivery, so no later message of it overtakes.
        guard delay > .zero else {
            settling { $0.redeliver(tag, again) }
            return
        }
        settling { $0.hold(tag) }
        Task { [self] in
            try? await Task.sleep(for: delay)
            settling { $0.redeliver(tag, again) }
        }
    }

    /// Publishes a copy with attempt + 1, due after `delay`, to the retry topic, then settles
    /// the original; if the retry topic refuses it, the delivery stays unsettled.
    private func republish(_ pending: Pending, tag: UInt64, to retryTopic: String, delay: Duration) async throws {
        var copy = pending.envelope
        let due = Date().addingTimeInterval(Double(delay.components.seconds) + Double(delay.components.attoseconds) / 1e18)
        copy.headers[Self.retryAtHeader] = String(due.clampedMillisecondsSince1970)
        do {
            try await producer.produce([copy], to: retryTopic) { _ in pending.attempt + 1 }
        } catch {
            settling { $0.restore(tag) }
            throw error
        }
        settling { $0.complete(tag) }
    }

    func deadLetter(tag: UInt64, reason: String, headers: [String: String]) async throws {
        guard let pending = try settling({ machine throws(CourierError) in try machine.begin(tag) }) else { return }
        try await deadLetter(pending, tag: tag, reason: reason, headers: headers)
    }

    /// Publishes `pending` to the dead-letter topic, then settles it; if the dead-letter topic
    /// refuses it, the delivery stays unsettled (it can be settled again) and the error is thrown.
    private func deadLetter(_ pending: Pending, tag: UInt64, reason: String, headers: [String: String]) async throws {
        let letter = WireFormat.deadLetter(pending.envelope, reason: reason, origin: origin, attempts: pending.attempt, extra: headers)
        do {
            try await producer.ensureTopic(deadLetterTopic, timeout: timeout)
            try await producer.produce([letter], to: deadLetterTopic)
        } catch {
            settling { $0.restore(tag) }
            throw error
        }
        settling { $0.complete(tag) }
    }

    // MARK: The member's thread

    private func run() {
        var messages = [UnsafeMutablePointer<rd_kafka_message_t>?](repeating: nil, count: 1024)
        while true {
            let (closing, flow, capacity, recommit, suspended) = state.withLock { state in
                let (flow, capacity) = state.machine.flow()
                let recommit = state.recommit && !state.commitsSuspended
                if recommit { state.recommit = false }
                if state.commitsSuspended { state.recommit = true }
                return (state.machine.isClosing, flow, capacity, recommit, state.commitsSuspended)
            }
            if closing { break }
            if !joinedInTime() { break }
            readCommitResults()
            switch flow {
            case .pause: setPaused(true)
            case .resume: setPaused(false)
            case .none: break
            }
            // While a rebalance holds commits, one is tried every second: an accepted one
            // ends the hold (a rebalance that leaves this member's partitions alone may not
            // call it back).
            if recommit || ContinuousClock.now - lastCommit >= (suspended ? .seconds(1) : commitInterval) {
                commit(state.withLock { $0.machine.commits(force: recommit || suspended) }, wait: nil)
            }
            if ContinuousClock.now - lastLagCheck >= .seconds(1) {
                lastLagCheck = .now
                let lag = client.assignment().flatMap { client.lag(of: $0) }
                state.withLock { $0.lag = lag }
            }
            let count = messages.withUnsafeMutableBufferPointer { buffer in
                // librdkafka returns when the batch is full or the timeout passes: a short
                // timeout bounds what a message waits for company when traffic is light. A
                // paused member only serves events (rebalances) until a settlement wakes it.
                queue.consumeBatch(milliseconds: capacity > 0 ? 5 : 100, into: buffer, capacity: capacity)
            }
            if count > 0 { receive(messages[0..<count]) }
        }
        commit(state.withLock { $0.machine.commits(force: true) }, wait: .seconds(5))
        client.consumerClose()
        destroyClient()
        let (waiters, joiners, failure) = state.withLock { state in
            state.machine.finishClose()
            return (state.closeWaiters.removeAll(), state.joinWaiters.removeAll(), state.failure)
        }
        onClosed(self)
        for joiner in joiners { joiner.resume(returning: failure ?? KafkaTransport.closedError) }
        for waiter in waiters { waiter.resume() }
    }

    /// False once the member has waited longer than the join timeout for its first assignment.
    private func joinedInTime() -> Bool {
        guard ContinuousClock.now - started > joinTimeout else { return true }
        return state.withLock { state in
            guard !state.machine.joined else { return true }
            state.failure = CourierError(
                .timeout,
                "joining consumer group \(groupID) for \(origin) took longer than \(joinTimeout); check that the group coordinator is reachable",
                isRetriable: true
            )
            state.machine.beginClose()
            return false
        }
    }

    /// Pauses or resumes every assigned partition (back-pressure).
    private func setPaused(_ pause: Bool) {
        guard let list = client.assignment() else { return }
        if pause { client.pause(list) } else { client.resume(list) }
        logger.debug(pause ? "buffer full: partitions paused" : "buffer at half: partitions resumed")
    }

    /// Converts a batch of polled messages and hands them to the subscriptions.
    private func receive(_ batch: ArraySlice<UnsafeMutablePointer<rd_kafka_message_t>?>) {
        // A buffer kept across batches: freeing a large one each time costs glibc a heap
        // consolidation.
        var arrived = self.arrived
        self.arrived = []
        defer {
            arrived.removeAll(keepingCapacity: true)
            self.arrived = arrived
        }
        for case let polled? in batch {
            let message = RDKafkaMessage(polled)
            defer { message.destroy() }
            // Consumer errors (a broker gone, a fetch failed) are transient: librdkafka retries.
            guard message.error == RD_KAFKA_RESP_ERR_NO_ERROR else { continue }
            var (pending, timestamp) = Self.pending(message)
            pending.position = position(message.topicName, message.partition)
            arrived.append((pending, timestamp))
        }
        let now = Date().clampedMillisecondsSince1970
        var notYetDue: [Pending] = []
        // Moved out back to front (no copy of each envelope): reversed first.
        arrived.reverse()
        let served = state.withLock { state -> [(Waiter, Delivery)] in
            while let item = arrived.popLast() {
                if case .later(let pending) = state.machine.arrive(item.pending, timestamp: item.timestamp, now: now) {
                    notYetDue.append(pending)
                }
            }
            return state.serve()
        }
        resume(served)
        // Retries wait in memory until due; their offsets stay uncommitted meanwhile, so a
        // member that stops first leaves them to the next.
        for pending in notYetDue {
            Task { [self] in
                let (wait, overflow) = pending.retryAt!.subtractingReportingOverflow(Date().clampedMillisecondsSince1970)
                try? await Task.sleep(for: .milliseconds(overflow ? 0 : max(0, wait)))
                settling { $0.release(pending) }
            }
        }
    }

    /// The envelope, attempt and position of a polled message.
    static func pending(_ message: RDKafkaMessage) -> (Pending, timestamp: Int64) {
        var received = WireFormat.Received()
        message.forEachHeader { name, value in received.add(name: name, value: value) }
        let payload = Array(message.payload)
        let key = message.key.map { String(decoding: $0, as: UTF8.self) }
        let timestamp = message.timestamp
        var (envelope, attempt) = received.envelope(
            payload: payload,
            fallbackTime: timestamp >= 0 ? Date(timeIntervalSince1970: TimeInterval(timestamp) / 1000) : nil,
            fallbackKey: key
        )
        let retryAt = envelope.headers.removeValue(forKey: retryAtHeader).flatMap { Int64($0) }
        let position = Position(topic: 0, partition: message.partition)
        return (Pending(envelope: envelope, attempt: attempt, position: position, offset: message.offset, retryAt: retryAt), timestamp)
    }

    /// Commits `offsets`; `wait` bounds how long to wait for the result (`nil`: do not wait;
    /// the result is read on a later turn of the thread). A commit still unanswered then
    /// completes in the background, so a broker outage never stalls the member's thread.
    /// Returns whether the broker accepted the commit, when waiting for it (`nil`: unknown).
    @discardableResult
    private func commit(_ offsets: [(Position, Int64)], wait: Duration?) -> Bool? {
        lastCommit = ContinuousClock.now
        let names = topics
        let list = PartitionList(capacity: max(1, offsets.count))
        for (position, offset) in offsets where offset >= 0 { list.add(names[position.topic], position.partition, offset: offset) }
        guard list.count > 0 else { return true }
        let error = client.commit(list, resultsTo: commitResults, tag: round)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
            state.withLock { $0.recommit = true }
            return false
        }
        guard let wait else { return nil }
        let deadline = ContinuousClock.now + wait
        while let result = commitResults.pollCommitResult(milliseconds: KafkaClient.milliseconds(max(.zero, deadline - .now))) {
            if let accepted = readCommitResult(result) { return accepted }
            if ContinuousClock.now >= deadline { break }
        }
        return nil
    }

    /// Reads the commit results that have arrived, without waiting.
    private func readCommitResults() {
        while let result = commitResults.pollCommitResult(milliseconds: 0) { readCommitResult(result) }
    }

    /// Takes in one commit result (and destroys the event): whether the broker accepted it, or
    /// `nil` when it belongs to an earlier rebalance round. Offsets the broker accepted are
    /// confirmed; a commit refused because the group is rebalancing suspends periodic commits
    /// and holds hand-outs until the rebalance callback; an accepted one ends that.
    @discardableResult
    private func readCommitResult(_ result: RDKafkaCommitResult) -> Bool? {
        let error = result.error
        guard result.tag == round else { return nil }
        guard error != RD_KAFKA_RESP_ERR_NO_ERROR, error != RD_KAFKA_RESP_ERR__NO_OFFSET else {
            if let list = result.offsets {
                let confirmed = list.elements.filter { $0.err == RD_KAFKA_RESP_ERR_NO_ERROR }.map {
                    (position($0.topic, $0.partition), $0.offset)
                }
                state.withLock { state in for (position, offset) in confirmed { state.machine.confirm(position, offset) } }
            }
            rebalanceEnded()
            return true
        }
        // librdkafka takes a commit refused for an old generation as a lost assignment; more
        // commits meanwhile would only make it so. The rebalance callback commits instead.
        let rebalancing =
            error == RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS || error == RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION
            || error == RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID
        logger.log(
            level: rebalancing ? .debug : .warning,
            rebalancing
                ? "an offset commit met a rebalance; committing on the rebalance callback" : "an offset commit failed; committing again",
            metadata: ["kafka-error": "\(result.text)"]
        )
        state.withLock { state in
            state.recommit = true
            if rebalancing {
                state.commitsSuspended = true
                state.machine.rebalanceStarted()
            }
        }
        return false
    }

    /// Periodic commits and hand-outs go on again: a rebalance callback came, or a commit was
    /// accepted.
    private func rebalanceEnded() {
        let served = state.withLock { state -> [(Waiter, Delivery)] in
            guard state.commitsSuspended || state.machine.rebalancing else { return [] }
            state.commitsSuspended = false
            state.machine.rebalanceEnded()
            return state.serve()
        }
        resume(served)
    }

    // MARK: Rebalance (on the member's thread, inside a poll)

    func assigned(_ list: PartitionList) {
        let began = ContinuousClock.now
        defer {
            logger.debug(
                "partitions assigned",
                metadata: [
                    "kafka-partitions": "\(list.elements.map { "\(String(cString: $0.topic))[\($0.partition)]" })",
                    "kafka-assign-duration": "\(ContinuousClock.now - began)",
                ]
            )
        }
        round += 1
        // A rebalance has just completed: the one moment the group surely takes commits for
        // what this member keeps (periodic ones may have been refused while it ran).
        let (pending, force) = state.withLock { state in
            let force = state.recommit || state.commitsSuspended
            state.recommit = false
            state.commitsSuspended = false
            return (state.machine.commits(force: force), force)
        }
        if force || !pending.isEmpty { commit(pending, wait: timeout) }
        rebalanceEnded()
        var starts: [Position: KafkaMemberState.Start] = [:]
        if list.count > 0 {
            let committedError = client.committed(list, timeout: timeout)
            var unresolved: [Position] = []
            for element in list.elements {
                let position = position(element.topic, element.partition)
                if committedError != RD_KAFKA_RESP_ERR_NO_ERROR || element.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                    // Unknown (the coordinator is busy): let librdkafka fetch the committed offset
                    // itself. Never guess a start here: that would overwrite the group's offsets.
                    starts[position] = .init(offset: RDKafkaClient.invalidOffset)
                } else if element.offset >= 0 {
                    starts[position] = .init(offset: element.offset)
                } else {
                    unresolved.append(position)
                }
            }
            if !unresolved.isEmpty {
                if state.withLock({ $0.machine.joined }) {
                    // Every partition gets a committed offset at the group's first assignment
                    // (below): none now means that commit was lost, and the start position
                    // decides where reading resumes.
                    logger.warning(
                        "the group has no committed offset for partitions it was assigned before; starting them at the start position",
                        metadata: ["kafka-partitions": "\(unresolved.sorted().map { "\(topics[$0.topic])[\($0.partition)]" })"])
                }
                for (position, start) in resolveStart(unresolved) {
                    starts[position] = .init(offset: start.offset, skipBefore: start.skipBefore)
                }
                // Commit the starting offsets now: from here on the group exists, and what is
                // published next is kept for it even if this member leaves before reading.
                let names = topics
                let commit = PartitionList(capacity: unresolved.count)
                for position in unresolved {
                    if let start = starts[position], start.offset >= 0 {
                        commit.add(names[position.topic], position.partition, offset: start.offset)
                    }
                }
                if commit.count > 0, case let error = client.commit(commit), error != RD_KAFKA_RESP_ERR_NO_ERROR {
                    logger.warning(
                        "committing the start offsets of newly assigned partitions failed; they are committed with the first acks",
                        metadata: ["kafka-error": "\(RDKafkaClient.describe(error))"])
                }
            }
            for index in 0..<list.count {
                let position = position(list.elements[index].topic, list.elements[index].partition)
                list.elements[index].offset = starts[position]?.offset ?? RDKafkaClient.invalidOffset
            }
        }
        let (joiners, paused) = state.withLock { state in
            state.machine.assign(starts)
            return (state.joinWaiters.removeAll(), state.machine.paused)
        }
        if client.isCooperative {
            if let error = client.incrementalAssign(list) {
                logger.warning("librdkafka refused an incremental assignment", metadata: ["kafka-error": "\(error)"])
            }
        } else {
            client.assign(list)
        }
        // A partition joining a paused member is paused too. Never resume a partition that is
        // not paused: librdkafka before 2.4 then restarts fetching from an older offset
        // (its issues #4637 and #4686), which delivered messages twice.
        if paused && list.count > 0 { client.pause(list) }
        for joiner in joiners { joiner.resume(returning: nil) }
    }

    /// Start offsets for partitions the group has never committed: the start position for the
    /// topic, the beginning for the retry topic (retries are never skipped).
    private func resolveStart(_ positions: [Position]) -> [Position: (offset: Int64, skipBefore: Int64?)] {
        let names = topics
        var starts: [Position: (offset: Int64, skipBefore: Int64?)] = [:]
        var watermarks: [Position: (low: Int64, high: Int64)] = [:]
        for position in positions {
            let (low, high, error) = client.watermarks(names[position.topic], position.partition, timeout: timeout)
            if error == RD_KAFKA_RESP_ERR_NO_ERROR { watermarks[position] = (low, high) }
        }
        var timed: [Position] = []
        for (position, marks) in watermarks {
            switch position.topic == 0 ? startPosition : .earliest {
            case .latest: starts[position] = (marks.high, nil)
            case .earliest: starts[position] = (marks.low, nil)
            case .timestamp: timed.append(position)
            }
        }
        if case .timestamp(let date) = startPosition, !timed.isEmpty {
            let cut = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
            let query = PartitionList(capacity: timed.count)
            for position in timed { query.add(names[position.topic], position.partition, offset: cut) }
            let error = client.offsetsForTimes(query, timeout: timeout)
            for element in query.elements {
                let position = Position(topic: 0, partition: element.partition)
                guard let marks = watermarks[position] else { continue }
                if error == RD_KAFKA_RESP_ERR_NO_ERROR && element.err == RD_KAFKA_RESP_ERR_NO_ERROR && element.offset >= 0 {
                    starts[position] = (element.offset, nil)
                } else if marks.high > marks.low {
                    // The broker found no message at or after the time, or cannot look it up
                    // (the mock cluster): read from the start and skip the older ones.
                    starts[position] = (marks.low, cut)
                } else {
                    starts[position] = (marks.high, nil)
                }
            }
        }
        return starts
    }

    /// Gives partitions up: drops what nobody has seen of them, waits up to the revoke timeout
    /// for their deliveries in flight to be settled, commits synchronously, then unassigns.
    func revoked(_ list: PartitionList) {
        let positions = Set(list.elements.map { position($0.topic, $0.partition) })
        let lost = client.assignmentLost
        let began = ContinuousClock.now
        round += 1
        let closing = state.withLock { state in
            state.machine.beginRevoke(positions)
            return state.machine.isClosing
        }
        if !lost && !closing {
            while ContinuousClock.now - began < revokeTimeout, !state.withLock({ $0.machine.revokeDrained }) {
                usleep(1_000)
            }
        }
        let (revoke, paused) = state.withLock { state in
            (state.machine.finishRevoke(positions, force: true), state.machine.paused)
        }
        let offsets = revoke.offsets
        // librdkafka keeps a partition's pause across an unassign and a new assign: resume what
        // was paused before giving it up, so that it is fetched when it comes back.
        if paused { client.resume(list) }
        // A lost assignment is committed too: the offsets cover only settled messages, so at
        // worst the broker refuses them or the new owner reads some again; nothing is skipped.
        let accepted = commit(offsets, wait: timeout)
        let counters = state.withLock { state in
            if accepted != true { state.machine.revokeCommitRefused(exposed: revoke.exposed) }
            return state.machine.counters
        }
        rebalanceEnded()
        if client.isCooperative {
            if let error = client.incrementalUnassign(list) {
                logger.warning("librdkafka refused an incremental unassignment", metadata: ["kafka-error": "\(error)"])
            }
        } else {
            client.assign(nil)
        }
        logger.debug(
            "partitions revoked",
            metadata: [
                "kafka-partitions": "\(positions.sorted().map { "\(topics[$0.topic])[\($0.partition)]" })",
                "kafka-lost": "\(lost)",
                "kafka-revoke-duration": "\(ContinuousClock.now - began)",
                "kafka-abandoned-total": "\(counters.abandonedOnRevoke)",
                "kafka-late-settlements-total": "\(counters.lateSettlements)",
            ]
        )
    }
}

/// One ``Subscription`` of a ``KafkaGroupMember``.
final class KafkaSubscription: DeliverySource, DeliverySettler {
    let member: KafkaGroupMember
    let id: Int

    init(member: KafkaGroupMember, id: Int) {
        self.member = member
        self.id = id
    }

    var origin: DeliveryOrigin { member.origin }

    func next() async throws -> Delivery? { try await member.next(for: self) }
    func close() async { await member.detach(self) }
    func ack(tag: UInt64) async throws { try member.ack(tag: tag) }
    func nack(tag: UInt64, delay: Duration) async throws { try await member.nack(tag: tag, delay: delay) }
    func deadLetter(tag: UInt64, reason: String, headers: [String: String]) async throws {
        try await member.deadLetter(tag: tag, reason: reason, headers: headers)
    }
}
