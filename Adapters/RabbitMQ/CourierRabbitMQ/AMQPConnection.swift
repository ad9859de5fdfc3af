import CRabbitMQ
import Courier
import DequeModule
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A message as it arrived on a consumer channel, copied out of librabbitmq's buffers.
struct RawDelivery: Sendable {
    var deliveryTag: UInt64
    var headers: [String: String]
    var messageID: String?
    var timestamp: UInt64?
    var body: [UInt8]
}

/// What owns a consumer channel. Every method is called on the connection's thread.
protocol AMQPChannelOwner: AnyObject, Sendable {
    /// Declares what the consumer reads and starts `basic.consume` on `channel`; called when the
    /// channel opens and again after every reconnect.
    func open(_ connection: AMQPConnection, channel: UInt16, generation: UInt64) throws(CourierError)
    /// A message for this consumer.
    func deliver(_ delivery: RawDelivery, generation: UInt64)
    /// The channel is gone: its un-acked deliveries will be redelivered by the broker. When
    /// `final` the owner is detached for good (the transport shut down or reopening failed).
    func channelLost(_ error: CourierError, final: Bool)
}

/// One AMQP connection, owned by one thread: librabbitmq is not thread-safe, so every call on
/// the connection happens on that thread, and Swift tasks reach it only through commands
/// (closures) it runs between reading frames. Nothing blocks the cooperative pool.
///
/// The thread reads frames without blocking, waits in `poll(2)` on the socket and an eventfd
/// that commands ring, sends heartbeats (librabbitmq does so inside its reads), matches
/// publisher confirms (multiple ones included), assembles deliveries per channel, and
/// coalesces acks into `multiple` acks when they are contiguous. When the connection is lost
/// it reconnects with exponential backoff and jitter, re-opens channels, lets their owners
/// re-declare and re-consume, and republishes every message whose confirm never came.
///
/// Mutable state below `// Thread-confined` is touched only on the connection's thread.
final class AMQPConnection: @unchecked Sendable {
    let settings: AMQPSettings
    let label: String
    let logger: Logger
    /// How long a publish may wait for its confirm before it fails with `notConfirmed`.
    let confirmTimeout: Duration

    private let commands = Mutex<Deque<@Sendable (AMQPConnection) -> Void>>([])
    private let wakeFD: Int32
    private let sleeping = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    /// Open once the thread has finished.
    private let finished = Latch()

    // Thread-confined.
    /// Connected or not (and the librabbitmq handle only while it exists), the reconnect
    /// backoff, the publishes waiting for confirms, the declarations made.
    private var machine = AMQPConnectionStateMachine<AMQPClient, PendingPublish>()
    private var state: AMQPClient? { machine.handle }
    /// Counts the connections made; deliveries and acks of an older one are void.
    var generation: UInt64 { machine.generation }
    private var owners: [UInt16: any AMQPChannelOwner] = [:]
    private var assembling: [UInt16: Assembly] = [:]
    private var ackTrackers: [UInt16: AckTracker] = [:]
    private var nextChannel: UInt16 = 1
    /// The settings' hosts in the order tried (shuffled once per connection with
    /// `host_order=shuffle`), and the index of the one connected last.
    private let nodes: [AMQPSettings.Endpoint]
    private var lastNode: Int?
    /// The node connected to (or last tried), for messages from any thread.
    private let currentNode: Mutex<String>

    /// What ``health()`` reports: written by the connection's thread.
    private struct HealthState {
        var state: TransportHealth.Connection.State = .reconnecting
        var lastError: String?
    }
    private let healthState = Mutex(HealthState())
    /// When the broker last sent anything (`CLOCK_MONOTONIC` nanoseconds), set where the
    /// thread sees the socket readable.
    private let lastContact = Atomic<UInt64>(0)

    /// The publishing channel; consumer channels are numbered from 2.
    static let publishChannel: UInt16 = 1

