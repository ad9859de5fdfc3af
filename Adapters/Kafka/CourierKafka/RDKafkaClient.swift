import Courier
import Crdkafka
import Foundation
import Logging

/// Every librdkafka call the adapter makes, and nothing else: handles, configuration,
/// callbacks, topics, produce, poll, subscribe, assign, commit, offsets, queues, messages, the
/// mock cluster. What to call and when is decided elsewhere (``KafkaProducer``,
/// ``KafkaGroupMember`` with ``KafkaMemberState``, ``KafkaTransport``); errors come back as
/// librdkafka's codes and ``KafkaClient/error(_:_:)`` turns them into Courier's.
///
/// librdkafka's handles are thread-safe; blocking calls (metadata, flush, committed, offsets,
/// polls) are made only on threads the adapter owns (``KafkaClient/offload(_:_:)`` or a
/// member's or the producer's thread), never on Swift's cooperative pool.
final class RDKafkaClient: @unchecked Sendable {
    enum Kind {
        case producer
        case consumer
    }

    /// What the client's callbacks reach. librdkafka calls them on the thread that polls.
    enum Callbacks {
        case none
        /// Producer: each delivery report goes to the ``ProduceBatch`` passed as the message's
        /// opaque.
        case deliveryReports
        /// Consumer: rebalances go to the member, which must outlive the handle.
        case rebalances(KafkaGroupMember)
    }

    fileprivate let handle: OpaquePointer
    /// librdkafka's name for the client (`client.id` plus a counter): the key of its logger.
    let name: String

    /// The version of the linked librdkafka.
    static var version: String { String(cString: rd_kafka_version_str()) }

    /// Partition "unassigned" and offset "invalid" (macros Swift does not import).
    static let unassignedPartition = courier_rdk_partition_ua()
    static let invalidOffset = courier_rdk_offset_invalid()

    /// librdkafka's text for `error`.
    static func describe(_ error: rd_kafka_resp_err_t) -> String {
        String(cString: rd_kafka_err2str(error))
    }

    // MARK: Creating and destroying

