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

/// JSON through Foundation's `JSONEncoder` and `JSONDecoder`: dates as ISO 8601 strings,
/// keys as declared. The bus's default serializer.
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
        Array(try encoder.encode(value))
    }

    public func decode<T: Decodable>(_ type: T.Type, from payload: [UInt8]) throws -> T {
        try decoder.decode(type, from: Data(payload))
    }
}