    init(settings: AMQPSettings, label: String, confirmTimeout: Duration = .seconds(60), logger: Logger) {
        self.settings = settings
        self.label = label
        var logger = logger
        logger[metadataKey: "amqp-connection"] = "\(label)"
        logger[metadataKey: "amqp-broker"] = "\(settings.hosts.map(\.description).joined(separator: ","))"
        self.logger = logger
        self.nodes = settings.hostOrder == .shuffle ? settings.hosts.shuffled() : settings.hosts
        self.currentNode = Mutex(settings.hosts.first?.description ?? "no host")
        self.confirmTimeout = confirmTimeout
        self.wakeFD = AMQPClient.makeWakeFD()
    }

    deinit {
        close(wakeFD)
    }

    // MARK: Life cycle

    /// Connects (failing fast with a typed error when the broker is unreachable or refuses the
    /// credentials) and starts the connection's thread.
    func start() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let thread = Thread { [self] in
                do {
                    try self.connect()
                } catch {
                    continuation.resume(throwing: error)
                    self.machine.finish().handle?.destroy()
                    self.finish()
                    return
                }
                continuation.resume()
                self.run()
            }
            thread.name = "courier-amqp-\(label)"
            thread.start()
        }
    }

    /// Closes the connection after the commands already submitted; waits for the thread.
    func stop() async {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else {
            await waitUntilFinished()
            return
        }
        wake()
        await waitUntilFinished()
    }

    private func waitUntilFinished() async {
        await finished.wait()
    }

    private func finish() {
        finished.open()
        // A command submitted while the thread was ending still runs (and fails) here.
        failCommands()
    }

    private var isFinished: Bool { finished.isOpen }

    var isStopping: Bool { stopping.load(ordering: .acquiring) }

    // MARK: Commands

    /// Runs `body` on the connection's thread.
    func submit(_ body: @escaping @Sendable (AMQPConnection) -> Void) {
        commands.withLock { $0.append(body) }
        wake()
        // The thread is gone: run the command here, against the closed connection, so that
        // whoever waits for it hears back instead of hanging.
        if isFinished { failCommands() }
    }

    /// Runs `body` on the connection's thread and returns its result.
    func perform<T: Sendable>(_ body: @escaping @Sendable (AMQPConnection) throws(CourierError) -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            guard !isStopping else {
                continuation.resume(
                    throwing: CourierError(.transportClosed, "the RabbitMQ connection \(label) was closed; create a new transport"))
                return
            }
            submit { connection in
                do throws(CourierError) {
                    continuation.resume(returning: try body(connection))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    private func wake() {
        if sleeping.load(ordering: .acquiring) {
            var one: UInt64 = 1
            _ = write(wakeFD, &one, 8)
        }
    }

    // MARK: The thread

    private func run() {
        var failure: CourierError?
        while true {
            if isStopping { break }
            do throws(CourierError) {
                try runCommands()
                flushAcks()
                try readFrames()
                expireConfirms()
            } catch {
                if isStopping { break }
                failure = error
                connectionLost(error)
                guard reconnect() else { break }
                failure = nil
            }
        }
        machine.stop()
        // Drain: commands submitted before stop still run (acks, closes), then close.
        if state != nil && failure == nil {
            try? runCommands()
            flushAcks()
            state?.close()
        }
        let closed = CourierError(.transportClosed, "the RabbitMQ connection \(label) was closed")
        for (_, owner) in owners { owner.channelLost(closed, final: true) }
        owners.removeAll()
        let (handle, unconfirmed) = machine.finish()
        for entry in unconfirmed {
            entry.sink.fail(
                CourierError(
                    .notConfirmed,
                    "\(closed.message) before message \(entry.message.id) was confirmed; publish it again (same id) if it must arrive",
                    isRetriable: true))
        }
        failCommands()
        handle?.destroy()
        healthState.withLock { $0 = HealthState(state: .closed, lastError: failure?.message) }
        finish()
    }

    private func failCommands() {
        // Commands still queued run against a closed connection: each fails with transportClosed.
        while let command = commands.withLock({ $0.popFirst() }) { command(self) }
    }

    private func runCommands() throws(CourierError) {
        while let command = commands.withLock({ $0.popFirst() }) {
            command(self)
            if let lost = pendingLoss {
                pendingLoss = nil
                throw lost
            }
        }
    }

    /// A command that found the connection broken records it here; the loop then reconnects.
    private var pendingLoss: CourierError?

    func connectionBroke(_ error: CourierError) {
        if pendingLoss == nil { pendingLoss = error }
    }

    private func readFrames() throws(CourierError) {
        guard let state else { throw lost("no connection") }
        var handled = 0
        // A busy connection may go on reading without polling: frames count as contact too.
        defer { if handled > 0 { heard() } }
        while handled < 512 {
            if !state.hasBufferedInput {
                if handled > 0 || !commands.withLock({ $0.isEmpty }) { return }
                if !waitForInput() { return }
            }
            var frame = amqp_frame_t()
            let status = state.nextFrame(&frame)
            if status == AMQP_STATUS_TIMEOUT.rawValue { return }
            guard status == AMQP_STATUS_OK.rawValue else { throw lost(status) }
            try handle(frame)
            handled += 1
            if let lost = pendingLoss {
                pendingLoss = nil
                throw lost
            }
        }
    }

    /// Waits for socket input or a command; returns whether there may be input to read.
    private func waitForInput() -> Bool {
        guard let state else { return false }
        let heartbeatMillis = settings.heartbeatSeconds > 0 ? settings.heartbeatSeconds * 500 : 1000
        let timeout = Int32(min(100, heartbeatMillis))
        sleeping.store(true, ordering: .sequentiallyConsistent)
        defer { sleeping.store(false, ordering: .releasing) }
        if !commands.withLock({ $0.isEmpty }) || isStopping { return false }
        var fds = [
            pollfd(fd: state.socket, events: Int16(POLLIN), revents: 0),
            pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0),
        ]
        _ = poll(&fds, 2, timeout)
        if fds[0].revents != 0 { heard() }
        if fds[1].revents != 0 {
            var value: UInt64 = 0
            _ = read(wakeFD, &value, 8)
        }
        // Even on a timeout, reading lets librabbitmq send and check heartbeats.
        return true
    }

    // MARK: Frames

    private struct Assembly {
        var delivery: RawDelivery
        var expected: Int
        var discard: Bool
    }

    private func handle(_ frame: amqp_frame_t) throws(CourierError) {
        let channel = frame.channel
        switch Int32(frame.frame_type) {
        case AMQP_FRAME_METHOD:
            let method = frame.payload.method
            switch method.id {
            case AMQP_BASIC_ACK_METHOD:
                let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
                confirm(upTo: ack.delivery_tag, multiple: ack.multiple != 0, ok: true)
            case AMQP_BASIC_NACK_METHOD:
                let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
                confirm(upTo: nack.delivery_tag, multiple: nack.multiple != 0, ok: false)
            case AMQP_BASIC_DELIVER_METHOD:
                let deliver = method.decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
                assembling[channel] = Assembly(
                    delivery: RawDelivery(deliveryTag: deliver.delivery_tag, headers: [:], messageID: nil, timestamp: nil, body: []),
                    expected: -1,
                    discard: owners[channel] == nil
                )
            case AMQP_BASIC_RETURN_METHOD:
                assembling[channel] = Assembly(delivery: RawDelivery(deliveryTag: 0, headers: [:], body: []), expected: -1, discard: true)
            case AMQP_CHANNEL_CLOSE_METHOD:
                let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                let text = AMQPCodec.string(close.reply_text)
                state?.channelCloseOK(channel)
                try channelClosedByBroker(channel, code: close.reply_code, text: text)
            case AMQP_CONNECTION_CLOSE_METHOD:
                let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                state?.connectionCloseOK()
                throw lost("the broker closed the connection: \(close.reply_code) \(AMQPCodec.string(close.reply_text))")
            case AMQP_BASIC_CANCEL_METHOD:
                // The broker cancelled a consumer (its queue was deleted): reopen it, which
                // re-declares the queue.
                let cancel = method.decoded.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
                state?.cancelOK(channel, consumerTag: cancel.consumer_tag)
                try reopenConsumer(channel, reason: "the broker cancelled the consumer", channelIsOpen: true)
            default:
                break
            }
        case AMQP_FRAME_HEADER:
            guard var assembly = assembling[channel] else { return }
            assembly.expected = Int(frame.payload.properties.body_size)
            if !assembly.discard, let decoded = frame.payload.properties.decoded {
                let properties = decoded.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee
                if properties._flags & amqp_flags_t(AMQP_BASIC_HEADERS_FLAG) != 0 {
                    assembly.delivery.headers = AMQPCodec.strings(properties.headers)
                }
                if properties._flags & amqp_flags_t(AMQP_BASIC_MESSAGE_ID_FLAG) != 0 {
                    assembly.delivery.messageID = AMQPCodec.string(properties.message_id)
                }
                if properties._flags & amqp_flags_t(AMQP_BASIC_TIMESTAMP_FLAG) != 0 {
                    assembly.delivery.timestamp = properties.timestamp
                }
                AMQPProperties.addHeaders(from: properties, to: &assembly.delivery.headers)
            }
            assembly.delivery.body.reserveCapacity(assembly.expected)
            assembling[channel] = assembly
            if assembly.expected == 0 { complete(channel) }
        case AMQP_FRAME_BODY:
            guard var assembly = assembling[channel] else { return }
            assembling[channel] = nil  // keep the body array uniquely referenced while appending
            if !assembly.discard {
                let fragment = frame.payload.body_fragment
                if fragment.len > 0, let bytes = fragment.bytes {
                    assembly.delivery.body.append(contentsOf: UnsafeRawBufferPointer(start: bytes, count: fragment.len))
                }
            } else {
                assembly.expected -= frame.payload.body_fragment.len
            }
            assembling[channel] = assembly
            if assembly.delivery.body.count >= assembly.expected || assembly.expected <= 0 { complete(channel) }
        default:
            break
        }
        state?.releaseBuffers(channel: channel)
    }

    private func complete(_ channel: UInt16) {
        guard let assembly = assembling.removeValue(forKey: channel), !assembly.discard, let owner = owners[channel] else { return }
        ackTrackers[channel, default: AckTracker()].delivered(assembly.delivery.deliveryTag)
        owner.deliver(assembly.delivery, generation: generation)
    }

    // MARK: Connecting

    /// Connects to the first node that answers, starting after the one connected last (the
    /// failover), each within an equal share of the connection timeout; a login the broker
    /// refuses is not tried on the other nodes (they share their users). Unreachable
    /// everywhere: one error naming every node.
    private func connect() throws(CourierError) {
        guard !nodes.isEmpty else {
            throw CourierError(.invalidConfiguration, "the RabbitMQ settings name no host; give at least one in hosts or the URL")
        }
        let share = max(1, settings.connectionTimeoutSeconds / nodes.count)
        let start = lastNode.map { ($0 + 1) % nodes.count } ?? 0
        var failures: [CourierError] = []
        for offset in 0..<nodes.count {
            let index = (start + offset) % nodes.count
            let node = nodes[index]
            currentNode.withLock { $0 = node.description }
            do throws(CourierError) {
                machine.connected(try AMQPClient.connect(settings, node: node, timeoutSeconds: share))
            } catch  where error.code == .unreachable {
                failures.append(error)
                continue
            }
            lastNode = index
            heard()
            healthState.withLock { $0 = HealthState(state: .connected) }
            if nodes.count > 1 { logger.info("connected to RabbitMQ", metadata: ["amqp-node": "\(node)"]) }
            try openPublisher()
            return
        }
        if failures.count == 1 { throw failures[0] }
        throw CourierError(
            .unreachable,
            "cannot reach any of the \(nodes.count) RabbitMQ nodes (\(failures.map(\.reason).joined(separator: "; "))); check that a node runs and the URL \(settings) is right",
            isRetriable: true
        )
    }

    private func openPublisher() throws(CourierError) {
        guard let state else { throw lost("no connection") }
        try check(state.openChannel(Self.publishChannel), "opening the publishing channel")
        try check(state.confirmSelect(Self.publishChannel), "enabling publisher confirms")
        machine.publisherOpened()
    }

    /// Called when the connection is found broken: consumers learn their deliveries are void.
    private func connectionLost(_ error: CourierError) {
        if !isStopping { logger.warning("lost the connection to RabbitMQ; reconnecting", metadata: ["courier-error": "\(error.message)"]) }
        healthState.withLock { $0 = HealthState(state: .reconnecting, lastError: error.message) }
        machine.lost()?.destroy()
        assembling.removeAll()
        ackTrackers.removeAll()
        for (_, owner) in owners { owner.channelLost(error, final: false) }
    }

    /// Reconnects with exponential backoff and jitter until it succeeds or the transport stops;
    /// then re-opens consumers and republishes unconfirmed messages.
    private func reconnect() -> Bool {
        var attempts = 0
        while !isStopping {
            attempts += 1
            do throws(CourierError) {
                try connect()
                for (channel, owner) in owners.sorted(by: { $0.key < $1.key }) {
                    do throws(CourierError) {
                        try openChannel(channel)
                        try owner.open(self, channel: channel, generation: generation)
                    } catch {
                        owners[channel] = nil
                        owner.channelLost(error, final: true)
                        logger.error(
                            "a consumer could not be resumed after the reconnect; its subscription ends",
                            metadata: ["courier-error": "\(error.message)"])
                    }
                }
                logger.notice(
                    "reconnected to RabbitMQ",
                    metadata: ["amqp-attempts": "\(attempts)", "amqp-unconfirmed-republished": "\(machine.unconfirmedCount)"]
                )
                republishUnconfirmed()
                return true
            } catch {
                logger.debug(
                    "reconnecting failed; trying again", metadata: ["courier-error": "\(error.message)", "amqp-attempt": "\(attempts)"])
                healthState.withLock { $0.lastError = error.message }
                let (handle, delay) = machine.reconnectFailed(random: Double.random(in: 0...1))
                handle?.destroy()
                expireConfirms()
                let deadline = ContinuousClock.now + delay
                while ContinuousClock.now < deadline && !isStopping {
                    Thread.sleep(forTimeInterval: min(0.05, Double(delay.components.seconds) + Double(delay.components.attoseconds) / 1e18))
                    // Commands keep failing fast while disconnected rather than piling up.
                    try? runCommands()
                }
            }
        }
        return false
    }

    // MARK: Channels

    /// Allocates a consumer channel for `owner` and opens it; `owner.open` runs on it.
    func attach(_ owner: any AMQPChannelOwner) throws(CourierError) -> UInt16 {
        guard state != nil else { throw lost("not connected") }
        let channel = allocateChannel()
        do throws(CourierError) {
            try openChannel(channel)
            owners[channel] = owner
            try owner.open(self, channel: channel, generation: generation)
        } catch {
            owners[channel] = nil
            closeChannel(channel)
            throw error
        }
        return channel
    }

    /// A channel number not in use, cycling through the whole range before reusing one: frames
    /// of a closed channel that librabbitmq queued during an RPC must never reach a new owner.
    private func allocateChannel() -> UInt16 {
        let negotiated = state?.channelMax ?? 0
        let maximum = UInt16(clamping: negotiated == 0 ? 65535 : max(3, negotiated))
        repeat {
            nextChannel = nextChannel >= maximum ? 2 : nextChannel + 1
        } while owners[nextChannel] != nil
        return nextChannel
    }

    /// Flushes the channel's acks and closes it: the broker requeues what it had not acked.
    func detach(_ channel: UInt16) {
        guard owners.removeValue(forKey: channel) != nil else { return }
        flushAcks(channel)
        closeChannel(channel)
        ackTrackers[channel] = nil
        assembling[channel] = nil
    }

    private func openChannel(_ channel: UInt16) throws(CourierError) {
        guard let state else { throw lost("not connected") }
        try check(state.openChannel(channel), "opening channel \(channel)")
    }

    private func closeChannel(_ channel: UInt16) {
        guard let state else { return }
        let reply = state.closeChannel(channel)
        if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION { connectionBroke(lost(reply.library_error)) }
    }

    private func channelClosedByBroker(_ channel: UInt16, code: UInt16, text: String) throws(CourierError) {
        let error = CourierError(.brokerRejected, "RabbitMQ closed channel \(channel): \(code) \(text)")
        if channel == Self.publishChannel {
            // Unconfirmed messages of the closed channel are republished on the new one.
            machine.publisherClosed()
            try openPublisher()
            republishUnconfirmed()
            return
        }
        try reopenConsumer(channel, reason: error.message)
    }

    /// Moves a consumer to a new channel after the broker closed its channel or cancelled its
    /// consumer: the old channel's deliveries are void (the broker requeues them), and a fresh
    /// channel number guarantees no frame of the old one reaches the new consumer.
    private func reopenConsumer(_ channel: UInt16, reason: String, channelIsOpen: Bool = false) throws(CourierError) {
        guard let owner = owners.removeValue(forKey: channel) else { return }
        ackTrackers[channel] = nil
        assembling[channel] = nil
        if channelIsOpen { closeChannel(channel) }
        owner.channelLost(CourierError(.brokerRejected, reason), final: false)
        // The queue may be gone (a cancel follows its deletion): declare everything again.
        machine.forgetDeclarations()
        let fresh = allocateChannel()
        do throws(CourierError) {
            try openChannel(fresh)
            owners[fresh] = owner
            try owner.open(self, channel: fresh, generation: generation)
        } catch  where error.code != .unreachable {
            owners[fresh] = nil
            owner.channelLost(error, final: true)
        }
    }

    // MARK: Acks

    private struct AckTracker {
        /// Tags delivered and not yet acked to the broker, in delivery order.
        var outstanding = Deque<UInt64>()
        /// Tags the application acked, not yet sent.
        var acked = Set<UInt64>()
        /// Tags already acked individually (out of order).
        var sent = Set<UInt64>()

        mutating func delivered(_ tag: UInt64) { outstanding.append(tag) }
    }

    /// Records an application ack for `tag` of `generation`; acks of an older connection are
    /// void (the broker redelivers those messages) and ignored.
    func ack(channel: UInt16, tag: UInt64, generation: UInt64) {
        guard generation == self.generation, owners[channel] != nil else { return }
        ackTrackers[channel, default: AckTracker()].acked.insert(tag)
    }

    private func flushAcks() {
        for channel in ackTrackers.keys { flushAcks(channel) }
    }

    /// Sends one `multiple` ack for the longest acked prefix, and single acks for the rest.
    private func flushAcks(_ channel: UInt16) {
        guard let state, var tracker = ackTrackers[channel], !tracker.acked.isEmpty else { return }
        var highest: UInt64?
        while let first = tracker.outstanding.first {
            if tracker.acked.remove(first) != nil {
                highest = first
            } else if tracker.sent.remove(first) == nil {
                break
            }
            tracker.outstanding.removeFirst()
        }
        if let highest, !state.ack(channel, tag: highest, multiple: true) {
            connectionBroke(lost("acking on channel \(channel)"))
        }
        for tag in tracker.acked {
            if !state.ack(channel, tag: tag, multiple: false) { connectionBroke(lost("acking on channel \(channel)")) }
            tracker.sent.insert(tag)
        }
        tracker.acked.removeAll(keepingCapacity: true)
        ackTrackers[channel] = tracker
    }

    // MARK: Topology

    /// Runs `declare` once per connection for `key` (declarations are idempotent on the broker;
    /// the cache only saves round trips).
    func declareOnce(
        _ key: String, channel: UInt16 = AMQPConnection.publishChannel, _ declare: (AMQPClient) throws(CourierError) -> Void
    ) throws(CourierError) {
        guard machine.needsDeclaration(key) else { return }
        try declareNow(channel: channel, declare)
        machine.declared(key)
    }

    func declareNow(channel: UInt16 = AMQPConnection.publishChannel, _ declare: (AMQPClient) throws(CourierError) -> Void)
        throws(CourierError)
    {
        guard let state else { throw lost("not connected") }
        do throws(CourierError) {
            try declare(state)
        } catch  where error.code == .brokerRejected {
            // A refused declaration closed the channel: reopen it so that later work can go on.
            if channel == Self.publishChannel {
                state.channelCloseOK(channel)
                machine.publisherClosed()
                try openPublisher()
                republishUnconfirmed()
            }
            throw error
        }
    }

    /// Checks an RPC reply: a server exception is `brokerRejected`, a library error a lost connection.
    func check(_ reply: amqp_rpc_reply_t, _ what: String) throws(CourierError) {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            throw CourierError(.brokerRejected, "RabbitMQ refused \(what): \(AMQPClient.describe(reply))")
        default:
            throw lost("\(what): \(AMQPClient.describe(reply))")
        }
    }

    func lost(_ status: Int32) -> CourierError {
        lost(AMQPClient.errorText(status))
    }

    func lost(_ what: String) -> CourierError {
        CourierError(
            .unreachable, "lost the connection to RabbitMQ at \(currentNode.withLock { $0 }) (\(what)); reconnecting", isRetriable: true)
    }

    var connectionState: AMQPClient? { state }

    // MARK: Health

    private static func monotonicNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    /// Notes that the broker sent something.
    private func heard() {
        lastContact.store(Self.monotonicNanoseconds(), ordering: .relaxed)
    }

    /// This connection's report. A connection the broker has not sent anything on for two
    /// heartbeats is `unresponsive` even before librabbitmq's heartbeat check closes it
    /// (a frame or heartbeat comes at least every heartbeat interval on a live connection).
    func health() -> TransportHealth.Connection {
        let (state, lastError) = healthState.withLock { ($0.state, $0.lastError) }
        let contact = lastContact.load(ordering: .relaxed)
        let since: Duration? = contact == 0 ? nil : .nanoseconds(Int64(Self.monotonicNanoseconds() &- contact))
        var report = TransportHealth.Connection(
            name: label, state: state, node: currentNode.withLock { $0 }, sinceLastContact: since, lastError: lastError)
        if state == .connected, settings.heartbeatSeconds > 0, let since, since > .seconds(2 * settings.heartbeatSeconds) {
            report.state = .unresponsive
            report.lastError = "nothing from the broker for longer than two heartbeats (\(2 * settings.heartbeatSeconds) s)"
        }
        return report
    }

    // MARK: Publishing

    /// Publishes `message` on the confirm channel; `sink` hears about its confirm.
    func publish(_ message: OutgoingMessage, sink: ConfirmSink) {
        guard !sink.failed else { return }
        guard !isStopping else {
            sink.fail(
                CourierError(
                    .transportClosed,
                    "publishing message \(message.id): the transport was shut down before it was confirmed; publish it again on a new transport"
                ))
            return
        }
        let pending = PendingPublish(message: message, sink: sink)
        let state: AMQPClient
        switch machine.publish(pending) {
        case .refuse:
            sink.fail(
                CourierError(
                    .transportClosed,
                    "publishing message \(message.id): the transport was shut down before it was confirmed; publish it again on a new transport"
                ))
            return
        case .held:
            return  // disconnected: it goes out after the reconnect
        case .send(let handle):
            state = handle
        }
        do throws(CourierError) {
            try message.declare?(self)
        } catch  where error.code == .unreachable {
            connectionBroke(error)
            machine.hold(pending)
            return
        } catch {
            sink.fail(error)
            return
        }
        let status = message.send(state, Self.publishChannel)
        guard status == AMQP_STATUS_OK.rawValue else {
            connectionBroke(lost(status))
            machine.hold(pending)
            return
        }
        machine.sent(pending)
    }

    /// A publish and the sink of its call, waiting for the broker's confirm.
    struct PendingPublish: AMQPPendingPublish {
        var message: OutgoingMessage
        var sink: ConfirmSink
        var deadline: ContinuousClock.Instant { sink.deadline }
        var isSettled: Bool { sink.failed }
    }

    private func confirm(upTo tag: UInt64, multiple: Bool, ok: Bool) {
        for entry in machine.confirm(upTo: tag, multiple: multiple) {
            if ok {
                entry.sink.confirmed()
            } else {
                entry.sink.fail(
                    CourierError(
                        .notConfirmed, "RabbitMQ refused message \(entry.message.id) (basic.nack); publish it again", isRetriable: true))
            }
        }
    }

    private func republishUnconfirmed() {
        for entry in machine.republishable() { publish(entry.message, sink: entry.sink) }
    }

    private func expireConfirms() {
        for entry in machine.expire(now: .now) {
            entry.sink.fail(
                CourierError(
                    .notConfirmed,
                    "RabbitMQ did not confirm message \(entry.message.id) within \(confirmTimeout); it may or may not be stored: publish it again (same id) if it must arrive",
                    isRetriable: true
                ))
        }
    }
}

