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
        var headers = envelope.headers
        headers[CourierHeader.id] = envelope.id
        headers[CourierHeader.time] = RFC3339.string(from: envelope.timestamp)
        headers[CourierHeader.specVersion] = CourierHeader.specVersionValue
        headers[CourierHeader.partitionKey] = envelope.key
        if attempt > 1 { headers[CourierHeader.attempt] = String(attempt) }
        return headers
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
        var headers = received
        for name in transportHeaders { headers.removeValue(forKey: name) }
        for name in ignoring { headers.removeValue(forKey: name) }
        let id = received[CourierHeader.id] ?? fallbackID ?? MessageID.random()
        let time = received[CourierHeader.time].flatMap(RFC3339.date(from:)) ?? fallbackTime ?? Date()
        let attempt = received[CourierHeader.attempt].flatMap { Int($0) }.map { max(1, $0) } ?? 1
        let envelope = Envelope(id: id, payload: payload, headers: headers, key: received[CourierHeader.partitionKey] ?? fallbackKey, timestamp: time)
        return (envelope, attempt)
    }

    /// `envelope` as a dead letter: the same id and payload, with reason, origin, attempts and
    /// time in ``CourierHeader`` dead-letter headers.
    public static func deadLetter(_ envelope: Envelope, reason: String, origin: DeliveryOrigin, attempts: Int) -> Envelope {
        var envelope = envelope
        envelope.headers[CourierHeader.deadLetterReason] = reason
        envelope.headers[CourierHeader.deadLetterOriginKind] = origin.kind
        envelope.headers[CourierHeader.deadLetterOrigin] = origin.destination
        envelope.headers[CourierHeader.deadLetterGroup] = origin.group
        envelope.headers[CourierHeader.deadLetterAttempts] = String(attempts)
        envelope.headers[CourierHeader.deadLetterTime] = RFC3339.string(from: Date())
        return envelope
    }
}
