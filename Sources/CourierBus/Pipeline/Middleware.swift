import Courier
import Logging

/// A step of your own in the bus's pipelines: around each handler call on the way in, and
/// before each publish or send on the way out. Both requirements have pass-through defaults:
/// implement the one you need.
///
/// ```swift
/// /// Carries the tenant of a conversation: the header on the way out, a task-local on the way in.
/// struct TenantMiddleware: BusMiddleware {
///     @TaskLocal static var tenant: String?
///
///     func handle(_ message: InboundMessage, next: (InboundMessage) async throws -> Void) async throws {
///         try await Self.$tenant.withValue(message.envelope.headers["tenant"]) { try await next(message) }
///     }
///
///     func prepare(_ message: inout OutboundMessage) async throws {
///         if let tenant = Self.tenant { message.envelope.headers["tenant"] = tenant }
///     }
/// }
///
/// let bus = MessageBus(transport: transport, configuration: .init(middleware: [TenantMiddleware()]))
/// ```
///
/// **The order on the way in**, outermost first — each step runs around the ones below it:
/// 1. dead-letter: a failure left over by the steps below goes to the dead-letter queue;
/// 2. delayed retry: a retriable failure while attempts remain is redelivered later (a nack
///    with the policy's delay);
/// 3. decode and type check: an unknown type, an unreadable content type or a payload that
///    does not decode is dead-lettered as poison, without calling anything below;
/// 4. de-duplication (when the registration asks for it): a message handled before is acked
///    without calling anything below; one handled now is recorded;
/// 5. tracing: the `process` span, continuing the publisher's trace;
/// 6. immediate retries: the steps below run again, up to the policy's count;
/// 7. metrics: each call's duration, by outcome;
/// 8. your middlewares, in the order of ``MessageBus/Configuration/middleware`` (the first
///    is outermost), once per call, immediate retries included;
/// 9. the handler.
///
/// **The order on the way out**: the bus builds the envelope (payload, type, content type,
/// source, correlation and causation), then your middlewares' ``prepare(_:)`` run in order,
/// then the producer span's context is injected and the transport publishes. A middleware that
/// throws fails the publish or send; nothing of that call reaches the broker.
public protocol BusMiddleware: Sendable {
    /// Runs around one handler call. Call `next` to go on (with `message` or a changed copy:
    /// its envelope and logger are what the handler's ``MessageContext`` gets); what `next`
    /// throws is the handler's failure. Throwing fails the call (the retry policy applies);
    /// returning without calling `next`, or catching its error, counts as handled: the message
    /// is acked.
    func handle(_ message: InboundMessage, next: (InboundMessage) async throws -> Void) async throws

    /// Changes or checks an envelope before it is published or sent.
    func prepare(_ message: inout OutboundMessage) async throws
}

extension BusMiddleware {
    /// Passes the message on unchanged.
    public func handle(_ message: InboundMessage, next: (InboundMessage) async throws -> Void) async throws {
        try await next(message)
    }

    /// Leaves the envelope unchanged.
    public func prepare(_ message: inout OutboundMessage) async throws {}
}

/// A message on its way to a handler, as a ``BusMiddleware`` sees it.
public struct InboundMessage: Sendable {
    /// The envelope; a change reaches the handler's ``MessageContext``.
    public var envelope: Envelope
    /// The contract's type name the handler takes, e.g. `CustomerRegistered.v1`.
    public let messageType: String
    /// The delivery attempt, from 1.
    public let attempt: Int
    /// The immediate retry within this attempt, from 0.
    public let immediateRetry: Int
    /// Where the message came from.
    public let origin: DeliveryOrigin
    /// The logger for this message (its metadata names the message); the handler gets it.
    public var logger: Logger
}

/// Whether a message is an event (published to a topic) or a command (sent to a queue).
public enum MessageKind: String, Sendable {
    case event
    case command
}

/// A message on its way to the transport, as a ``BusMiddleware`` sees it.
public struct OutboundMessage: Sendable {
    /// The envelope to publish; change its headers, key or payload here.
    public var envelope: Envelope
    /// An event or a command.
    public let kind: MessageKind
    /// The topic (event) or queue (command).
    public let destination: String
    /// The contract's type name, e.g. `CustomerRegistered.v1`.
    public let messageType: String
}
