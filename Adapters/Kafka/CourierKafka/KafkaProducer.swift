import Courier
import Crdkafka
import Foundation
import Logging
import Synchronization

/// The transport's producer: idempotent, `acks=all`, with a thread of its own that serves
/// delivery reports. `produce` enqueues every message of a batch without waiting (librdkafka
/// pipelines them) and resumes the caller when the last delivery report of the batch arrives.
final class KafkaProducer: @unchecked Sendable {
    /// The producer handle; safe to use from any thread (librdkafka's producer API is
    /// thread-safe), destroyed only by ``close(timeout:)``.
    let rk: OpaquePointer
    private let settings: KafkaSettings
    private let topics = Mutex<[String: OpaquePointer]>([:])
    private let known = Mutex<Set<String>>([])
    private let stopping = Atomic<Bool>(false)
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
        let conf = try KafkaClient.configuration(properties)
        rd_kafka_conf_set_dr_msg_cb(conf) { _, message, _ in
            guard let message, let opaque = message.pointee._private else { return }
            Unmanaged<ProduceBatch>.fromOpaque(opaque).takeUnretainedValue().reported(message.pointee.err)
        }
        rk = try KafkaClient.handle(RD_KAFKA_PRODUCER, conf, logger: logger)
        let thread = Thread { [self] in pollLoop() }
        thread.name = "courier.kafka.producer"
        thread.start()
    }

    /// Serves delivery reports until ``close(timeout:)``.
    private func pollLoop() {
        while !stopping.load(ordering: .acquiring) {
            rd_kafka_poll(rk, 50)
        }
        finished.open()
    }

    /// The cached topic handle for `topic`.
    private func handle(for topic: String) -> OpaquePointer {
        topics.withLock { topics in
            if let rkt = topics[topic] { return rkt }
            let rkt = rd_kafka_topic_new(rk, topic, nil)!
            topics[topic] = rkt
            return rkt
        }
    }

    /// Makes sure `topic` exists, creating it as ``KafkaSettings/topicCreation`` says. Known
    /// topics cost nothing.
    func ensureTopic(_ topic: String, timeout: Duration) async throws(CourierError) {
        if known.withLock({ $0.contains(topic) }) { return }
        let rkt = SendableHandle(raw: handle(for: topic))
        let settings = settings
        let rk = SendableHandle(raw: rk)
        try await KafkaClient.offload("metadata") { () throws(CourierError) in
            let deadline = ContinuousClock.now + timeout
            var created = false
            while true {
                let (count, error) = Self.partitionCount(rk.raw, rkt.raw, topic, timeout: timeout)
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
                        try Self.createTopic(rk.raw, topic, settings: settings, timeout: timeout)
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
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
        known.withLock { _ = $0.insert(topic) }
    }

    /// The partition count of `topic` from a metadata request (blocking).
    static func partitionCount(_ rk: OpaquePointer, _ rkt: OpaquePointer?, _ topic: String, timeout: Duration) -> (
        count: Int, error: rd_kafka_resp_err_t
    ) {
        guard let rkt else {
            let temporary = rd_kafka_topic_new(rk, topic, nil)
            defer { rd_kafka_topic_destroy(temporary) }
            return partitionCount(rk, temporary, topic, timeout: timeout)
        }
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let error = rd_kafka_metadata(rk, 0, rkt, &metadata, KafkaClient.milliseconds(timeout))
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else { return (0, error) }
        defer { rd_kafka_metadata_destroy(metadata) }
        let topics = UnsafeBufferPointer(start: metadata.pointee.topics, count: Int(metadata.pointee.topic_cnt))
        guard let entry = topics.first(where: { String(cString: $0.topic) == topic }) else {
            return (0, RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
        }
        return (Int(entry.partition_cnt), entry.err)
    }

    /// Creates `topic` with the Admin API (blocking). An existing topic is fine.
    private static func createTopic(_ rk: OpaquePointer, _ topic: String, settings: KafkaSettings, timeout: Duration) throws(CourierError) {
        var error = [CChar](repeating: 0, count: 512)
        guard
            let newTopic = rd_kafka_NewTopic_new(topic, Int32(settings.partitions), Int32(settings.replicationFactor), &error, error.count)
        else {
            throw CourierError(.invalidConfiguration, "cannot create topic \(topic): \(KafkaClient.text(error))")
        }
        defer { rd_kafka_NewTopic_destroy(newTopic) }
        let queue = rd_kafka_queue_new(rk)
        defer { rd_kafka_queue_destroy(queue) }
        let options = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS)
        defer { rd_kafka_AdminOptions_destroy(options) }
        _ = rd_kafka_AdminOptions_set_request_timeout(options, KafkaClient.milliseconds(timeout), &error, error.count)
        var topics: [OpaquePointer?] = [newTopic]
        rd_kafka_CreateTopics(rk, &topics, 1, options, queue)
        guard let event = rd_kafka_queue_poll(queue, KafkaClient.milliseconds(timeout) + 1000) else {
            throw CourierError(
                .timeout,
                "creating topic \(topic) got no answer within \(timeout); if the broker has no Admin API (librdkafka's mock cluster), use create_topics=auto"
            )
        }
        defer { rd_kafka_event_destroy(event) }
        let eventError = rd_kafka_event_error(event)
        if eventError != RD_KAFKA_RESP_ERR_NO_ERROR {
            throw KafkaClient.error(eventError, "creating topic \(topic)")
        }
        var count = 0
        if let result = rd_kafka_event_CreateTopics_result(event), let results = rd_kafka_CreateTopics_result_topics(result, &count) {
            for index in 0..<count {
                let topicError = rd_kafka_topic_result_error(results[index])
                if topicError != RD_KAFKA_RESP_ERR_NO_ERROR && topicError != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS {
                    let message =
                        rd_kafka_topic_result_error_string(results[index]).map { String(cString: $0) } ?? KafkaClient.describe(topicError)
                    throw CourierError(.brokerRejected, "creating topic \(topic) with \(settings.partitions) partitions: \(message)")
                }
            }
        }
    }

    /// Produces `envelopes` to `topic` in order and returns once every one is confirmed by
    /// its delivery report. `attempt` gives each message's delivery attempt header.
    func produce(_ envelopes: [Envelope], to topic: String, attempt: (Int) -> Int = { _ in 1 }) async throws(CourierError) {
        guard !envelopes.isEmpty else { return }
        guard !stopping.load(ordering: .relaxed) else { throw KafkaTransport.closedError }
        let rkt = handle(for: topic)
        let batch = ProduceBatch(topic: topic)
        for (index, envelope) in envelopes.enumerated() {
            let headers = rd_kafka_headers_new(8)!
            WireFormat.forEachHeader(of: envelope, attempt: attempt(index)) { name, value in
                var (name, value) = (name, value)
                name.withUTF8 { name in
                    value.withUTF8 { bytes in
                        name.withMemoryRebound(to: CChar.self) { name in
                            _ = rd_kafka_header_add(headers, name.baseAddress, name.count, bytes.baseAddress, bytes.count)
                        }
                    }
                }
            }
            batch.add()
            // `batch` outlives every report: this function holds it until `wait` returns.
            let opaque = Unmanaged.passUnretained(batch).toOpaque()
            var waited = 0
            while true {
                let error = Self.produce(rk, rkt, envelope, headers, opaque)
                if error == RD_KAFKA_RESP_ERR_NO_ERROR { break }
                if error == RD_KAFKA_RESP_ERR__QUEUE_FULL && waited < 60_000 && !stopping.load(ordering: .relaxed) {
                    // librdkafka's queue is full: wait for delivery reports to drain it.
                    waited += 1
                    try? await Task.sleep(for: .milliseconds(1))
                    continue
                }
                rd_kafka_headers_destroy(headers)
                batch.reported(error)
                break
            }
            if batch.hasFailed { break }
        }
        try await batch.wait()
        withExtendedLifetime(batch) {}
    }

    private static func produce(
        _ rk: OpaquePointer, _ rkt: OpaquePointer, _ envelope: Envelope, _ headers: OpaquePointer, _ opaque: UnsafeMutableRawPointer
    ) -> rd_kafka_resp_err_t {
        envelope.payload.withUnsafeBytes { payload in
            if var key = envelope.key {
                return key.withUTF8 { key in
                    courier_rdk_produce(
                        rk, rkt, courier_rdk_partition_ua(), payload.baseAddress, payload.count, key.baseAddress, key.count, headers, opaque
                    )
                }
            }
            return courier_rdk_produce(rk, rkt, courier_rdk_partition_ua(), payload.baseAddress, payload.count, nil, 0, headers, opaque)
        }
    }

    /// Waits up to `timeout` for outstanding messages, stops the thread and destroys the
    /// handle. Idempotent.
    func close(timeout: Duration) async {
        guard !stopping.load(ordering: .acquiring) else { return }
        let rk = SendableHandle(raw: rk)
        _ = try? await KafkaClient.offload("flush") { () throws(CourierError) in
            _ = rd_kafka_flush(rk.raw, KafkaClient.milliseconds(timeout))
            // Whatever is still queued fails with a delivery report now: nobody waits forever.
            _ = rd_kafka_purge(rk.raw, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
            _ = rd_kafka_flush(rk.raw, 1000)
        }
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        await finished.wait()
        let handles = topics.withLock { topics in
            defer { topics.removeAll() }
            return topics.values.map { SendableHandle(raw: $0) }
        }
        _ = try? await KafkaClient.offload("destroy") { () throws(CourierError) in
            for rkt in handles { rd_kafka_topic_destroy(rkt.raw) }
            KafkaClient.destroy(rk.raw)
        }
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