    /// A client of `kind` configured with `properties`, whose log lines go to `logger`.
    /// Destroy it with ``destroy()``.
    init(_ kind: Kind, properties: [(String, String)], callbacks: Callbacks = .none, logger: Logger? = nil) throws(CourierError) {
        let conf = rd_kafka_conf_new()!
        var error = [CChar](repeating: 0, count: 512)
        for (key, value) in properties where rd_kafka_conf_set(conf, key, value, &error, error.count) != RD_KAFKA_CONF_OK {
            rd_kafka_conf_destroy(conf)
            let shown = key.contains("password") || key.contains("secret") ? "******" : value
            throw CourierError(
                .invalidConfiguration,
                "librdkafka refused property \(key)=\(shown): \(Self.text(error)); see librdkafka's CONFIGURATION.md for \(Self.version)"
            )
        }
        rd_kafka_conf_set_log_cb(conf) { rk, level, facility, text in
            KafkaLogs.log(
                RDKafkaClient.name(of: rk), level: level, facility: facility.map { String(cString: $0) } ?? "",
                text: text.map { String(cString: $0) } ?? "")
        }
        // Without an error callback librdkafka logs every error a second time.
        rd_kafka_conf_set_error_cb(conf) { rk, error, reason, _ in
            let code = rd_kafka_resp_err_t(rawValue: error)
            KafkaLogs.error(
                RDKafkaClient.name(of: rk), code, text: RDKafkaClient.describe(code), reason: reason.map { String(cString: $0) } ?? "")
        }
        switch callbacks {
        case .none:
            break
        case .deliveryReports:
            rd_kafka_conf_set_dr_msg_cb(conf) { _, message, _ in
                guard let message, let opaque = message.pointee._private else { return }
                Unmanaged<ProduceBatch>.fromOpaque(opaque).takeUnretainedValue().reported(message.pointee.err)
            }
        case .rebalances(let member):
            rd_kafka_conf_set_rebalance_cb(conf) { _, error, partitions, opaque in
                guard let partitions, let opaque else { return }
                let member = Unmanaged<KafkaGroupMember>.fromOpaque(opaque).takeUnretainedValue()
                let list = PartitionList(copying: partitions)
                if error == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS { member.assigned(list) } else { member.revoked(list) }
            }
            rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(member).toOpaque())
        }
        guard let rk = rd_kafka_new(kind == .producer ? RD_KAFKA_PRODUCER : RD_KAFKA_CONSUMER, conf, &error, error.count) else {
            rd_kafka_conf_destroy(conf)
            throw CourierError(.invalidConfiguration, "librdkafka could not create a client: \(Self.text(error))")
        }
        handle = rk
        name = Self.name(of: rk)
        if let logger { KafkaLogs.register(name, logger) }
    }

    /// Destroys the handle (blocking: it closes the connections). Call once, last.
    func destroy() {
        // Log lines written while it closes still find its logger; the entry goes afterwards.
        rd_kafka_destroy(handle)
        KafkaLogs.deregister(name)
    }

    private static func name(of rk: OpaquePointer?) -> String {
        rk.map { String(cString: rd_kafka_name($0)) } ?? ""
    }

    /// The text librdkafka wrote into an error buffer.
    private static func text(_ buffer: [CChar]) -> String {
        buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    // MARK: Metadata and topics

    /// Asks a broker for the cluster's metadata (blocking): a check that one answers.
    func ping(timeout: Duration) -> rd_kafka_resp_err_t {
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let error = rd_kafka_metadata(handle, 0, nil, &metadata, KafkaClient.milliseconds(timeout))
        if let metadata { rd_kafka_metadata_destroy(metadata) }
        return error
    }

    /// A topic handle for producing; destroy it with ``destroyTopic(_:)``.
    func topic(_ name: String) -> OpaquePointer {
        rd_kafka_topic_new(handle, name, nil)!
    }

    func destroyTopic(_ topic: OpaquePointer) {
        rd_kafka_topic_destroy(topic)
    }

    /// The partition count of `topic` from a metadata request (blocking); `handle` is its
    /// topic handle if the caller has one.
    func partitionCount(_ topic: String, handle topicHandle: OpaquePointer? = nil, timeout: Duration) -> (
        count: Int, error: rd_kafka_resp_err_t
    ) {
        guard let topicHandle else {
            let temporary = self.topic(topic)
            defer { destroyTopic(temporary) }
            return partitionCount(topic, handle: temporary, timeout: timeout)
        }
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let error = rd_kafka_metadata(handle, 0, topicHandle, &metadata, KafkaClient.milliseconds(timeout))
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else { return (0, error) }
        defer { rd_kafka_metadata_destroy(metadata) }
        let topics = UnsafeBufferPointer(start: metadata.pointee.topics, count: Int(metadata.pointee.topic_cnt))
        guard let entry = topics.first(where: { String(cString: $0.topic) == topic }) else {
            return (0, RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
        }
        return (Int(entry.partition_cnt), entry.err)
    }

    /// Creates `topic` with the Admin API (blocking). An existing topic is fine.
    func createTopic(_ topic: String, partitions: Int, replicationFactor: Int, timeout: Duration) throws(CourierError) {
        var error = [CChar](repeating: 0, count: 512)
        guard let newTopic = rd_kafka_NewTopic_new(topic, Int32(partitions), Int32(replicationFactor), &error, error.count) else {
            throw CourierError(.invalidConfiguration, "cannot create topic \(topic): \(Self.text(error))")
        }
        defer { rd_kafka_NewTopic_destroy(newTopic) }
        let queue = rd_kafka_queue_new(handle)
        defer { rd_kafka_queue_destroy(queue) }
        let options = rd_kafka_AdminOptions_new(handle, RD_KAFKA_ADMIN_OP_CREATETOPICS)
        defer { rd_kafka_AdminOptions_destroy(options) }
        _ = rd_kafka_AdminOptions_set_request_timeout(options, KafkaClient.milliseconds(timeout), &error, error.count)
        var topics: [OpaquePointer?] = [newTopic]
        rd_kafka_CreateTopics(handle, &topics, 1, options, queue)
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
                        rd_kafka_topic_result_error_string(results[index]).map { String(cString: $0) } ?? Self.describe(topicError)
                    throw CourierError(.brokerRejected, "creating topic \(topic) with \(partitions) partitions: \(message)")
                }
            }
        }
    }

    // MARK: Producing

    /// Serves delivery reports for up to `milliseconds`.
    func poll(milliseconds: Int32) {
        rd_kafka_poll(handle, milliseconds)
    }

    /// A header list holding Courier's headers of `envelope`; owned by the caller until a
    /// ``produce(_:to:headers:opaque:)`` succeeds, then by librdkafka.
    static func headers(of envelope: Envelope, attempt: Int) -> OpaquePointer {
        let headers = rd_kafka_headers_new(8)!
        WireFormat.forEachHeader(of: envelope, attempt: attempt) { name, value in
            var (name, value) = (name, value)
            name.withUTF8 { name in
                value.withUTF8 { bytes in
                    name.withMemoryRebound(to: CChar.self) { name in
                        _ = rd_kafka_header_add(headers, name.baseAddress, name.count, bytes.baseAddress, bytes.count)
                    }
                }
            }
        }
        return headers
    }

    static func destroyHeaders(_ headers: OpaquePointer) {
        rd_kafka_headers_destroy(headers)
    }

    /// Enqueues `envelope`'s payload and key (copied) with `headers` to any partition of
    /// `topic` (the key's, by librdkafka's partitioner); its delivery report reaches the
    /// ``ProduceBatch`` behind `opaque`.
    func produce(_ envelope: Envelope, to topic: OpaquePointer, headers: OpaquePointer, opaque: UnsafeMutableRawPointer)
        -> rd_kafka_resp_err_t
    {
        let partition = Self.unassignedPartition
        return envelope.payload.withUnsafeBytes { payload in
            if var key = envelope.key {
                return key.withUTF8 { key in
                    courier_rdk_produce(
                        handle, topic, partition, payload.baseAddress, payload.count, key.baseAddress, key.count, headers, opaque)
                }
            }
            return courier_rdk_produce(handle, topic, partition, payload.baseAddress, payload.count, nil, 0, headers, opaque)
        }
    }

    /// Waits up to `timeout` for outstanding deliveries (blocking).
    func flush(timeout: Duration) {
        _ = rd_kafka_flush(handle, KafkaClient.milliseconds(timeout))
    }

    /// Fails everything still queued or in flight with a delivery report.
    func purge() {
        _ = rd_kafka_purge(handle, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
    }

    // MARK: Consuming

    /// Routes the main queue (rebalance events) to the consumer queue, which one poll serves.
    func pollSetConsumer() {
        rd_kafka_poll_set_consumer(handle)
    }

    /// The consumer's queue (messages, and rebalances after ``pollSetConsumer()``).
    func consumerQueue() -> RDKafkaQueue {
        RDKafkaQueue(rd_kafka_queue_get_consumer(handle)!)
    }

    /// A queue of the client's own, e.g. for commit results.
    func newQueue() -> RDKafkaQueue {
        RDKafkaQueue(rd_kafka_queue_new(handle)!)
    }

    func subscribe(_ topics: [String]) -> rd_kafka_resp_err_t {
        let subscription = PartitionList(capacity: topics.count)
        for topic in topics { subscription.add(topic, Self.unassignedPartition) }
        return rd_kafka_subscribe(handle, subscription.list)
    }

    /// Polls one message or event for up to `milliseconds` (blocking); serves rebalances.
    func consumerPoll(milliseconds: Int32) -> RDKafkaMessage? {
        rd_kafka_consumer_poll(handle, milliseconds).map(RDKafkaMessage.init)
    }

    /// Leaves the group (blocking; rebalance callbacks run inside).
    func consumerClose() {
        _ = rd_kafka_consumer_close(handle)
    }

    /// The current assignment.
    func assignment() -> PartitionList? {
        var assignment: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
        guard rd_kafka_assignment(handle, &assignment) == RD_KAFKA_RESP_ERR_NO_ERROR, let assignment else { return nil }
        return PartitionList(taking: assignment)
    }

    /// How many messages `partitions` hold beyond this consumer's position, from the high
    /// watermarks of the last fetch responses (no broker request); `nil` before any is known.
    func lag(of partitions: PartitionList) -> Int? {
        guard rd_kafka_position(handle, partitions.list) == RD_KAFKA_RESP_ERR_NO_ERROR else { return nil }
        var lag: Int?
        for element in partitions.elements where element.offset >= 0 {
            var low: Int64 = -1
            var high: Int64 = -1
            guard rd_kafka_get_watermark_offsets(handle, element.topic, element.partition, &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR,
                high >= 0
            else { continue }
            lag = (lag ?? 0) + Int(max(0, high - element.offset))
        }
        return lag
    }

    func pause(_ partitions: PartitionList) {
        _ = rd_kafka_pause_partitions(handle, partitions.list)
    }

    func resume(_ partitions: PartitionList) {
        _ = rd_kafka_resume_partitions(handle, partitions.list)
    }

    /// Replaces the assignment (eager protocol); `nil` gives every partition up.
    func assign(_ partitions: PartitionList?) {
        _ = rd_kafka_assign(handle, partitions?.list)
    }

    /// Adds to the assignment (cooperative protocol); librdkafka's error text if it refused.
    func incrementalAssign(_ partitions: PartitionList) -> String? {
        Self.consume(rd_kafka_incremental_assign(handle, partitions.list))
    }

    /// Removes from the assignment (cooperative protocol); librdkafka's error text if it refused.
    func incrementalUnassign(_ partitions: PartitionList) -> String? {
        Self.consume(rd_kafka_incremental_unassign(handle, partitions.list))
    }

    private static func consume(_ error: OpaquePointer?) -> String? {
        guard let error else { return nil }
        defer { rd_kafka_error_destroy(error) }
        return String(cString: rd_kafka_error_string(error))
    }

    /// Whether the group uses the cooperative (incremental) rebalance protocol.
    var isCooperative: Bool {
        rd_kafka_rebalance_protocol(handle).map { String(cString: $0) } == "COOPERATIVE"
    }

    /// Whether the current assignment was lost (inside a revoke): the group moved on without us.
    var assignmentLost: Bool {
        rd_kafka_assignment_lost(handle) != 0
    }

    // MARK: Offsets

    /// Commits `offsets` synchronously (blocking).
    func commit(_ offsets: PartitionList) -> rd_kafka_resp_err_t {
        rd_kafka_commit(handle, offsets.list, 0)
    }

    /// Sends a commit of `offsets` whose result arrives on `results` tagged with `tag`.
    func commit(_ offsets: PartitionList, resultsTo results: RDKafkaQueue, tag: Int) -> rd_kafka_resp_err_t {
        rd_kafka_commit_queue(handle, offsets.list, results.queue, nil, UnsafeMutableRawPointer(bitPattern: tag))
    }

    /// Fills in the group's committed offsets of `partitions` (blocking).
    func committed(_ partitions: PartitionList, timeout: Duration) -> rd_kafka_resp_err_t {
        rd_kafka_committed(handle, partitions.list, KafkaClient.milliseconds(timeout))
    }

    /// The first and one-past-last offset of a partition (blocking).
    func watermarks(_ topic: String, _ partition: Int32, timeout: Duration) -> (low: Int64, high: Int64, error: rd_kafka_resp_err_t) {
        var low: Int64 = 0
        var high: Int64 = 0
        let error = rd_kafka_query_watermark_offsets(handle, topic, partition, &low, &high, KafkaClient.milliseconds(timeout))
        return (low, high, error)
    }

    /// Replaces each entry's offset (a time in ms since 1970) with the first offset at or after
    /// that time, -1 if none (blocking).
    func offsetsForTimes(_ partitions: PartitionList, timeout: Duration) -> rd_kafka_resp_err_t {
        rd_kafka_offsets_for_times(handle, partitions.list, KafkaClient.milliseconds(timeout))
    }
}

/// A librdkafka event queue. Destroy it with ``destroy()`` before its client.
final class RDKafkaQueue: @unchecked Sendable {
    fileprivate let queue: OpaquePointer

    fileprivate init(_ queue: OpaquePointer) { self.queue = queue }

    func destroy() {
        rd_kafka_queue_destroy(queue)
    }

    /// Wakes a thread blocked polling this queue.
    func yield() {
        rd_kafka_queue_yield(queue)
    }

    /// Polls up to `capacity` messages for up to `milliseconds` (blocking) into `buffer`.
    func consumeBatch(
        milliseconds: Int32, into buffer: UnsafeMutableBufferPointer<UnsafeMutablePointer<rd_kafka_message_t>?>, capacity: Int
    )
        -> Int
    {
        rd_kafka_consume_batch_queue(queue, milliseconds, buffer.baseAddress, max(1, min(capacity, buffer.count)))
    }

    /// The next commit result, waiting up to `milliseconds` (blocking).
    func pollCommitResult(milliseconds: Int32) -> RDKafkaCommitResult? {
        guard let event = rd_kafka_queue_poll(queue, milliseconds) else { return nil }
        defer { rd_kafka_event_destroy(event) }
        let error = rd_kafka_event_error(event)
        return RDKafkaCommitResult(
            error: error,
            tag: Int(bitPattern: rd_kafka_event_opaque(event)),
            text: error == RD_KAFKA_RESP_ERR_NO_ERROR ? "" : String(cString: rd_kafka_event_error_string(event)),
            offsets: rd_kafka_event_topic_partition_list(event).map { PartitionList(copying: $0) }
        )
    }
}

/// The result of an offset commit sent with a results queue.
struct RDKafkaCommitResult {
    let error: rd_kafka_resp_err_t
    /// The tag it was sent with.
    let tag: Int
    /// librdkafka's text for the error ("" without one).
    let text: String
    /// The offsets, each with its own error.
    let offsets: PartitionList?
}

/// A polled message, borrowed from librdkafka until ``destroy()``.
struct RDKafkaMessage {
    let message: UnsafeMutablePointer<rd_kafka_message_t>

    init(_ message: UnsafeMutablePointer<rd_kafka_message_t>) { self.message = message }

    func destroy() { rd_kafka_message_destroy(message) }

    var error: rd_kafka_resp_err_t { message.pointee.err }
    var partition: Int32 { message.pointee.partition }
    var offset: Int64 { message.pointee.offset }
    var payload: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: message.pointee.payload, count: message.pointee.len) }
    var key: UnsafeRawBufferPointer? { message.pointee.key.map { UnsafeRawBufferPointer(start: $0, count: message.pointee.key_len) } }

    /// The topic's name (valid while the message lives).
    var topicName: UnsafePointer<CChar>? { message.pointee.rkt.map { rd_kafka_topic_name($0) } }

    /// The message's time in ms since 1970, or -1.
    var timestamp: Int64 {
        var type = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        return rd_kafka_message_timestamp(message, &type)
    }

    /// Calls `body` with each header's name and value bytes, in order.
    func forEachHeader(_ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void) {
        var list: OpaquePointer?
        guard rd_kafka_message_headers(message, &list) == RD_KAFKA_RESP_ERR_NO_ERROR, let list else { return }
        var index = 0
        var name: UnsafePointer<CChar>?
        var value: UnsafeRawPointer?
        var size = 0
        while rd_kafka_header_get_all(list, index, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
            if let name {
                body(
                    UnsafeRawBufferPointer(start: name, count: strlen(name)),
                    UnsafeRawBufferPointer(start: value, count: value == nil ? 0 : size))
            }
            index += 1
        }
    }
}

