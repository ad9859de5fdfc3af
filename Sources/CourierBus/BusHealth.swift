import Courier
import Synchronization

/// How a bus is doing, from ``MessageBus/health()``: its transport's connections and each
/// handler registration.
///
/// Healthy when the transport is healthy and no registration has `failed` (its subscription
/// ended with an error: it takes no more messages). A registration whose handler failed on
/// its last ``MessageBus/Configuration/failingAfter`` messages in a row is `failing`: the bus
/// is then ``isDegraded`` but still healthy, since restarting the service rarely mends what
/// its handler depends on (a database, another service) and the messages wait in the broker
/// meanwhile.
///
/// ```swift
/// let health = await bus.health()
/// if !health.isHealthy { print(health) }   // one line per connection and registration
/// ```
public struct BusHealth: Sendable, CustomStringConvertible {
    /// One handler registration.
    public struct Registration: Sendable, CustomStringConvertible {
        /// Where a registration is.
        public enum State: String, Sendable, Hashable {
            /// Taking messages; its last handled message succeeded (or none has failed
            /// ``MessageBus/Configuration/failingAfter`` times in a row).
            case running
            /// Taking messages, but the handler failed on the last
            /// ``Registration/consecutiveFailures`` messages in a row.
            case failing
            /// Its subscription ended with an error (``Registration/lastError``): it takes no
            /// more messages until registered again.
            case failed
        }

        /// The topic and group, or queue, it reads.
        public var origin: DeliveryOrigin
        /// The message type it handles.
        public var messageType: String
        /// Where it is.
        public var state: State
        /// Handler failures (retried or dead-lettered) since the last success.
        public var consecutiveFailures: Int
        /// The last handler error, or the error that ended the subscription.
        public var lastError: String?

        /// `origin (type): state` with the failures and the error when there are any.
        public var description: String {
            var text = "\(origin) (\(messageType)): \(state.rawValue)"
            if consecutiveFailures > 0 { text += ", \(consecutiveFailures) failures in a row" }
            if let lastError { text += ", last error: \(lastError)" }
            return text
        }
    }

    /// The transport's connections.
    public var transport: TransportHealth
    /// Every running registration.
    public var registrations: [Registration]

    /// The transport is healthy and no registration has failed.
    public var isHealthy: Bool {
        transport.isHealthy && !registrations.contains { $0.state == .failed }
    }

    /// Healthy, but a registration is failing.
    public var isDegraded: Bool {
        isHealthy && registrations.contains { $0.state == .failing }
    }

    /// `bus: healthy|degraded|unhealthy`, the transport's lines, one line per registration.
    public var description: String {
        let word = !isHealthy ? "unhealthy" : isDegraded ? "degraded" : "healthy"
        return (["bus: \(word)", transport.description] + registrations.map { "  \($0)" }).joined(separator: "\n")
    }
}

/// A registration's handler outcomes, for ``BusHealth``: written by its handlers, read by
/// ``MessageBus/health()``. A success costs one relaxed load when nothing failed before it.
final class RegistrationStatus: Sendable {
    let messageType: String
    private let failures = Atomic<Int>(0)
    private let lastError = Mutex<String?>(nil)

    init(messageType: String) {
        self.messageType = messageType
    }

    func succeeded() {
        if failures.load(ordering: .relaxed) != 0 { failures.store(0, ordering: .relaxed) }
    }

    func failed(_ error: String) {
        lastError.withLock { $0 = error }
        failures.add(1, ordering: .relaxed)
    }

    var consecutiveFailures: Int { failures.load(ordering: .relaxed) }
    var lastFailure: String? { lastError.withLock { $0 } }
}

extension MessageBus {
    /// The transport's health (``Transport/health()``) and every running registration's.
    ///
    /// How soon a lost broker shows depends on the transport: RabbitMQ at once when the node's
    /// sockets close, within two heartbeats when it goes silent; Kafka within its health
    /// timeout (2 s by default) of the call. A readiness endpoint can
    /// return 503 when ``BusHealth/isHealthy`` is false (see the README).
    public func health() async -> BusHealth {
        let transportHealth = await transport.health()
        let registrations = registrationsForHealth().map { registration -> BusHealth.Registration in
            let status = registration.status
            let failures = status.consecutiveFailures
            if let failure = registration.failure {
                return .init(
                    origin: registration.origin, messageType: status.messageType, state: .failed, consecutiveFailures: failures,
                    lastError: ErrorText.describe(failure))
            }
            return .init(
                origin: registration.origin, messageType: status.messageType,
                state: failures >= max(1, configuration.failingAfter) ? .failing : .running, consecutiveFailures: failures,
                lastError: failures > 0 ? status.lastFailure : nil)
        }
        return BusHealth(transport: transportHealth, registrations: registrations.sorted { "\($0.origin)" < "\($1.origin)" })
    }
}