/// A message ready to publish: how to declare its destination and how to send it.
struct OutgoingMessage: @unchecked Sendable {
    var id: String
    /// Declares the destination (cached per connection); runs on the connection's thread.
    var declare: ((AMQPConnection) throws(CourierError) -> Void)?
    /// Sends `basic.publish`; returns librabbitmq's status.
    var send: (AMQPClient, UInt16) -> Int32
}

/// Collects the confirms of one `publish` call (one or many messages) and resumes the caller
/// when all are in, or at the first failure. Used only on the connection's thread.
final class ConfirmSink: @unchecked Sendable {
    private var remaining: Int
    private var continuation: CheckedContinuation<Void, any Error>?
    let deadline: ContinuousClock.Instant
    private(set) var failed = false

    init(count: Int, deadline: ContinuousClock.Instant, continuation: CheckedContinuation<Void, any Error>) {
        self.remaining = count
        self.deadline = deadline
        self.continuation = continuation
    }

    func confirmed() {
        remaining -= 1
        if remaining == 0, let continuation {
            self.continuation = nil
            continuation.resume()
        }
    }

    func fail(_ error: CourierError) {
        failed = true
        if let continuation {
            self.continuation = nil
            continuation.resume(throwing: error)
        }
    }
}

/// The standard AMQP basic properties as Courier headers on receive (see
/// ``RabbitMQTransport/PropertyHeader``): a header of the same name, when the message
/// carries one, wins over the property.
enum AMQPProperties {
    static func addHeaders(from properties: amqp_basic_properties_t, to headers: inout [String: String]) {
        let flags = properties._flags
        func add(_ flag: Int32, _ name: String, _ value: @autoclosure () -> amqp_bytes_t) {
            guard flags & amqp_flags_t(flag) != 0, headers[name] == nil else { return }
            headers[name] = AMQPCodec.string(value())
        }
        add(AMQP_BASIC_CONTENT_TYPE_FLAG, CourierHeader.contentType, properties.content_type)
        add(AMQP_BASIC_CONTENT_ENCODING_FLAG, RabbitMQTransport.PropertyHeader.contentEncoding, properties.content_encoding)
        add(AMQP_BASIC_CORRELATION_ID_FLAG, CourierHeader.correlationID, properties.correlation_id)
        add(AMQP_BASIC_TYPE_FLAG, CourierHeader.type, properties.type)
        add(AMQP_BASIC_APP_ID_FLAG, CourierHeader.source, properties.app_id)
        add(AMQP_BASIC_REPLY_TO_FLAG, RabbitMQTransport.PropertyHeader.replyTo, properties.reply_to)
        add(AMQP_BASIC_EXPIRATION_FLAG, RabbitMQTransport.PropertyHeader.expiration, properties.expiration)
    }
}

extension CourierError {
    /// The message without its advice (`…; check …`), to list several failures in one.
    fileprivate var reason: String {
        message.range(of: "; check ").map { String(message[..<$0.lowerBound]) } ?? message
    }
}