/// A `rd_kafka_topic_partition_list_t` owned by Swift.
final class PartitionList {
    let list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>

    init(capacity: Int = 4) {
        list = rd_kafka_topic_partition_list_new(Int32(max(1, capacity)))
    }

    /// Takes ownership of a list librdkafka returned.
    init(taking list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) {
        self.list = list
    }

    /// A copy of a list librdkafka lends (in a callback).
    init(copying list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) {
        self.list = rd_kafka_topic_partition_list_copy(list)
    }

    deinit { rd_kafka_topic_partition_list_destroy(list) }

    func add(_ topic: String, _ partition: Int32, offset: Int64 = RDKafkaClient.invalidOffset) {
        rd_kafka_topic_partition_list_add(list, topic, partition).pointee.offset = offset
    }

    var count: Int { Int(list.pointee.cnt) }

    var elements: UnsafeMutableBufferPointer<rd_kafka_topic_partition_t> {
        UnsafeMutableBufferPointer(start: list.pointee.elems, count: count)
    }
}

/// librdkafka's mock cluster (`rdkafka_mock.h`), behind ``KafkaMockCluster``.
final class RDKafkaMockCluster: @unchecked Sendable {
    private let host: RDKafkaClient
    private let cluster: OpaquePointer
    /// `host:port` of every broker, comma-separated.
    let bootstraps: String

