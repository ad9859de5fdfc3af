import Courier
import Logging

/// What a handler knows about the message it handles, and how it publishes and sends
/// follow-up messages as part of the same conversation.
///
/// Messages published or sent through the context, or through the bus from inside the
/// handler, carry the incoming message's correlation id (or its id, for the first message
/// of a conversation) in ``CourierHeader/correlationID`` and the incoming message's id in
/// ``CourierHeader/causationID``, and continue the incoming message's trace.
public struct MessageContext: Sendable {
    /// The incoming message: id, headers, key, timestamp and raw payload.
    public let envelope: Envelope
    /// The delivery attempt: 1 on first delivery, +1 per delayed retry.
    public let attempt: Int
    /// The immediate retry within this delivery: 0 on the first call.
    public let immediateRetry: Int
    /// The topic and group, or queue, the message came from.
    public let origin: DeliveryOrigin
    /// A logger with the message's metadata: `courier-message-id`, `courier-message-type`,
    /// `courier-origin`, `courier-attempt` and `courier-correlation-id`.
    ///
    /// Made when read, not for every message: log handlers such as swift-log's
    /// `StreamLogHandler` render their metadata whenever it changes, which would cost every
    /// message a few microseconds whether it logs or not. Keep it in a local when logging
    /// often from one handler call.
    public var logger: Logger {
        get { assignedLogger ?? MessageMetadata.logger(baseLogger, envelope: envelope, attempt: attempt, messageType: messageType) }
        set { assignedLogger = newValue }
    }
    let bus: MessageBus
    /// The registration's logger, without the message's metadata.
    let baseLogger: Logger
    /// A logger a middleware or the handler set, used as it is.
    var assignedLogger: Logger?
    /// The contract's type name the registration takes.
    let messageType: String

    init(
        envelope: Envelope, attempt: Int, immediateRetry: Int, origin: DeliveryOrigin, baseLogger: Logger, assignedLogger: Logger?,
        messageType: String, bus: MessageBus
    ) {
        self.envelope = envelope
        self.attempt = attempt
        self.immediateRetry = immediateRetry
        self.origin = origin
        self.baseLogger = baseLogger
        self.assignedLogger = assignedLogger
        self.messageType = messageType
        self.bus = bus
    }

    /// The incoming message's id.
    public var messageID: String { envelope.id }
    /// The incoming message's headers.
    public var headers: [String: String] { envelope.headers }
    /// The conversation's id: the incoming correlation id, or the incoming id when it starts
    /// the conversation.
    public var correlationID: String { envelope.correlationID ?? envelope.id }

    /// The context of the message the current task is handling, if any.
    @TaskLocal public static var current: MessageContext?

    /// Publishes `event` as a consequence of the incoming message.
    public func publish<E: IntegrationEvent>(_ event: E, key: String? = nil, headers: [String: String] = [:]) async throws {
        try await bus.deliver([.publish(event, key: key, headers: headers)], causedBy: self)
    }

    /// Sends `command` as a consequence of the incoming message.
    public func send<C: IntegrationCommand>(_ command: C, key: String? = nil, headers: [String: String] = [:]) async throws {
        try await bus.deliver([.send(command, key: key, headers: headers)], causedBy: self)
    }

    /// Publishes and sends `messages` in order as a consequence of the incoming message,
    /// returning once the transport confirmed all of them.
    public func deliver(_ messages: [OutgoingMessage]) async throws {
        try await bus.deliver(messages, causedBy: self)
    }
}

/// An event to publish or a command to send, for ``MessageContext/deliver(_:)`` and
/// ``MessageBus/transform(_:group:options:_:)``.
public struct OutgoingMessage: Sendable {
    let kind: MessageKind
    let destination: String
    let type: String
    let key: String?
    let headers: [String: String]
    let encode: @Sendable (any MessageSerializer) throws -> [UInt8]

    /// `event`, to be published to its topic.
    public static func publish<E: IntegrationEvent>(_ event: E, key: String? = nil, headers: [String: String] = [:]) -> OutgoingMessage {
        OutgoingMessage(
            kind: .event, destination: E.topic, type: E.messageType, key: key ?? event.messageKey, headers: headers,
            encode: { try $0.encode(event) }
        )
    }

    /// `command`, to be sent to its queue.
    public static func send<C: IntegrationCommand>(_ command: C, key: String? = nil, headers: [String: String] = [:]) -> OutgoingMessage {
        OutgoingMessage(
            kind: .command, destination: C.queue, type: C.messageType, key: key ?? command.messageKey, headers: headers,
            encode: { try $0.encode(command) }
        )
    }
}

/// An error a handler throws to skip the retries: the message goes to the dead-letter queue
/// at once, with the error in its headers. For failures that cannot heal, such as a
/// business rule the message breaks.
public protocol NonRetriableError: Error {}

/// A message encoded by ``MessageBus/stage(_:causedBy:)``, ready for
/// ``MessageBus/deliver(staged:)``: what an outbox keeps between the commit and the broker.
public struct StagedMessage: Sendable {
    /// An event (to a topic) or a command (to a queue).
    public var kind: MessageKind
    /// The topic or queue.
    public var destination: String
    /// The message as the transport gets it (before the middleware's `prepare`).
    public var envelope: Envelope

    public init(kind: MessageKind, destination: String, envelope: Envelope) {
        self.kind = kind
        self.destination = destination
        self.envelope = envelope
    }
}

/// The metadata a handled message's logger carries.
enum MessageMetadata {
    /// `base` with the message's id, type, attempt and correlation id in one metadata update
    /// (some handlers re-render their metadata on every change).
    static func logger(_ base: Logger, envelope: Envelope, attempt: Int, messageType: String) -> Logger {
        var logger = base
        var metadata = logger.handler.metadata
        metadata["courier-message-id"] = .string(envelope.id)
        metadata["courier-message-type"] = .string(envelope.type ?? messageType)
        metadata["courier-attempt"] = .string(String(attempt))
        metadata["courier-correlation-id"] = .string(envelope.correlationID ?? envelope.id)
        logger.handler.metadata = metadata
        return logger
    }
}
