import Foundation

/// How an ``Envelope`` travels as broker headers, the same on every broker adapter.
///
/// The envelope's `id`, `timestamp` and `key` become the CloudEvents headers `ce_id`, `ce_time`
/// and `ce_partitionkey`, beside `ce_specversion: 1.0` and the delivery attempt
/// (`ce_courierattempt`). Reading reverses it: those headers become fields again and are
/// removed from ``Envelope/headers``, so user headers arrive exactly as sent.
public enum WireFormat {
    /// Headers the adapter owns; never shown in ``Envelope/headers`` on the receiving side.
    public static let transportHeaders: Set<String> = [
        CourierHeader.id, CourierHeader.time, CourierHeader.specVersion, CourierHeader.partitionKey, CourierHeader.attempt,
    ]

    /// The headers to send for `envelope` at delivery attempt `attempt`.
    public static func headers(for envelope: Envelope, attempt: Int) -> [String: String] {
        var headers: [String: String] = [:]
        headers.reserveCapacity(envelope.headers.count + 5)
        forEachHeader(of: envelope, attempt: attempt) { headers[$0] = $1 }
        return headers
    }

    /// Calls `body` with each header to send for `envelope` at delivery attempt `attempt`, in
    /// no particular order, without building a dictionary (for adapters' hot paths).
    public static func forEachHeader(of envelope: Envelope, attempt: Int, _ body: (String, String) -> Void) {
        for (name, value) in envelope.headers where !transportHeaders.contains(name) { body(name, value) }
        body(CourierHeader.id, envelope.id)
        body(CourierHeader.time, RFC3339.string(from: envelope.timestamp))
        body(CourierHeader.specVersion, CourierHeader.specVersionValue)
        if let key = envelope.key { body(CourierHeader.partitionKey, key) }
        if attempt > 1 { body(CourierHeader.attempt, String(attempt)) }
    }

    /// Received headers, added one at a time as an adapter reads them, and turned into an
    /// envelope without an intermediate dictionary of every header.
    public struct Received: Sendable {
        private var headers: [String: String] = [:]
        private var id: String?
        private var time: String?
        private var parsedTime: Date?
        private var key: String?
        private var attempt: String?

        /// No headers yet.
        public init() {}

        /// Adds one received header from its name's and value's UTF-8 bytes (borrowed from a
        /// client library's buffer): Courier's own headers are recognised without a `String`
        /// for their name, and the timestamp is parsed from its bytes.
        public mutating func add(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
            if name.count > 3, name[0] == UInt8(ascii: "c"), name[1] == UInt8(ascii: "e"), name[2] == UInt8(ascii: "_") {
                if Self.equals(name, Self.timeName) {
                    if let date = RFC3339.date(utf8: value) { parsedTime = date } else { time = String(decoding: value, as: UTF8.self) }
                    return
                }
                if Self.equals(name, Self.specVersionName) { return }
                if Self.equals(name, Self.idName) {
                    id = String(decoding: value, as: UTF8.self)
                    return
                }
            }
            add(String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self))
        }

        private static let idName = Array(CourierHeader.id.utf8)
        private static let timeName = Array(CourierHeader.time.utf8)
        private static let specVersionName = Array(CourierHeader.specVersion.utf8)

        private static func equals(_ bytes: UnsafeRawBufferPointer, _ name: [UInt8]) -> Bool {
            bytes.count == name.count && name.withUnsafeBytes { bytes.elementsEqual($0) }
        }

        /// Adds one received header.
        public mutating func add(_ name: String, _ value: String) {
            switch name {
            case CourierHeader.id: id = value
            case CourierHeader.time:
                time = value
                parsedTime = nil
            case CourierHeader.partitionKey: key = value
            case CourierHeader.attempt: attempt = value
            case CourierHeader.specVersion: break
            default: headers[name] = value
            }
        }

