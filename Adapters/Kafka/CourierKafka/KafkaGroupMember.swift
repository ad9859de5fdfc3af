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
/// - Offsets: every message polled is in flight until settled. The committed offset of a
///   partition is the lowest unsettled offset (or the next one when all are settled), so a
///   commit never passes an un-acked message. Commits go out every `commitInterval`, on
///   revoke, and on close.
/// - Order: messages with the same key are handed out one at a time (``KeyOrderGate``); a
///   nacked message goes back to the front of its key after its delay, so per-key order holds
///   across nacks.
/// - Flow: when `prefetch` (summed over the subscriptions) messages are unsettled, the
///   assigned partitions are paused, and resumed at half of it.
/// - Rebalance: on revoke the acked offsets are committed and everything unsettled of the
///   revoked partitions is forgotten (settling it later is a no-op; the new owner gets it
///   again). On assign, a partition with no committed offset starts at the group's start
///   position, and that offset is committed at once, so the group exists durably.
final class KafkaGroupMember: @unchecked Sendable {
    let origin: DeliveryOrigin
    let topic: String
    /// The retry topic read beside `topic`, when nacks republish (``KafkaSettings/retryTopics``).
    let retryTopic: String?
    let groupID: String
    let options: SubscriptionOptions
    private let startPosition: StartPosition
    private let commitInterval: Duration
    private let timeout: Duration
    private let deadLetterTopic: String
    private let producer: KafkaProducer
    let logger: Logger
    private let onClosed: @Sendable (KafkaGroupMember) -> Void

    // Thread-confined: touched only on the member's thread (and in init).
    private var rk: OpaquePointer!
    private var queue: OpaquePointer!
    private var paused = false
    private var lastCommit = ContinuousClock.now
    private let started = ContinuousClock.now
    private var hasJoined = false
    private var arrived: [(position: Position, offset: Int64, timestamp: Int64, pending: Pending?)] = []
    private let joinTimeout: Duration

    private let state = Mutex(State())

    /// A partition of the topic (0) or of the retry topic (1).
    struct Position: Hashable, Sendable {
        var topic: Int
        var partition: Int32
    }

    /// The header carrying when a message republished to the retry topic is due (ms since 1970).
    static let retryAtHeader = "ce_courierretryat"

    /// A message polled and not yet settled, as it waits in the gate.
    struct Pending: Sendable {
        var envelope: Envelope
        var attempt: Int
        var position: Position
        var offset: Int64
        var epoch: UInt64
        /// For a message from the retry topic: when it is due (ms since 1970).
        var retryAt: Int64?
    }

    private struct Taken {
        var pending: Pending
        var subscription: Int
    }

    private struct Track {
        /// Offsets polled, in order, with whether each is settled.
        var inFlight = Deque<(offset: Int64, settled: Bool)>()
        /// The offset after the last one polled (or the start offset).
        var next: Int64
        var committed: Int64
        /// Messages older than this (ms since 1970) are skipped: a timestamp start the broker
        /// could not resolve.
        var skipBefore: Int64?

        var commitOffset: Int64 { inFlight.first?.offset ?? next }

        mutating func settle(_ offset: Int64) {
            var low = 0
            var high = inFlight.count
            while low < high {
                let middle = (low + high) / 2
                if inFlight[middle].offset < offset { low = middle + 1 } else { high = middle }
            }
            guard low < inFlight.count, inFlight[low].offset == offset else { return }
            inFlight[low].settled = true
            while let first = inFlight.first, first.settled { inFlight.removeFirst() }
        }
    }

    private struct Waiter {
        let id: Int
        let subscription: KafkaSubscription
        let continuation: UnsafeContinuation<Delivery?, any Error>
    }

    private struct State {
        var gate = KeyOrderGate<Pending> { $0.envelope.key }
        var taken: [UInt64: Taken] = [:]
        var nextTag: UInt64 = 0
        var tracks: [Position: Track] = [:]
        var epoch: UInt64 = 0
        var unsettled = 0
        var waiters = Deque<Waiter>()
        var cancelled = Set<Int>()
        var nextWaiter = 0
        var subscriptions: [Int: Int] = [:]
        var nextSubscription = 0
        var joined = false
        var joinWaiters: [UnsafeContinuation<CourierError?, Never>] = []
        var closing = false
        var closed = false
        var closeWaiters: [UnsafeContinuation<Void, Never>] = []
        var failure: CourierError?
        var recommit = false
        var pauseRequested = false