    init(brokers: Int) throws(CourierError) {
        host = try RDKafkaClient(.producer, properties: [("log_level", "3")])
        guard let cluster = rd_kafka_mock_cluster_new(host.handle, Int32(brokers)) else {
            host.destroy()
            throw CourierError(.unreachable, "librdkafka could not start a mock cluster of \(brokers) brokers")
        }
        self.cluster = cluster
        bootstraps = String(cString: rd_kafka_mock_cluster_bootstraps(cluster))
    }

    deinit {
        rd_kafka_mock_cluster_destroy(cluster)
        host.destroy()
    }

    func createTopic(_ topic: String, partitions: Int, replicationFactor: Int) -> rd_kafka_resp_err_t {
        rd_kafka_mock_topic_create(cluster, topic, Int32(partitions), Int32(replicationFactor))
    }

    func setBroker(_ id: Int, up: Bool) {
        _ = up ? rd_kafka_mock_broker_set_up(cluster, Int32(id)) : rd_kafka_mock_broker_set_down(cluster, Int32(id))
    }

    func setPartitionLeader(_ topic: String, partition: Int, broker id: Int) -> rd_kafka_resp_err_t {
        rd_kafka_mock_partition_set_leader(cluster, topic, Int32(partition), Int32(id))
    }

    func setGroupCoordinator(_ group: String, broker id: Int) -> rd_kafka_resp_err_t {
        rd_kafka_mock_coordinator_set(cluster, "group", group, Int32(id))
    }

    func setRoundTripTime(broker id: Int, _ rtt: Duration) {
        _ = rd_kafka_mock_broker_set_rtt(cluster, Int32(id), KafkaClient.milliseconds(rtt))
    }

    func failRequests(_ api: Int16, with error: Int32, count: Int) {
        var errors = [rd_kafka_resp_err_t](repeating: rd_kafka_resp_err_t(rawValue: error), count: count)
        rd_kafka_mock_push_request_errors_array(cluster, api, count, &errors)
    }

    func setTopicError(_ topic: String, _ error: Int32) {
        rd_kafka_mock_topic_set_error(cluster, topic, rd_kafka_resp_err_t(rawValue: error))
    }

    func clearRequestErrors(_ api: Int16) {
        rd_kafka_mock_clear_request_errors(cluster, api)
    }
}

/// A librdkafka pointer passed to a thread of ours. librdkafka's handles are thread-safe.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
