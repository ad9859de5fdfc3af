import Courier
import CourierBus
import Foundation

/// One message in an outbox table: a ``StagedMessage`` and its place in commit order.
public struct OutboxRecord: Sendable {
    /// The row's sequence number: the order the relay publishes in.
    public var sequence: Int64
    /// The message as the bus staged it.
    public var message: StagedMessage

    public init(sequence: Int64, message: StagedMessage) {
        self.sequence = sequence
        self.message = message
    }
}

/// How a staged message is stored in an outbox row, the same in every store: the envelope's
/// id, key, time (RFC 3339, as on the wire), headers (a JSON object) and payload (bytes), beside
/// its kind and destination.
public enum OutboxColumns {
    /// The values to store for `message`.
    public struct Values: Sendable {
        public var messageID: String
        public var kind: String
        public var destination: String
        public var key: String?
        public var time: String
        /// Milliseconds since 1970 (for the backlog's age).
        public var createdAt: Int64
        public var headers: String
        public var payload: [UInt8]
    }

    public static func values(for message: StagedMessage) -> Values {
        let envelope = message.envelope
        return Values(
            messageID: envelope.id, kind: message.kind.rawValue, destination: message.destination, key: envelope.key,
            time: RFC3339.string(from: envelope.timestamp), createdAt: Int64((envelope.timestamp.timeIntervalSince1970 * 1000).rounded()),
            headers: encode(envelope.headers), payload: envelope.payload)
    }

    /// The staged message a row holds; a row this library did not write throws
    /// ``CourierError/Code/decodingFailed`` naming the row.
    public static func message(
        sequence: Int64, messageID: String, kind: String, destination: String, key: String?, time: String, headers: String,
        payload: [UInt8]
    ) throws(CourierError) -> StagedMessage {
        guard let kind = MessageKind(rawValue: kind) else {
            throw CourierError(.decodingFailed, "outbox row \(sequence) has kind \(kind); expected event or command")
        }
        guard let decoded = decode(headers) else {
            throw CourierError(.decodingFailed, "outbox row \(sequence) has headers that are not a JSON object of strings")
        }
        guard let timestamp = RFC3339.date(from: time) else {
            throw CourierError(.decodingFailed, "outbox row \(sequence) has time \(time); expected RFC 3339")
        }
        let envelope = Envelope(id: messageID, payload: payload, headers: decoded, key: key, timestamp: timestamp)
        return StagedMessage(kind: kind, destination: destination, envelope: envelope)
    }

    static func encode(_ headers: [String: String]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // A [String: String] always encodes.
        return String(decoding: (try? encoder.encode(headers)) ?? Data("{}".utf8), as: UTF8.self)
    }

    static func decode(_ text: String) -> [String: String]? {
        try? JSONDecoder().decode([String: String].self, from: Data(text.utf8))
    }
}
