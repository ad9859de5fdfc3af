import Foundation

/// One message on the wire: what a transport carries from a producer to a consumer.
///
/// An envelope is transport-agnostic. Every adapter maps its fields onto the broker's own
/// message model and back without loss: `id`, `timestamp` and `key` travel as the CloudEvents
/// attributes `ce_id`, `ce_time` and `ce_partitionkey` (see ``CourierHeader``), `headers` travel
/// as string headers, and `payload` as the message body.
///
/// Invariants a caller can rely on:
/// - `id` is unique per logical message. Redeliveries (at-least-once) carry the **same** id,
///   which is what de-duplication keys on.
/// - `headers` arrive exactly as sent: names and values are arbitrary UTF-8 strings, empty
///   values included.
public struct Envelope: Sendable, Hashable {
    /// The message id; a random UUID string unless given.
    public var id: String
    /// The message body, opaque to the transport.
    public var payload: [UInt8]
    /// String headers, including the well-known ``CourierHeader`` names.
    public var headers: [String: String]
    /// Ordering and partitioning key: messages with the same key keep their relative order
    /// where the transport declares ``TransportCapabilities/Ordering/perKey``.
    public var key: String?
    /// When the message was created.
    public var timestamp: Date

    /// Creates an envelope.
    /// - Parameters:
    ///   - id: A unique id; defaults to a new random UUID string.
    ///   - payload: The body bytes.
    ///   - headers: String headers.
    ///   - key: An optional ordering/partition key.
    ///   - timestamp: Creation time; defaults to now.
    public init(
        id: String = MessageID.random(),
        payload: [UInt8],
        headers: [String: String] = [:],
        key: String? = nil,
        timestamp: Date = Date()
    ) {
        self.id = id
        self.payload = payload
        self.headers = headers
        self.key = key
        self.timestamp = timestamp
    }

    /// Creates an envelope whose payload is the UTF-8 encoding of `text`.
    public init(
        id: String = MessageID.random(),
        text: String,
        headers: [String: String] = [:],
        key: String? = nil,
        timestamp: Date = Date()
    ) {
        self.init(id: id, payload: Array(text.utf8), headers: headers, key: key, timestamp: timestamp)
    }

    /// The payload decoded as UTF-8, or `nil` when it is not valid UTF-8.
    public var text: String? {
        String(validating: payload, as: UTF8.self)
    }

    /// The CloudEvents `type` (``CourierHeader/type``): the message type name, such as
    /// `CustomerRegistered.v2`.
    public var type: String? {
        get { headers[CourierHeader.type] }
        set { headers[CourierHeader.type] = newValue }
    }

    /// The payload's media type (``CourierHeader/contentType``), such as `application/json`.
    public var contentType: String? {
        get { headers[CourierHeader.contentType] }
        set { headers[CourierHeader.contentType] = newValue }
    }

    /// The id shared by every message of one conversation (``CourierHeader/correlationID``).
    public var correlationID: String? {
        get { headers[CourierHeader.correlationID] }
        set { headers[CourierHeader.correlationID] = newValue }
    }

    /// The id of the message that caused this one (``CourierHeader/causationID``).
    public var causationID: String? {
        get { headers[CourierHeader.causationID] }
        set { headers[CourierHeader.causationID] = newValue }
    }
}

/// Message id generation.
public enum MessageID {
    /// A new random (version 4) UUID string, such as `"0F8E2C4B-…"`.
    public static func random() -> String {
        UUID().uuidString
    }
}
