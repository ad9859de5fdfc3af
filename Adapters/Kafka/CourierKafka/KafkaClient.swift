import Courier
import Crdkafka
import Foundation
import Logging
import Synchronization

/// Building librdkafka handles from ``KafkaSettings``, and the helpers every part of the
/// adapter shares: error text, and running a blocking librdkafka call on a thread of our own.
enum KafkaClient {
    /// The librdkafka properties for `settings`: servers, client id, security, then the
    /// pass-through properties (which win).
    static func properties(_ settings: KafkaSettings) -> [(String, String)] {
        var properties: [(String, String)] = [
            ("bootstrap.servers", settings.bootstrapServers.map(\.description).joined(separator: ",")),
            ("client.id", settings.clientID),
            ("security.protocol", settings.securityProtocol),
            ("log_level", "3"),
            ("log.connection.close", "false"),
        ]
        if let mechanism = settings.saslMechanism { properties.append(("sasl.mechanism", mechanism)) }
        if let username = settings.username { properties.append(("sasl.username", username)) }
        if let password = settings.password { properties.append(("sasl.password", password.revealed)) }
        if let tls = settings.tls {
            if let file = tls.caCertificateFile { properties.append(("ssl.ca.location", file)) }
            if let file = tls.certificateFile { properties.append(("ssl.certificate.location", file)) }
            if let file = tls.keyFile { properties.append(("ssl.key.location", file)) }
            if !tls.verifyPeer {
                properties.append(("enable.ssl.certificate.verification", "false"))
                properties.append(("ssl.endpoint.identification.algorithm", "none"))
            }
        }
        for (key, value) in settings.properties.sorted(by: { $0.key < $1.key }) { properties.append((key, value)) }
        return properties
    }

    /// A new configuration object holding `properties`; the caller passes it to `rd_kafka_new`
    /// (which takes ownership) or destroys it.
    static func configuration(_ properties: [(String, String)]) throws(CourierError) -> OpaquePointer {
        let conf = rd_kafka_conf_new()!
        var error = [CChar](repeating: 0, count: 512)
        for (key, value) in properties {
            if rd_kafka_conf_set(conf, key, value, &error, error.count) != RD_KAFKA_CONF_OK {
                rd_kafka_conf_destroy(conf)
                let shown = key.contains("password") || key.contains("secret") ? "******" : value
                throw CourierError(
                    .invalidConfiguration,
                    "librdkafka refused property \(key)=\(shown): \(KafkaClient.text(error)); see librdkafka's CONFIGURATION.md for \(KafkaTransport.librdkafkaVersion)"
                )
            }
        }
        return conf
    }

    /// A client of `type` with `conf` (consumed either way), whose librdkafka log lines go to
    /// `logger`. Destroy it with ``destroy(_:)``.
    static func handle(_ type: rd_kafka_type_t, _ conf: OpaquePointer, logger: Logger? = nil) throws(CourierError) -> OpaquePointer {
        rd_kafka_conf_set_log_cb(conf) { rk, level, facility, text in
            KafkaLogs.log(rk, level: level, facility: facility, text: text)
        }
        // Without an error callback librdkafka logs every error a second time.
        rd_kafka_conf_set_error_cb(conf) { rk, error, reason, _ in
            KafkaLogs.error(rk, error, reason: reason)
        }
        var error = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(type, conf, &error, error.count) else {
            rd_kafka_conf_destroy(conf)
            throw CourierError(.invalidConfiguration, "librdkafka could not create a client: \(KafkaClient.text(error))")
        }
        if let logger { KafkaLogs.register(rk, logger) }
        return rk
    }

