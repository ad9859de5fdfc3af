import Courier
import Crdkafka
import Foundation
import Logging
import Synchronization

/// The transport's producer: idempotent, `acks=all`, with a thread of its own that serves
/// delivery reports. `produce` enqueues every message of a batch without waiting (librdkafka
/// pipelines them) and resumes the caller when the last delivery report of the batch arrives.
final class KafkaProducer: @unchecked Sendable {
    private typealias Machine = KafkaProducerStateMachine<RDKafkaClient, OpaquePointer>

    /// The state machine and the closers waiting, under one lock (topic handles are
    /// thread-safe pointers).
    private struct Shared: @unchecked Sendable {
        var machine: Machine
        /// Closers waiting for the producer to be closed by another.
        var closeWaiters = Waiters<Void, Void>()
        /// The closer waiting until no caller holds the handles.
        var idleWaiters = Waiters<Void, Void>()
    }

    /// librdkafka's name for the producer (the key of its logger).
    let name: String
    private let settings: KafkaSettings
    private let shared: Mutex<Shared>
    private let known = Mutex<Set<String>>([])
    /// Open once the poll thread has stopped.
    private let finished = Latch()

    init(settings: KafkaSettings, logger: Logger) throws(CourierError) {
        self.settings = settings
        var properties = KafkaClient.properties(settings)
        properties.insert(
            contentsOf: [
                ("enable.idempotence", "true"),
                ("acks", "all"),
                // No lingering: a publish waits for its delivery report, so a 5 ms linger (librdkafka's
                // default) is 5 ms or more added to every confirm; concurrent publishes still batch.
                ("linger.ms", "0"),
                // One produce request in flight per broker. With 5 (librdkafka's default) and no
                // linger, injected NOT_LEADER/REQUEST_TIMED_OUT errors on the mock cluster had the
                // idempotent producer report 4 of 500 messages delivered that the broker never
                // stored (2 runs of 11); with 1, none in 7. Unverified on a real cluster; see README.
                ("max.in.flight.requests.per.connection", "1"),
                ("allow.auto.create.topics", settings.topicCreation == .auto ? "true" : "false"),
            ], at: properties.count - settings.properties.count)
        let client = try RDKafkaClient(.producer, properties: properties, callbacks: .deliveryReports, logger: logger)
        name = client.name
        shared = Mutex(Shared(machine: Machine(client: client)))
        let thread = Thread { [self] in pollLoop(client) }
        thread.name = "courier.kafka.producer"
        thread.start()
    }

    /// Serves delivery reports until ``close(timeout:)`` has flushed.
    private func pollLoop(_ client: RDKafkaClient) {
        while shared.withLock({ $0.machine.shouldPoll }) {
            client.poll(milliseconds: 50)
        }
        finished.open()
    }

    /// Runs `body` with the client and `topic`'s handle, held until it returns; throws the
    /// transport's closed error once a close has begun.
    private func withHandles<T>(topic: String, _ body: (RDKafkaClient, OpaquePointer) async throws(CourierError) -> T)
        async throws(CourierError) -> T
    {
        let decision = shared.withLock { $0.machine.acquire(topic: topic) { client, name in client.topic(name) } }
        guard case .produce(let client, let handle) = decision else { throw KafkaTransport.closedError }
        defer { release() }
        return try await body(client, handle)
    }

    private var isOpen: Bool { shared.withLock { $0.machine.isOpen } }

    /// Asks a broker for the cluster's metadata (blocking: call it on a thread of ours). Only
    /// while connecting: no close can race it then.
    func ping(timeout: Duration) -> rd_kafka_resp_err_t {
        let client = shared.withLock { shared -> RDKafkaClient? in
            if case .open(let handles) = shared.machine.state { return handles.client }
            return nil
        }
        return client?.ping(timeout: timeout) ?? RD_KAFKA_RESP_ERR__DESTROY
    }

    /// Gives back the handles acquired from the state machine; the last user of a producer
    /// that is closing lets the closer go on.
    private func release() {
        let idle = shared.withLock { shared in shared.machine.release() ? shared.idleWaiters.removeAll() : [] }
        for waiter in idle { waiter.resume() }
    }