        /// The envelope and attempt, with the fallbacks of
        /// ``WireFormat/envelope(headers:payload:fallbackID:fallbackTime:fallbackKey:ignoring:)``.
        public func envelope(
            payload: [UInt8],
            fallbackID: String? = nil,
            fallbackTime: Date? = nil,
            fallbackKey: String? = nil,
            ignoring: Set<String> = []
        ) -> (envelope: Envelope, attempt: Int) {
            var headers = headers
            for name in ignoring { headers.removeValue(forKey: name) }
            let id = id ?? fallbackID ?? MessageID.random()
            let time = parsedTime ?? time.flatMap(RFC3339.date(from:)) ?? fallbackTime ?? Date()
            let attempt = attempt.flatMap { Int($0) }.map { max(1, $0) } ?? 1
            return (Envelope(id: id, payload: payload, headers: headers, key: key ?? fallbackKey, timestamp: time), attempt)
        }
    }

    /// The envelope and attempt carried by received `headers` and `payload`. Messages from
    /// producers that do not speak Courier get `fallbackID` (or a new id), `fallbackTime` (or
    /// now) and `fallbackKey`; `ignoring` lists broker-added headers to drop.
    public static func envelope(
        headers received: [String: String],
        payload: [UInt8],
        fallbackID: String? = nil,
        fallbackTime: Date? = nil,
        fallbackKey: String? = nil,
        ignoring: Set<String> = []
    ) -> (envelope: Envelope, attempt: Int) {
        var decoded = Received()
        for (name, value) in received { decoded.add(name, value) }
        return decoded.envelope(
            payload: payload, fallbackID: fallbackID, fallbackTime: fallbackTime, fallbackKey: fallbackKey, ignoring: ignoring)
    }

    /// `envelope` as a dead letter: the same id and payload, with reason, origin, attempts and
    /// time in ``CourierHeader`` dead-letter headers, plus `extra` headers (which cannot
    /// override the dead-letter headers).
    public static func deadLetter(
        _ envelope: Envelope, reason: String, origin: DeliveryOrigin, attempts: Int, extra: [String: String] = [:]
    ) -> Envelope {
        var envelope = envelope
        envelope.headers.merge(extra) { _, new in new }
        envelope.headers[CourierHeader.deadLetterReason] = reason
        envelope.headers[CourierHeader.deadLetterOriginKind] = origin.kind
        envelope.headers[CourierHeader.deadLetterOrigin] = origin.destination
        envelope.headers[CourierHeader.deadLetterGroup] = origin.group
        envelope.headers[CourierHeader.deadLetterAttempts] = String(attempts)
        envelope.headers[CourierHeader.deadLetterTime] = RFC3339.string(from: Date())
        return envelope
    }

    /// The headers ``deadLetter(_:reason:origin:attempts:extra:)`` adds (and the handler's
    /// error headers, and the attempt), which a replayed message loses.
    public static let deadLetterHeaders: Set<String> = [
        CourierHeader.deadLetterReason, CourierHeader.deadLetterOriginKind, CourierHeader.deadLetterOrigin,
        CourierHeader.deadLetterGroup, CourierHeader.deadLetterAttempts, CourierHeader.deadLetterTime,
        CourierHeader.errorType, CourierHeader.errorMessage, CourierHeader.attempt,
    ]

    /// A dead letter as the message it was, to replay: same id, payload, key and headers,
    /// without the dead-letter headers (so it starts again at attempt 1).
    public static func replayable(_ deadLetter: Envelope) -> Envelope {
        var message = deadLetter
        for name in deadLetterHeaders { message.headers[name] = nil }
        return message
    }

    /// The group or queue a dead letter came from, as its headers say; `nil` when they do not.
    public static func origin(ofDeadLetter deadLetter: Envelope) -> DeliveryOrigin? {
        guard let destination = deadLetter.headers[CourierHeader.deadLetterOrigin] else { return nil }
        switch deadLetter.headers[CourierHeader.deadLetterOriginKind] {
        case "queue": return .queue(destination)
        case "topic": return deadLetter.headers[CourierHeader.deadLetterGroup].map { .topic(destination, group: $0) }
        default: return nil
        }
    }
}
