import Courier
import Foundation

/// Turns contract values into payload bytes and back. The bus writes ``contentType`` into
/// the ``CourierHeader/contentType`` header of every message it publishes, and refuses (as
/// poison) a message whose content type it cannot read.
public protocol MessageSerializer: Sendable {
    /// The media type written to ``CourierHeader/contentType``, such as `application/json`.
    var contentType: String { get }
    /// Encodes `value` as a payload.
    func encode<T: Encodable>(_ value: T) throws -> [UInt8]
    /// Decodes a payload as `type`.
    func decode<T: Decodable>(_ type: T.Type, from payload: [UInt8]) throws -> T
}

/// JSON as Foundation's `JSONEncoder` and `JSONDecoder` write and read it: dates as ISO 8601
/// strings (whole seconds, UTC), `Data` as base64, `Decimal` as a number, `URL` as its
/// string, keys as declared. The bus's default serializer.
///
/// Values are written and read on bytes directly (keys in declaration order, where
/// Foundation's order varies; in the bus benchmark, 13 fewer allocations and about 30% less
/// CPU per message than through Foundation); a value that needs
/// what that fast path leaves out — nested containers handed out for later, super encoders,
/// and, when reading, anything but a well-formed payload in the plain forms Foundation
/// writes (a number with an exponent for an `Int`, a date with fractional seconds, a missing
/// key) — goes through Foundation itself, so every payload decodes, or fails with the same
/// `DecodingError`, as with Foundation alone.
public struct JSONMessageSerializer: MessageSerializer {
    public var contentType: String { "application/json" }

    // Made once, not per message: their settings never change after init, and encoding and
    // decoding with them is safe from many threads at once.
    private let encoder: JSONEncoder
    private let decoder: JSONDecoder

    /// Creates the serializer.
    public init() {
        encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
    }

    public func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let writer = JSONByteWriter()
        do {
            try writer.write(value, depth: -1)
            return writer.bytes
        } catch JSONFastPath.unsupported {
            return Array(try encoder.encode(value))
        }
    }

    public func decode<T: Decodable>(_ type: T.Type, from payload: [UInt8]) throws -> T {
        do {
            return try JSONByteReader(payload).decode(type)
        } catch {
            // Foundation decides: it accepts some forms the fast path leaves to it, and its
            // errors say where a payload is wrong.
            return try decoder.decode(type, from: Data(payload))
        }
    }
}