    /// When a broker last answered ``health(timeout:)``.
    private let lastAnswer = Mutex<ContinuousClock.Instant?>(nil)

    /// Whether a broker answers a metadata request within `timeout` (asked on a thread of its
    /// own), as the `producer` connection of the transport's health.
    func health(timeout: Duration) async -> TransportHealth.Connection {
        guard let client = shared.withLock({ $0.machine.acquireClient() }) else {
            return TransportHealth.Connection(name: "producer", state: .closed)
        }
        let code =
            (try? await KafkaClient.offload("health") { client.ping(timeout: timeout).rawValue }) ?? RD_KAFKA_RESP_ERR__DESTROY.rawValue
        release()
        let error = rd_kafka_resp_err_t(rawValue: code)
        let now = ContinuousClock.now
        if error == RD_KAFKA_RESP_ERR_NO_ERROR {
            lastAnswer.withLock { $0 = now }
            return TransportHealth.Connection(name: "producer", state: .connected, node: settings.description, sinceLastContact: .zero)
        }
        return TransportHealth.Connection(
            name: "producer", state: .reconnecting, node: settings.description,
            sinceLastContact: lastAnswer.withLock { $0 }.map { now - $0 },
            lastError: "no broker answered a metadata request within \(timeout): \(RDKafkaClient.describe(error))")
    }

    /// Makes sure `topic` exists, creating it as ``KafkaSettings/topicCreation`` says. Known
    /// topics cost nothing.
    func ensureTopic(_ topic: String, timeout: Duration) async throws(CourierError) {
        if known.withLock({ $0.contains(topic) }) { return }
        let settings = settings
        try await withHandles(topic: topic) { (client, handle) throws(CourierError) in
            let rkt = UncheckedSendable(handle)
            try await KafkaClient.offload("metadata") { [self] () throws(CourierError) in
                let deadline = ContinuousClock.now + timeout
                var created = false
                while true {
                    let (count, error) = client.partitionCount(topic, handle: rkt.value, timeout: timeout)
                    switch error {
                    case RD_KAFKA_RESP_ERR_NO_ERROR where count > 0:
                        return
                    case RD_KAFKA_RESP_ERR_NO_ERROR, RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
                        break  // being created; ask again
                    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
                        switch settings.topicCreation {
                        case .off:
                            throw CourierError(
                                .notFound,
                                "topic \(topic) does not exist and topic creation is off (create_topics=off); create it on the cluster or allow creation with create_topics=admin"
                            )
                        case .admin where !created:
                            try client.createTopic(
                                topic, partitions: settings.partitions, replicationFactor: settings.replicationFactor, timeout: timeout)
                            created = true
                        case .admin, .auto:
                            break
                        }
                    default:
                        throw KafkaClient.error(error, "looking up topic \(topic)")
                    }
                    if ContinuousClock.now >= deadline {
                        throw CourierError(
                            .timeout,
                            "topic \(topic) did not become available within \(timeout); check the cluster's health and the topic's partitions",
                            isRetriable: true)
                    }
                    // A close waits for this lookup: give up at once.
                    guard isOpen else { throw KafkaTransport.closedError }
                    Thread.sleep(forTimeInterval: 0.05)
                }
            }
        }
        known.withLock { _ = $0.insert(topic) }
    }

