import CoreMetrics
import Courier
import Metrics
import Tracing

/// The metric names the bus records, through swift-metrics (whatever backend the
/// application bootstrapped, or ``MessageBus/Configuration/metricsFactory``).
///
/// Dimensions:
/// - Publishing: `destination` (topic or queue), `kind` (`event` or `command`), `type`
///   (``IntegrationMessage/messageType``).
/// - Handling: `destination` (topic or queue), `group` (the group; empty for a queue),
///   `type` (the contract the handler takes).
/// - ``retried``: also `retry` = `immediate` or `delayed`.
/// - ``deadLettered``: also `cause` = `handler` (a handler kept failing or threw a
///   ``NonRetriableError``), `poison` (the payload could not be decoded) or `unknown-type`
///   (the message is not of the subscribed contract).
/// - ``handlerDuration``: also `outcome` = `success` or `failure`.
public enum BusMetricName {
    /// Counter: messages confirmed by the transport after `publish` or `send`.
    public static let published = "courier_published_total"
    /// Timer: from `publish`/`send` to the transport's confirmation, per call.
    public static let publishDuration = "courier_publish_duration_seconds"
    /// Counter: deliveries taken by a handler registration.
    public static let delivered = "courier_delivered_total"
    /// Counter: deliveries acked after their handler returned (or as duplicates).
    public static let acked = "courier_acked_total"
    /// Counter: handler retries.
    public static let retried = "courier_retried_total"
    /// Counter: deliveries moved to the dead-letter queue.
    public static let deadLettered = "courier_dead_lettered_total"
    /// Counter: deliveries acked without calling the handler, as already handled.
    public static let deduplicated = "courier_deduplicated_total"
    /// Timer: one handler call.
    public static let handlerDuration = "courier_handler_duration_seconds"
}

/// The metrics of one handler registration, created once (not per message).
struct HandlerMetrics: Sendable {
    let delivered: Counter
    let acked: Counter
    let retriedImmediately: Counter
    let retriedLater: Counter
    let deadLetteredByHandler: Counter
    let deadLetteredAsPoison: Counter
    let deadLetteredAsUnknown: Counter
    let deduplicated: Counter
    let succeeded: Metrics.Timer
    let failed: Metrics.Timer

    init(destination: String, group: String?, type: String, factory: any MetricsFactory) {
        let dimensions = [("destination", destination), ("group", group ?? ""), ("type", type)]
        func counter(_ label: String, _ extra: [(String, String)] = []) -> Counter {
            Counter(label: label, dimensions: dimensions + extra, factory: factory)
        }
        delivered = counter(BusMetricName.delivered)
        acked = counter(BusMetricName.acked)
        retriedImmediately = counter(BusMetricName.retried, [("retry", "immediate")])
        retriedLater = counter(BusMetricName.retried, [("retry", "delayed")])
        deadLetteredByHandler = counter(BusMetricName.deadLettered, [("cause", "handler")])
        deadLetteredAsPoison = counter(BusMetricName.deadLettered, [("cause", "poison")])
        deadLetteredAsUnknown = counter(BusMetricName.deadLettered, [("cause", "unknown-type")])
        deduplicated = counter(BusMetricName.deduplicated)
        succeeded = Metrics.Timer(label: BusMetricName.handlerDuration, dimensions: dimensions + [("outcome", "success")], factory: factory)
        failed = Metrics.Timer(label: BusMetricName.handlerDuration, dimensions: dimensions + [("outcome", "failure")], factory: factory)
    }
}

/// The publishing metrics of one destination and contract.
struct PublishMetrics: Sendable {
    let published: Counter
    let duration: Metrics.Timer

    init(destination: String, kind: String, type: String, factory: any MetricsFactory) {
        let dimensions = [("destination", destination), ("kind", kind), ("type", type)]
        published = Counter(label: BusMetricName.published, dimensions: dimensions, factory: factory)
        duration = Metrics.Timer(label: BusMetricName.publishDuration, dimensions: dimensions, factory: factory)
    }
}

/// Writes trace context into message headers.
struct HeadersInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key] = value
    }
}

/// Reads trace context from message headers.
struct HeadersExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? {
        carrier[key]
    }
}

extension ContinuousClock.Instant.Duration {
    var nanoseconds: Int64 {
        components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000
    }
}