    /// Runs `body` on a thread of its own with a short-lived consumer that belongs to
    /// `groupID` (for its committed offsets) but never commits by itself, passing it `topic`'s
    /// partition count; closes and destroys the consumer afterwards.
    static func withShortLivedConsumer<T: Sendable>(
        configuration: KafkaTransport.Configuration, groupID: String, topic: String, what: String,
        _ body: @escaping @Sendable (OpaquePointer, Int) throws(CourierError) -> T
    ) async throws -> T {
        var properties = properties(configuration.settings)
        properties.insert(
            contentsOf: [("group.id", groupID), ("enable.auto.commit", "false"), ("enable.auto.offset.store", "false")],
            at: properties.count - configuration.settings.properties.count
        )
        let conf = SendableHandle(raw: try self.configuration(properties))
        return try await offload(what) { () throws(CourierError) -> T in
            let rk = try handle(RD_KAFKA_CONSUMER, conf.raw, logger: configuration.logger)
            defer { destroy(rk) }
            rd_kafka_poll_set_consumer(rk)
            defer { rd_kafka_consumer_close(rk) }
            let (partitions, error) = KafkaProducer.partitionCount(rk, nil, topic, timeout: configuration.operationTimeout)
            guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaClient.error(error, what) }
            return try body(rk, partitions)
        }
    }

    /// Destroys a client made by ``handle(_:_:logger:)``.
    static func destroy(_ rk: OpaquePointer) {
        // Log lines written while it closes still find its logger; the entry goes afterwards.
        let name = String(cString: rd_kafka_name(rk))
        rd_kafka_destroy(rk)
        KafkaLogs.deregister(name)
    }

    /// The text librdkafka wrote into an error buffer.
    static func text(_ buffer: [CChar]) -> String {
        buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// librdkafka's text for `error`.
    static func describe(_ error: rd_kafka_resp_err_t) -> String {
        String(cString: rd_kafka_err2str(error))
    }

    /// A Courier error for a failed librdkafka operation, classified by its error code.
    /// The errors after which the same call may succeed: the broker or its network is away
    /// for a while, a partition's leader or the group's coordinator is moving, or the cluster
    /// is short of replicas (as Kafka's own `RetriableException`s).
    static func isRetriable(_ error: rd_kafka_resp_err_t) -> Bool {
        switch error {
        case RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, RD_KAFKA_RESP_ERR__RESOLVE,
            RD_KAFKA_RESP_ERR__TIMED_OUT, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT,
            RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE, RD_KAFKA_RESP_ERR__WAIT_COORD, RD_KAFKA_RESP_ERR__QUEUE_FULL,
            RD_KAFKA_RESP_ERR__NODE_UPDATE, RD_KAFKA_RESP_ERR__UNKNOWN_BROKER,
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_COORDINATOR, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS, RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION, RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_REPLICA_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR,
            RD_KAFKA_RESP_ERR_FETCH_SESSION_ID_NOT_FOUND, RD_KAFKA_RESP_ERR_OFFSET_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_PREFERRED_LEADER_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_THROTTLING_QUOTA_EXCEEDED,
            RD_KAFKA_RESP_ERR_UNSTABLE_OFFSET_COMMIT:
            true
        default:
            false
        }
    }

    static func error(_ error: rd_kafka_resp_err_t, _ what: String) -> CourierError {
        let classified = classify(error, what)
        guard isRetriable(error) else { return classified }
        return CourierError(classified.code, classified.message, isRetriable: true)
    }

    private static func classify(_ error: rd_kafka_resp_err_t, _ what: String) -> CourierError {
        let text = describe(error)
        switch error {
        case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE, RD_KAFKA_RESP_ERR_INVALID_RECORD:
            return CourierError(
                .payloadTooLarge,
                "\(what): the broker refused the message as too large (\(text)); raise the topic's max.message.bytes or send less")
        case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
            return CourierError(
                .notConfirmed,
                "\(what): no delivery report within message.timeout.ms (\(text)); the message may or may not be stored. Check the brokers, then retry"
            )
        case RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, RD_KAFKA_RESP_ERR__RESOLVE:
            return CourierError(.unreachable, "\(what): \(text); check that the brokers are up and reachable")
        case RD_KAFKA_RESP_ERR__TIMED_OUT, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
            return CourierError(.timeout, "\(what): \(text); check that the brokers are up and reachable")
        case RD_KAFKA_RESP_ERR__AUTHENTICATION, RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
            return CourierError(.authenticationFailed, "\(what): \(text); check the user name and password")
        case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
            return CourierError(
                .notFound, "\(what): the topic does not exist (\(text)); create it or allow creation with create_topics=admin or auto")
        case RD_KAFKA_RESP_ERR__DESTROY, RD_KAFKA_RESP_ERR__FATAL:
            return CourierError(.transportClosed, "\(what): \(text)")
        default:
            return CourierError(.brokerRejected, "\(what): \(text)")
        }
    }

    /// Runs the blocking `body` on a new thread, never on Swift's cooperative pool, and
    /// returns its result.
    static func offload<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws(CourierError) -> T) async throws(CourierError)
        -> T
    {
        let result: Result<T, CourierError> = await withUnsafeContinuation { continuation in
            let thread = Thread {
                do throws(CourierError) {
                    continuation.resume(returning: .success(try body()))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
            thread.name = "courier.kafka.\(name)"
            thread.start()
        }
        return try result.get()
    }

    /// Milliseconds for a librdkafka timeout argument.
    static func milliseconds(_ duration: Duration) -> Int32 {
        Int32(clamping: duration.clampedMilliseconds)
    }
}

/// A librdkafka handle passed to a thread of ours. librdkafka's handles are thread-safe.
struct SendableHandle: @unchecked Sendable {
    let raw: OpaquePointer
}

/// A `rd_kafka_topic_partition_list_t` owned by Swift.
final class PartitionList {
    let list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>

    init(capacity: Int = 4) {
        list = rd_kafka_topic_partition_list_new(Int32(capacity))
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

    func add(_ topic: String, _ partition: Int32, offset: Int64 = courier_rdk_offset_invalid()) {
        rd_kafka_topic_partition_list_add(list, topic, partition).pointee.offset = offset
    }

    var count: Int { Int(list.pointee.cnt) }

    var elements: UnsafeMutableBufferPointer<rd_kafka_topic_partition_t> {
        UnsafeMutableBufferPointer(start: list.pointee.elems, count: count)
    }
}

/// librdkafka's own log lines (errors and worse: `log_level` 3 unless `rdkafka.log_level` says
/// otherwise), routed to the logger of the transport that owns the client. librdkafka calls
/// the log callback on its threads with the client handle; the handle's name finds the logger.
enum KafkaLogs {
    private static let loggers = Mutex<[String: Logger]>([:])
    /// Clients being connected, with how often librdkafka said all their brokers are down.
    private static let brokersDown = Mutex<[String: Int]>([:])

    static func watchBrokersDown(_ name: String) { brokersDown.withLock { $0[name] = 0 } }
    static func unwatchBrokersDown(_ name: String) { _ = brokersDown.withLock { $0.removeValue(forKey: name) } }
    static func brokersDownCount(_ name: String) -> Int { brokersDown.withLock { $0[name] ?? 0 } }
    private static let fallback = Logger(label: "courier.kafka")

    static func register(_ rk: OpaquePointer, _ logger: Logger) {
        let name = String(cString: rd_kafka_name(rk))
        loggers.withLock { $0[name] = logger }
    }

    static func deregister(_ name: String) {
        _ = loggers.withLock { $0.removeValue(forKey: name) }
    }

    /// The client's name and the logger registered for it.
    private static func logger(for rk: OpaquePointer?) -> (String, Logger) {
        let name = rk.map { String(cString: rd_kafka_name($0)) } ?? ""
        return (name, loggers.withLock { $0[name] } ?? fallback)
    }

    /// An error librdkafka reports: fatal ones at error level; the rest are transient (it
    /// retries, and its log line already said what failed) and go to debug.
    static func error(_ rk: OpaquePointer?, _ error: Int32, reason: UnsafePointer<CChar>?) {
        let (name, logger) = logger(for: rk)
        let fatal = error == RD_KAFKA_RESP_ERR__FATAL.rawValue
        let allDown = error == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN.rawValue
        if allDown { brokersDown.withLock { counts in counts[name].map { counts[name] = $0 + 1 } } }
        logger.log(
            level: fatal ? .error : allDown ? .warning : .debug, "\(reason.map { String(cString: $0) } ?? "")",
            metadata: [
                "kafka-client": "\(name)", "kafka-error": "\(String(cString: rd_kafka_err2str(rd_kafka_resp_err_t(rawValue: error))))",
            ]
        )
    }

    static func log(_ rk: OpaquePointer?, level: Int32, facility: UnsafePointer<CChar>?, text: UnsafePointer<CChar>?) {
        let (name, logger) = logger(for: rk)
        // librdkafka recovers from most errors by itself (a broker down, a lost connection):
        // syslog 3 (error) is a warning here, 0-2 an error. A failed connection to one broker
        // (facility FAIL, retried by librdkafka) is info: "all brokers down" comes through
        // the error callback as a warning.
        let connectionFailure = facility.map { strcmp($0, "FAIL") == 0 } ?? false
        let mapped: Logger.Level =
            switch level {
            case ...2: .error
            case 3: connectionFailure ? .info : .warning
            case 4...5: .notice
            case 6: .info
            default: .debug
            }
        logger.log(
            level: mapped, "\(text.map { String(cString: $0) } ?? "")",
            metadata: ["kafka-client": "\(name)", "kafka-facility": "\(facility.map { String(cString: $0) } ?? "")"]
        )
    }
}
