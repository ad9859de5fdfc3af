/// The error every Courier API throws: what went wrong, and what to do about it.
///
/// Match on ``code`` (a struct of static constants, so adding one is not an API break);
/// show ``message`` to people; use ``shortDescription`` as a bounded metric label; use
/// ``isRetriable`` to decide whether the same call may succeed later. Messages never contain
/// passwords: URLs in them are redacted.
public struct CourierError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Sendable {
            case invalidName, invalidURL, unsupportedTransport, unsupportedCapability
            case payloadTooLarge, queueFull, transportClosed, subscriptionClosed
            case deliveryAlreadySettled, unreachable, authenticationFailed, notConfirmed
            case brokerRejected, timeout, invalidConfiguration, decodingFailed, encodingFailed, handlerFailed, notFound
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// A topic, queue or group name is empty, too long or has forbidden characters.
        public static let invalidName = Code(.invalidName)
        /// A transport URL could not be parsed.
        public static let invalidURL = Code(.invalidURL)
        /// The URL names a transport that is not linked into this program.
        public static let unsupportedTransport = Code(.unsupportedTransport)
        /// The configuration asks for something the transport cannot do.
        public static let unsupportedCapability = Code(.unsupportedCapability)
        /// The payload exceeds the transport's maximum message size.
        public static let payloadTooLarge = Code(.payloadTooLarge)
        /// A bounded queue is full and its overflow policy rejects new messages.
        public static let queueFull = Code(.queueFull)
        /// The transport was shut down.
        public static let transportClosed = Code(.transportClosed)
        /// The subscription was closed: its un-acked deliveries went back to the queue.
        public static let subscriptionClosed = Code(.subscriptionClosed)
        /// The delivery was already acked, nacked or dead-lettered.
        public static let deliveryAlreadySettled = Code(.deliveryAlreadySettled)
        /// The broker could not be reached.
        public static let unreachable = Code(.unreachable)
        /// The broker refused the credentials.
        public static let authenticationFailed = Code(.authenticationFailed)
        /// The broker did not confirm a message: it may or may not have been stored.
        public static let notConfirmed = Code(.notConfirmed)
        /// The broker refused an operation.
        public static let brokerRejected = Code(.brokerRejected)
        /// An operation did not finish in time.
        public static let timeout = Code(.timeout)
        /// A configuration value is out of range or inconsistent.
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// A payload could not be decoded into the expected type.
        public static let decodingFailed = Code(.decodingFailed)
        /// A message could not be encoded by the bus's serializer.
        public static let encodingFailed = Code(.encodingFailed)
        /// A message handler threw.
        public static let handlerFailed = Code(.handlerFailed)
        /// A topic or queue does not exist on the broker and the configuration does not let
        /// Courier create it.
        public static let notFound = Code(.notFound)

        public var description: String { base.rawValue }
    }

    /// What kind of failure this is.
    public let code: Code
    /// What happened and what to do, for people. Never contains a password.
    public let message: String
    /// Whether repeating the same call later may succeed (a broker down, a full queue).
    public let isRetriable: Bool
    /// The error that caused this one, if any.
    public let underlying: (any Error)?

    /// Creates an error.
    public init(_ code: Code, _ message: String, isRetriable: Bool = false, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.isRetriable = isRetriable
        self.underlying = underlying
    }

    /// A bounded, constant description (the code), safe as a metric label.
    public var shortDescription: String { code.description }

    public var description: String { "\(code): \(message)" }
}

extension CourierError {
    static func transportClosed(_ what: String) -> CourierError {
        CourierError(.transportClosed, "\(what): the transport was shut down; create a new transport to continue")
    }

    /// The error for settling delivery `deliveryTag` a second time, for transports.
    public static func alreadySettled(deliveryTag: UInt64) -> CourierError {
        CourierError(
            .deliveryAlreadySettled,
            "delivery \(deliveryTag) was already acked, nacked or dead-lettered, or its subscription closed and returned it to the queue; settle each delivery once"
        )
    }
}
