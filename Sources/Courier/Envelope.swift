import Foundation
import Synchronization

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
    /// The fields, in one reference-counted box: an envelope is copied many times on its way
    /// (queues, deliveries, handler contexts), and a copy retains one object instead of one
    /// per field. Copy-on-write: a box is changed only while one envelope holds it.
    private final class Storage: @unchecked Sendable {
        var id: String
        var payload: [UInt8]
        var headers: [String: String]
        var key: String?
        var timestamp: Date

        init(id: String, payload: [UInt8], headers: [String: String], key: String?, timestamp: Date) {
            self.id = id
            self.payload = payload
            self.headers = headers
            self.key = key
            self.timestamp = timestamp
        }

        func copy() -> Storage {
            Storage(id: id, payload: payload, headers: headers, key: key, timestamp: timestamp)
        }
    }

    private var storage: Storage

    private mutating func makeUnique() {
        if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
    }

    /// The message id; a random UUID string unless given.
    public var id: String {
        get { storage.id }
        _modify {
            makeUnique()
            yield &storage.id
        }
    }
    /// The message body, opaque to the transport.
    public var payload: [UInt8] {
        get { storage.payload }
        _modify {
            makeUnique()
            yield &storage.payload
        }
    }
    /// String headers, including the well-known ``CourierHeader`` names.
    public var headers: [String: String] {
        get { storage.headers }
        _modify {
            makeUnique()
            yield &storage.headers
        }
    }
    /// Ordering and partitioning key: messages with the same key keep their relative order
    /// where the transport declares ``TransportCapabilities/Ordering/perKey``.
    public var key: String? {
        get { storage.key }
        _modify {
            makeUnique()
            yield &storage.key
        }
    }
    /// When the message was created.
    public var timestamp: Date {
        get { storage.timestamp }
        _modify {
            makeUnique()
            yield &storage.timestamp
        }
    }

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
        storage = Storage(id: id, payload: payload, headers: headers, key: key, timestamp: timestamp)
    }

    public static func == (lhs: Envelope, rhs: Envelope) -> Bool {
        if lhs.storage === rhs.storage { return true }
        return lhs.id == rhs.id && lhs.payload == rhs.payload && lhs.headers == rhs.headers && lhs.key == rhs.key
            && lhs.timestamp == rhs.timestamp
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(id)
        hasher.combine(payload)
        hasher.combine(headers)
        hasher.combine(key)
        hasher.combine(timestamp)
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
    /// A new random (version 4 layout) UUID string, such as `"0F8E2C4B-9D1A-4C7E-8B2F-3A6D5E4C1B0A"`.
    ///
    /// Ids are unique within the process by construction (a counter through a bijective
    /// mixer) and across processes by 128 bits of per-process randomness from the system's
    /// generator. This costs about 50 ns, where Foundation's `UUID()` costs microseconds: ids
    /// are made for every message on the hot path. They are identifiers, not secrets.
    public static func random() -> String {
        let count = counter.add(1, ordering: .relaxed).newValue
        var high = mix(count ^ seeds.0)
        var low = mix(count &+ seeds.1)
        high = (high & ~0xF000) | 0x4000  // version 4
        low = (low & ~(0xC000 << 48)) | (0x8000 << 48)  // RFC 4122 variant
        return format(high, low)
    }

    private static let seeds: (UInt64, UInt64) = {
        var generator = SystemRandomNumberGenerator()
        return (generator.next(), generator.next())
    }()
    private static let counter = Atomic<UInt64>(0)

    /// SplitMix64's finalizer: a bijection on 64-bit values with good avalanche.
    private static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    private static func format(_ high: UInt64, _ low: UInt64) -> String {
        String(unsafeUninitializedCapacity: 36) { buffer in
            let digits: StaticString = "0123456789ABCDEF"
            var index = 0
            func put(_ value: UInt64, nibbles: Int, from shift: Int) {
                digits.withUTF8Buffer { hex in
                    for nibble in 0..<nibbles {
                        buffer[index] = hex[Int((value >> UInt64(shift - 4 * nibble)) & 0xF)]
                        index += 1
                    }
                }
            }
            put(high, nibbles: 8, from: 60)
            buffer[index] = UInt8(ascii: "-"); index += 1
            put(high, nibbles: 4, from: 28)
            buffer[index] = UInt8(ascii: "-"); index += 1
            put(high, nibbles: 4, from: 12)
            buffer[index] = UInt8(ascii: "-"); index += 1
            put(low, nibbles: 4, from: 60)
            buffer[index] = UInt8(ascii: "-"); index += 1
            put(low, nibbles: 12, from: 44)
            return 36
        }
    }
}