        var limit: Int { subscriptions.values.reduce(0, +) }

        mutating func serve() -> [(Waiter, Delivery)] {
            var served: [(Waiter, Delivery)] = []
            while !waiters.isEmpty, let pending = gate.next() {
                let waiter = waiters.removeFirst()
                served.append((waiter, hand(pending, to: waiter.subscription)))
            }
            return served
        }

        mutating func hand(_ pending: Pending, to subscription: KafkaSubscription) -> Delivery {
            nextTag += 1
            taken[nextTag] = Taken(pending: pending, subscription: subscription.id)
            return Delivery(envelope: pending.envelope, attempt: pending.attempt, origin: subscription.origin, tag: nextTag, settler: subscription)
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
        self.joinTimeout = configuration.joinTimeout
        self.deadLetterTopic = deadLetterTopic
        self.producer = producer
        self.onClosed = onClosed
        var logger = configuration.logger
        logger[metadataKey: "kafka-group"] = "\(groupID)"
        self.logger = logger
        var properties = KafkaClient.properties(configuration.settings)
        let reset = startPosition == .latest ? "latest" : "earliest"
        properties.insert(contentsOf: [
            ("group.id", groupID),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", reset),
            ("enable.partition.eof", "false"),
            ("partition.assignment.strategy", "range,roundrobin"),
            ("allow.auto.create.topics", "false"),
        ], at: properties.count - configuration.settings.properties.count)
        let conf = try KafkaClient.configuration(properties)
        rd_kafka_conf_set_rebalance_cb(conf) { rk, error, partitions, opaque in
            guard let rk, let partitions, let opaque else { return }
            let member = Unmanaged<KafkaGroupMember>.fromOpaque(opaque).takeUnretainedValue()
            if error == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
                member.assigned(rk, partitions)
            } else {
                member.revoked(rk, partitions)
            }
        }
        rd_kafka_conf_set_offset_commit_cb(conf) { _, error, _, opaque in
            guard let opaque, error != RD_KAFKA_RESP_ERR_NO_ERROR, error != RD_KAFKA_RESP_ERR__NO_OFFSET else { return }
            let member = Unmanaged<KafkaGroupMember>.fromOpaque(opaque).takeUnretainedValue()
            member.logger.warning("an offset commit failed; committing again", metadata: ["kafka-error": "\(String(cString: rd_kafka_err2str(error)))"])
            member.state.withLock { $0.recommit = true }
        }
        // The handle lives no longer than the member: the thread holding `self` destroys it.
        rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(self).toOpaque())
        rk = try KafkaClient.handle(RD_KAFKA_CONSUMER, conf, logger: configuration.logger)
        rd_kafka_poll_set_consumer(rk)
        queue = rd_kafka_queue_get_consumer(rk)
        let subscription = PartitionList(capacity: 2)
        for name in topics { subscription.add(name, courier_rdk_partition_ua()) }
        let error = rd_kafka_subscribe(rk, subscription.list)
        if error != RD_KAFKA_RESP_ERR_NO_ERROR {
            rd_kafka_queue_destroy(queue)
            KafkaClient.destroy(rk)
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

    // MARK: Subscriptions

    /// Adds a subscription, waiting until the member has joined the group and has its first
    /// assignment (so that whatever is published after this returns reaches the group).
    func attach(prefetch: Int) async throws(CourierError) -> KafkaSubscription {
        let id = try state.withLock { state throws(CourierError) -> Int in
            guard !state.closing else { throw CourierError(.subscriptionClosed, "the consumer of \(origin) is closing; subscribe again") }
            state.nextSubscription += 1
            state.subscriptions[state.nextSubscription] = prefetch
            return state.nextSubscription
        }
        let subscription = KafkaSubscription(member: self, id: id)
        let failure = await withUnsafeContinuation { (continuation: UnsafeContinuation<CourierError?, Never>) in
            let ready = state.withLock { state -> CourierError?? in
                if state.joined { return .some(nil) }
                if state.closed { return .some(state.failure ?? KafkaTransport.closedError) }
                state.joinWaiters.append(continuation)
                return .none
            }
            if let ready { continuation.resume(returning: ready) }
        }
        if let failure {
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
            let returned = state.taken.filter { $0.value.subscription == subscription.id }.sorted { $0.key > $1.key }
            for (tag, taken) in returned {
                state.taken[tag] = nil
                if taken.pending.epoch == state.epoch { state.gate.returnToFront(taken.pending) }
            }
            var ended: [Waiter] = []
            state.waiters.removeAll { waiter in
                guard waiter.subscription.id == subscription.id else { return false }
                ended.append(waiter)
                return true
            }
            let last = state.subscriptions.isEmpty
            if last { state.closing = true }
            return (ended, last ? [] : state.serve(), last)
        }
        for waiter in ended { waiter.continuation.resume(returning: nil) }
        for (waiter, delivery) in served { waiter.continuation.resume(returning: delivery) }
        if last { await close() }
    }

    /// Leaves the group: commits what is settled, ends every waiter, and waits for the thread
    /// to destroy the consumer. Idempotent.
    func close() async {
        let ended = state.withLock { state -> [Waiter] in
            state.closing = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters)
        }
        for waiter in ended { waiter.continuation.resume(returning: nil) }
        rd_kafka_queue_yield(queue)
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let done = state.withLock { state in
                if !state.closed { state.closeWaiters.append(continuation) }
                return state.closed
            }
            if done { continuation.resume() }
        }
    }

    // MARK: Deliveries

    func next(for subscription: KafkaSubscription) async throws -> Delivery? {
        enum Fast { case delivery(Delivery), end, failure(CourierError), wait(Int) }
        let fast: Fast = state.withLock { state in
            guard state.subscriptions[subscription.id] != nil, !state.closing else { return state.failure.map { .failure($0) } ?? .end }
            if let pending = state.gate.next() { return .delivery(state.hand(pending, to: subscription)) }
            state.nextWaiter += 1
            return .wait(state.nextWaiter)
        }
        let id: Int
        switch fast {
        case .delivery(let delivery): return delivery
        case .end: return nil
        case .failure(let error): throw error
        case .wait(let waitID): id = waitID
        }
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Delivery?, any Error>) in
                let immediate: Result<Delivery?, any Error>? = state.withLock { state in
                    if state.cancelled.remove(id) != nil { return .success(nil) }
                    guard state.subscriptions[subscription.id] != nil, !state.closing else {
                        return state.failure.map { .failure($0) } ?? .success(nil)
                    }
                    if let pending = state.gate.next() { return .success(state.hand(pending, to: subscription)) }
                    state.waiters.append(Waiter(id: id, subscription: subscription, continuation: continuation))
                    return nil
                }
                if let immediate { continuation.resume(with: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> Waiter? in
                if let index = state.waiters.firstIndex(where: { $0.id == id }) { return state.waiters.remove(at: index) }
                state.cancelled.insert(id)
                return nil
            }
            waiter?.continuation.resume(returning: nil)
        }
    }

    /// Takes `tag` out of the taken deliveries; `nil` when it belongs to a revoked assignment
    /// (settling it is a no-op: the partition's new owner gets the message again).
    private func take(_ tag: UInt64) throws(CourierError) -> Taken? {
        try state.withLock { state throws(CourierError) -> Taken? in
            guard let taken = state.taken.removeValue(forKey: tag) else { throw CourierError.alreadySettled(deliveryTag: tag) }
            return taken.pending.epoch == state.epoch ? taken : nil
        }
    }

    /// Marks `pending` settled: its offset may be committed, its key is free.
    private func settled(_ pending: Pending) {
        let (served, wake) = state.withLock { state in Self.settle(pending, in: &state) }
        for (waiter, delivery) in served { waiter.continuation.resume(returning: delivery) }
        if wake { rd_kafka_queue_yield(queue) }
    }

    /// Marks `pending` settled in `state`; returns the waiters to serve and whether the paused
    /// member's thread should wake.
    private static func settle(_ pending: Pending, in state: inout State) -> ([(Waiter, Delivery)], Bool) {
        guard pending.epoch == state.epoch else { return ([], false) }
        state.tracks[pending.position]?.settle(pending.offset)
        state.gate.release(key: pending.envelope.key)
        state.unsettled -= 1
        let wake = state.pauseRequested && state.unsettled <= state.limit / 2
        return (state.waiters.isEmpty ? [] : state.serve(), wake)
    }

    /// Takes and settles `tag` under one lock (the hot path of every ack).
    func ack(tag: UInt64) throws(CourierError) {
        let (served, wake) = try state.withLock { state throws(CourierError) -> ([(Waiter, Delivery)], Bool) in
            guard let taken = state.taken.removeValue(forKey: tag) else { throw CourierError.alreadySettled(deliveryTag: tag) }
            return Self.settle(taken.pending, in: &state)
        }
        for (waiter, delivery) in served { waiter.continuation.resume(returning: delivery) }
        if wake { rd_kafka_queue_yield(queue) }
    }

    func nack(tag: UInt64, delay: Duration) async throws {
        guard let taken = try take(tag) else { return }
        guard taken.pending.attempt < options.maxDeliveryAttempts else {
            try await deadLetter(taken, tag: tag, reason: "delivery attempts exhausted: \(taken.pending.attempt) of \(options.maxDeliveryAttempts)", headers: [:])
            return
        }
        var again = taken.pending
        again.attempt += 1
        if let retryTopic {
            try await republish(taken, tag: tag, to: retryTopic, delay: delay)
            return
        }
        // The key stays in flight until the redelivery, so no later message of it overtakes.
        if delay > .zero {
            Task { [self] in
                try? await Task.sleep(for: delay)
                redeliver(again)
            }
        } else {
            redeliver(again)
        }
    }

    /// Publishes a copy with attempt + 1, due after `delay`, to the retry topic, then settles
    /// the original; if the retry topic refuses it, the delivery stays unsettled.
    private func republish(_ taken: Taken, tag: UInt64, to retryTopic: String, delay: Duration) async throws {
        var copy = taken.pending.envelope
        let due = Date().addingTimeInterval(Double(delay.components.seconds) + Double(delay.components.attoseconds) / 1e18)
        copy.headers[Self.retryAtHeader] = String(due.clampedMillisecondsSince1970)
        do {
            try await producer.produce([copy], to: retryTopic) { _ in taken.pending.attempt + 1 }
        } catch {
            state.withLock { state in
                if taken.pending.epoch == state.epoch { state.taken[tag] = taken }
            }
            throw error
        }
        settled(taken.pending)
    }

    private func redeliver(_ pending: Pending) {
        let served = state.withLock { state -> [(Waiter, Delivery)] in
            guard pending.epoch == state.epoch, !state.closing else { return [] }
            state.gate.returnToFront(pending)
            return state.serve()
        }
        for (waiter, delivery) in served { waiter.continuation.resume(returning: delivery) }
    }

    func deadLetter(tag: UInt64, reason: String, headers: [String: String]) async throws {
        guard let taken = try take(tag) else { return }
        try await deadLetter(taken, tag: tag, reason: reason, headers: headers)
    }

    /// Publishes `pending` to the dead-letter topic, then settles it; if the dead-letter topic
    /// refuses it, the delivery stays unsettled (it can be settled again) and the error is thrown.
    private func deadLetter(_ taken: Taken, tag: UInt64, reason: String, headers: [String: String]) async throws {
        let pending = taken.pending
        let letter = WireFormat.deadLetter(pending.envelope, reason: reason, origin: origin, attempts: pending.attempt, extra: headers)
        do {
            try await producer.ensureTopic(deadLetterTopic, timeout: timeout)
            try await producer.produce([letter], to: deadLetterTopic)
        } catch {
            state.withLock { state in
                if pending.epoch == state.epoch { state.taken[tag] = taken }
            }
            throw error
        }
        settled(pending)
    }

    // MARK: The member's thread

    private func run() {
        var messages = [UnsafeMutablePointer<rd_kafka_message_t>?](repeating: nil, count: 1024)
        while true {
            let (closing, capacity, recommit) = state.withLock { state -> (Bool, Int, Bool) in
                let limit = max(1, state.limit)
                if state.unsettled >= limit { state.pauseRequested = true }
                if state.unsettled <= limit / 2 { state.pauseRequested = false }
                defer { state.recommit = false }
                return (state.closing, state.pauseRequested ? 0 : limit - state.unsettled, state.recommit)
            }
            if closing { break }
            if !joinedInTime() { break }
            setPaused(capacity == 0)
            if recommit || ContinuousClock.now - lastCommit >= commitInterval {
                commit(wait: nil, force: recommit)
            }
            let count = messages.withUnsafeMutableBufferPointer { buffer in
                // librdkafka returns when the batch is full or the timeout passes: a short
                // timeout bounds what a message waits for company when traffic is light.
                rd_kafka_consume_batch_queue(queue, 5, buffer.baseAddress, max(1, min(capacity, buffer.count)))
            }
            if count > 0 { receive(messages[0..<count]) }
        }
        commit(wait: .seconds(5), force: true)
        rd_kafka_consumer_close(rk)
        rd_kafka_queue_destroy(queue)
        KafkaClient.destroy(rk)
        let (waiters, joiners) = state.withLock { state in
            state.closed = true
            state.tracks.removeAll()
            state.taken.removeAll()
            _ = state.gate.removeAll(forgetInFlight: true)
            defer {
                state.closeWaiters.removeAll()
                state.joinWaiters.removeAll()
            }
            return (state.closeWaiters, state.joinWaiters)
        }
        onClosed(self)
        for joiner in joiners { joiner.resume(returning: state.withLock { $0.failure } ?? KafkaTransport.closedError) }
        for waiter in waiters { waiter.resume() }
    }

    /// False once the member has waited longer than the join timeout for its first assignment.
    private func joinedInTime() -> Bool {
        if hasJoined { return true }
        guard ContinuousClock.now - started > joinTimeout else { return true }
        return state.withLock { state in
            guard !state.joined else { return true }
            state.failure = CourierError(
                .timeout,
                "joining consumer group \(groupID) for \(origin) took longer than \(joinTimeout); check that the group coordinator is reachable"
            )
            state.closing = true
            return false
        }
    }

    private func setPaused(_ pause: Bool) {
        guard pause != paused else { return }
        var assignment: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
        guard rd_kafka_assignment(rk, &assignment) == RD_KAFKA_RESP_ERR_NO_ERROR, let assignment else { return }
        let list = PartitionList(taking: assignment)
        if pause { rd_kafka_pause_partitions(rk, list.list) } else { rd_kafka_resume_partitions(rk, list.list) }
        paused = pause
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
        for case let message? in batch {
            defer { rd_kafka_message_destroy(message) }
            let raw = message.pointee
            // Consumer errors (a broker gone, a fetch failed) are transient: librdkafka retries.
            guard raw.err == RD_KAFKA_RESP_ERR_NO_ERROR else { continue }
            var (pending, timestamp) = Self.pending(message)
            pending.position = position(raw.rkt.map { rd_kafka_topic_name($0) }, raw.partition)
            arrived.append((pending.position, raw.offset, timestamp, pending))
        }
        let now = Date().clampedMillisecondsSince1970
        var notYetDue: [Pending] = []
        let served = state.withLock { state -> [(Waiter, Delivery)] in
            for item in arrived {
                guard var track = state.tracks[item.position], var pending = item.pending else { continue }
                track.next = item.offset + 1
                if let cut = track.skipBefore {
                    if item.timestamp >= 0 && item.timestamp < cut {
                        state.tracks[item.position] = track
                        continue
                    }
                    track.skipBefore = nil
                }
                track.inFlight.append((item.offset, false))
                state.tracks[item.position] = track
                pending.epoch = state.epoch
                state.unsettled += 1
                if let due = pending.retryAt, due > now {
                    notYetDue.append(pending)
                } else {
                    state.gate.append(pending)
                }
            }
            return state.serve()
        }
        for (waiter, delivery) in served { waiter.continuation.resume(returning: delivery) }
        // Retries wait in memory until due; their offsets stay uncommitted meanwhile, so a
        // member that stops first leaves them to the next.
        for pending in notYetDue {
            Task { [self] in
                let (wait, overflow) = pending.retryAt!.subtractingReportingOverflow(Date().clampedMillisecondsSince1970)
                try? await Task.sleep(for: .milliseconds(overflow ? 0 : max(0, wait)))
                let served = state.withLock { state -> [(Waiter, Delivery)] in
                    guard pending.epoch == state.epoch, !state.closing else { return [] }
                    state.gate.append(pending)
                    return state.serve()
                }
                for (waiter, delivery) in served { waiter.continuation.resume(returning: delivery) }
            }
        }
    }

    /// The envelope, attempt and position of a polled message.
    static func pending(_ message: UnsafeMutablePointer<rd_kafka_message_t>) -> (Pending, timestamp: Int64) {
        let raw = message.pointee
        var received = WireFormat.Received()
        var list: OpaquePointer?
        if rd_kafka_message_headers(message, &list) == RD_KAFKA_RESP_ERR_NO_ERROR, let list {
            var index = 0
            var name: UnsafePointer<CChar>?
            var value: UnsafeRawPointer?
            var size = 0
            while rd_kafka_header_get_all(list, index, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
                if let name {
                    received.add(String(cString: name), value.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: size), as: UTF8.self) } ?? "")
                }
                index += 1
            }
        }
        let payload = raw.payload.map { Array(UnsafeRawBufferPointer(start: $0, count: raw.len)) } ?? []
        let key = raw.key.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: raw.key_len), as: UTF8.self) }
        var timestampType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let timestamp = rd_kafka_message_timestamp(message, &timestampType)
        var (envelope, attempt) = received.envelope(
            payload: payload,
            fallbackTime: timestamp >= 0 ? Date(timeIntervalSince1970: TimeInterval(timestamp) / 1000) : nil,
            fallbackKey: key
        )
        let retryAt = envelope.headers.removeValue(forKey: retryAtHeader).flatMap { Int64($0) }
        let position = Position(topic: 0, partition: raw.partition)
        return (Pending(envelope: envelope, attempt: attempt, position: position, offset: raw.offset, epoch: 0, retryAt: retryAt), timestamp)
    }

    /// Commits the lowest unsettled offset of every partition that moved (all with `force`).
    /// Commits the lowest unsettled offsets; `wait` bounds how long to wait for the result
    /// (`nil`: do not wait). A commit still unanswered then completes in the background, so a
    /// broker outage never stalls the member's thread (which would stall its deliveries).
    private func commit(wait: Duration?, force: Bool) {
        lastCommit = ContinuousClock.now
        let offsets = state.withLock { state -> [(Position, Int64)] in
            var offsets: [(Position, Int64)] = []
            for (position, track) in state.tracks where force || track.commitOffset > track.committed {
                offsets.append((position, track.commitOffset))
                state.tracks[position]?.committed = track.commitOffset
            }
            return offsets
        }
        guard !offsets.isEmpty else { return }
        let names = topics
        let list = PartitionList(capacity: offsets.count)
        for (position, offset) in offsets where offset >= 0 { list.add(names[position.topic], position.partition, offset: offset) }
        guard list.count > 0 else { return }
        guard let wait else {
            if rd_kafka_commit(rk, list.list, 1) != RD_KAFKA_RESP_ERR_NO_ERROR { state.withLock { $0.recommit = true } }
            return
        }
        let results = rd_kafka_queue_new(rk)
        defer { rd_kafka_queue_destroy(results) }
        _ = rd_kafka_commit_queue(rk, list.list, results, nil, nil)
        if let event = rd_kafka_queue_poll(results, KafkaClient.milliseconds(wait)) { rd_kafka_event_destroy(event) }
    }

    // MARK: Rebalance (on the member's thread, inside a poll)

    private func assigned(_ rk: OpaquePointer, _ partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) {
        let list = PartitionList(copying: partitions)
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
        let milliseconds = KafkaClient.milliseconds(timeout)
        let committedError = rd_kafka_committed(rk, list.list, milliseconds)
        var starts: [Position: (offset: Int64, skipBefore: Int64?)] = [:]
        var unresolved: [Position] = []
        for element in list.elements {
            let position = position(element.topic, element.partition)
            if committedError != RD_KAFKA_RESP_ERR_NO_ERROR || element.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                // Unknown (the coordinator is busy): let librdkafka fetch the committed offset
                // itself. Never guess a start here: that would overwrite the group's offsets.
                starts[position] = (courier_rdk_offset_invalid(), nil)
            } else if element.offset >= 0 {
                starts[position] = (element.offset, nil)
            } else {
                unresolved.append(position)
            }
        }
        if !unresolved.isEmpty {
            for (position, start) in resolveStart(rk, unresolved) { starts[position] = start }
            // Commit the starting offsets now: from here on the group exists, and what is
            // published next is kept for it even if this member leaves before reading.
            let names = topics
            let commit = PartitionList(capacity: unresolved.count)
            for position in unresolved {
                if let start = starts[position], start.offset >= 0 { commit.add(names[position.topic], position.partition, offset: start.offset) }
            }
            if commit.count > 0 { _ = rd_kafka_commit(rk, commit.list, 0) }
        }
        for index in 0..<list.count {
            let position = position(list.elements[index].topic, list.elements[index].partition)
            list.elements[index].offset = starts[position]?.offset ?? courier_rdk_offset_invalid()
        }
        rd_kafka_assign(rk, list.list)
        // librdkafka keeps a partition's pause across an unassign and a new assign: a member
        // that was at its prefetch limit when the group rebalanced would otherwise never fetch
        // the partitions it is given back.
        rd_kafka_resume_partitions(rk, list.list)
        paused = false
        hasJoined = true
        let joiners = state.withLock { state -> [UnsafeContinuation<CourierError?, Never>] in
            state.epoch += 1
            state.pauseRequested = false
            state.tracks = [:]
            for (position, start) in starts {
                state.tracks[position] = Track(next: start.offset, committed: start.offset, skipBefore: start.skipBefore)
            }
            state.joined = true
            defer { state.joinWaiters.removeAll() }
            return state.joinWaiters
        }
        for joiner in joiners { joiner.resume(returning: nil) }
    }

    /// Start offsets for partitions the group has never committed: the start position for the
    /// topic, the beginning for the retry topic (retries are never skipped).
    private func resolveStart(_ rk: OpaquePointer, _ positions: [Position]) -> [Position: (offset: Int64, skipBefore: Int64?)] {
        let milliseconds = KafkaClient.milliseconds(timeout)
        let names = topics
        var starts: [Position: (offset: Int64, skipBefore: Int64?)] = [:]
        var watermarks: [Position: (low: Int64, high: Int64)] = [:]
        for position in positions {
            var low: Int64 = 0
            var high: Int64 = 0
            if rd_kafka_query_watermark_offsets(rk, names[position.topic], position.partition, &low, &high, milliseconds) == RD_KAFKA_RESP_ERR_NO_ERROR {
                watermarks[position] = (low, high)
            }
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
            let error = rd_kafka_offsets_for_times(rk, query.list, milliseconds)
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

    private func revoked(_ rk: OpaquePointer, _ partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) {
        let forgotten = state.withLock { $0.unsettled }
        logger.debug("partitions revoked", metadata: ["kafka-unsettled-returned": "\(forgotten)"])
        commit(wait: .seconds(2), force: true)
        state.withLock { state in
            state.epoch += 1
            state.tracks.removeAll()
            state.unsettled = 0
            state.pauseRequested = false
            _ = state.gate.removeAll(forgetInFlight: true)
        }
        rd_kafka_assign(rk, nil)
        paused = false
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
