import Courier
import Crdkafka
import Foundation
import Logging
import Synchronization

/// What every part of the adapter shares: librdkafka properties from ``KafkaSettings``,
/// Courier errors from librdkafka's codes, and running blocking calls (``RDKafkaClient``) on a
/// thread of our own.
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

    /// Runs `body` on a thread of its own with a short-lived consumer that belongs to
    /// `groupID` (for its committed offsets) but never commits by itself, passing it `topic`'s
    /// partition count; closes and destroys the consumer afterwards.
    static func withShortLivedConsumer<T: Sendable>(
        configuration: KafkaTransport.Configuration, groupID: String, topic: String, what: String,
        _ body: @escaping @Sendable (RDKafkaClient, Int) throws(CourierError) -> T
    ) async throws -> T {
        var properties = properties(configuration.settings)
        properties.insert(
            contentsOf: [("group.id", groupID), ("enable.auto.commit", "false"), ("enable.auto.offset.store", "false")],
            at: properties.count - configuration.settings.properties.count
        )
        let consumerProperties = properties
        return try await offload(what) { () throws(CourierError) -> T in
            let client = try RDKafkaClient(.consumer, properties: consumerProperties, logger: configuration.logger)
            defer { client.destroy() }
            client.pollSetConsumer()
            defer { client.consumerClose() }
            let (partitions, error) = client.partitionCount(topic, timeout: configuration.operationTimeout)
            guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaClient.error(error, what) }
            return try body(client, partitions)
        }
    }

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

    /// A Courier error for a failed librdkafka operation, classified by its error code.
    static func error(_ error: rd_kafka_resp_err_t, _ what: String) -> CourierError {
        let classified = classify(error, what)
        guard isRetriable(error) else { return classified }
        return CourierError(classified.code, classified.message, isRetriable: true)
    }

    private static func classify(_ error: rd_kafka_resp_err_t, _ what: String) -> CourierError {
        let text = RDKafkaClient.describe(error)
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

    static func register(_ name: String, _ logger: Logger) {
        loggers.withLock { $0[name] = logger }
    }

    static func deregister(_ name: String) {
        _ = loggers.withLock { $0.removeValue(forKey: name) }
    }

    private static func logger(for name: String) -> Logger {
        loggers.withLock { $0[name] } ?? fallback
    }

    /// An error librdkafka reports (`text` is its description of `error`): fatal ones at error
    /// level; the rest are transient (it retries, and its log line already said what failed)
    /// and go to debug.
    static func error(_ name: String, _ error: rd_kafka_resp_err_t, text: String, reason: String) {
        let logger = logger(for: name)
        let fatal = error == RD_KAFKA_RESP_ERR__FATAL
        let allDown = error == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN
        if allDown { brokersDown.withLock { counts in counts[name].map { counts[name] = $0 + 1 } } }
        logger.log(
            level: fatal ? .error : allDown ? .warning : .debug, "\(reason)",
            metadata: ["kafka-client": "\(name)", "kafka-error": "\(text)"])
    }

    static func log(_ name: String, level: Int32, facility: String, text: String) {
        let logger = logger(for: name)
        // librdkafka recovers from most errors by itself (a broker down, a lost connection):
        // syslog 3 (error) is a warning here, 0-2 an error. A failed connection to one broker
        // (facility FAIL, retried by librdkafka) is info: "all brokers down" comes through
        // the error callback as a warning.
        let connectionFailure = facility == "FAIL"
        let mapped: Logger.Level =
            switch level {
            case ...2: .error
            case 3: connectionFailure ? .info : .warning
            case 4...5: .notice
            case 6: .info
            default: .debug
            }
        logger.log(
            level: mapped, "\(text)", metadata: ["kafka-client": "\(name)", "kafka-facility": "\(facility)"]
        )
    }
}