    /// Produces `envelopes` to `topic` in order and returns once every one is confirmed by
    /// its delivery report. `attempt` gives each message's delivery attempt header.
    func produce(_ envelopes: [Envelope], to topic: String, attempt: (Int) -> Int = { _ in 1 }) async throws(CourierError) {
        guard !envelopes.isEmpty else { return }
        let batch = ProduceBatch(topic: topic)
        try await withHandles(topic: topic) { (client, rkt) throws(CourierError) in
            for (index, envelope) in envelopes.enumerated() {
                let headers = RDKafkaClient.headers(of: envelope, attempt: attempt(index))
                batch.add()
                // `batch` outlives every report: this function holds it until `wait` returns.
                let opaque = Unmanaged.passUnretained(batch).toOpaque()
                var waited = 0
                while true {
                    let error = client.produce(envelope, to: rkt, headers: headers, opaque: opaque)
                    if error == RD_KAFKA_RESP_ERR_NO_ERROR { break }
                    RDKafkaClient.destroyHeaders(headers)
                    // librdkafka's queue is full: wait for delivery reports to drain it, unless
                    // a close has begun (it waits for this batch to stop enqueueing).
                    if error == RD_KAFKA_RESP_ERR__QUEUE_FULL && waited < 60_000 && isOpen {
                        waited += 1
                        try? await Task.sleep(for: .milliseconds(1))
                        continue
                    }
                    batch.reported(error)
                    break
                }
                if batch.hasFailed { break }
            }
        }
        try await batch.wait()
        withExtendedLifetime(batch) {}
    }

    /// Waits until no caller enqueues, then up to `timeout` for outstanding messages; stops
    /// the thread and destroys the handles. A second caller waits for the first. Idempotent.
    func close(timeout: Duration) async {
        let action = shared.withLock { $0.machine.beginClose() }
        let client: RDKafkaClient
        switch action {
        case .none:
            return
        case .wait:
            _ = try? await Waiters.wait(in: shared, \.closeWaiters, cancelled: nil) { $0.machine.isClosed ? .success(()) : nil }
            return
        case .flush(let flushing):
            client = flushing
        }
        _ = try? await Waiters.wait(in: shared, \.idleWaiters, cancelled: nil) { $0.machine.isIdle ? .success(()) : nil }
        _ = try? await KafkaClient.offload("flush") { () throws(CourierError) in
            client.flush(timeout: timeout)
            // Whatever is still queued fails with a delivery report now: nobody waits forever.
            client.purge()
            client.flush(timeout: .seconds(1))
        }
        shared.withLock { $0.machine.flushed() }
        await finished.wait()
        if let handles = shared.withLock({ $0.machine.pollStopped() }) {
            let topics = UncheckedSendable(Array(handles.topics.values))
            _ = try? await KafkaClient.offload("destroy") { () throws(CourierError) in
                for rkt in topics.value { client.destroyTopic(rkt) }
                client.destroy()
            }
        }
        let waiters = shared.withLock { shared in
            shared.machine.destroyed()
            return shared.closeWaiters.removeAll()
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// The messages of one `produce` call: counts delivery reports and resumes the caller after
/// the last one, with the first error if any.
final class ProduceBatch: @unchecked Sendable {
    private struct State {
        var error: CourierError?
        var continuation: UnsafeContinuation<CourierError?, Never>?
    }
    let topic: String
    /// Messages enqueued and not yet reported, plus one while the batch is still being
    /// enqueued (so the count cannot reach zero early).
    private let pending = Atomic<Int>(1)
    private let state = Mutex(State())

    init(topic: String) { self.topic = topic }

    func add() { pending.add(1, ordering: .relaxed) }

    var hasFailed: Bool { state.withLock { $0.error != nil } }

    /// A delivery report (or a failed enqueue) for one message.
    func reported(_ error: rd_kafka_resp_err_t) {
        if error != RD_KAFKA_RESP_ERR_NO_ERROR {
            state.withLock { state in
                if state.error == nil { state.error = KafkaClient.error(error, "publishing to \(topic)") }
            }
        }
        if pending.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { finish() }
    }

    private func finish() {
        let resume = state.withLock { state -> (UnsafeContinuation<CourierError?, Never>, CourierError?)? in
            guard let continuation = state.continuation else { return nil }
            state.continuation = nil
            return (continuation, state.error)
        }
        if let (continuation, error) = resume { continuation.resume(returning: error) }
    }

    /// Waits for every report of the batch.
    func wait() async throws(CourierError) {
        let error = await withUnsafeContinuation { (continuation: UnsafeContinuation<CourierError?, Never>) in
            state.withLock { $0.continuation = continuation }
            // Drop the enqueueing guard; whoever takes the count to zero resumes.
            if pending.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { finish() }
        }
        if let error { throw error }
    }
}
