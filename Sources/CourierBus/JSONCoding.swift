import Foundation

// A JSON writer and reader for Codable values that work on bytes directly: the bus's fast
// path for ``JSONMessageSerializer``. They read and write what Foundation's `JSONEncoder` and
// `JSONDecoder` (dates as ISO 8601) read and write — the same values, numbers, escapes,
// dates, `Data` as base64, `Decimal` as a number, `URL` as its string — and give up (throw
// `JSONFastPath.unsupported`) where they would have to guess: nested containers handed out
// for later (`nestedContainer`, `superEncoder`), a container opened twice in different
// kinds, numbers or dates in a form Foundation is lenient about. The serializer then asks
// Foundation, so a payload decodes (or fails) exactly as it would with Foundation alone.

/// Why the fast path gave up; the serializer falls back to Foundation.
enum JSONFastPath: Error {
    case unsupported
}

// MARK: Writing

/// Writes one JSON document into `bytes`.
final class JSONByteWriter {
    var bytes: [UInt8] = []
    /// One encoder per nesting depth, reused: a nested value's encoding ends before its
    /// parent writes on. The outermost one is kept apart: a flat value needs no array.
    private var outermost: JSONValueEncoder?
    private var nested: [JSONValueEncoder] = []

    init() {
        bytes.reserveCapacity(256)
    }

    func encoder(depth: Int) -> JSONValueEncoder {
        let kept = depth <= 0 ? outermost : (depth - 1 < nested.count ? nested[depth - 1] : nil)
        if let kept {
            kept.reset()
            return kept
        }
        let encoder = JSONValueEncoder(writer: self, depth: depth)
        if depth <= 0 { outermost = encoder } else { nested.append(encoder) }
        return encoder
    }

    /// Writes `value` at `depth`: Foundation's special cases first, then its own encoding.
    func write<T: Encodable>(_ value: T, depth: Int) throws {
        // Type identity first (a pointer comparison): elements of arrays and dictionaries
        // arrive here, not through the containers' typed overloads.
        if T.self == String.self {
            writeString(value as! String)
        } else if T.self == Int.self {
            writeInteger(value as! Int)
        } else if T.self == Bool.self {
            writeBool(value as! Bool)
        } else if T.self == Double.self {
            try writeFloatingPoint(value as! Double)
        } else if T.self == Date.self {
            try writeDate(value as! Date)
        } else if T.self == Data.self {
            writeString((value as! Data).base64EncodedString())
        } else if T.self == URL.self {
            writeString((value as! URL).absoluteString)
        } else if T.self == Decimal.self {
            let decimal = value as! Decimal
            guard decimal.isFinite else { throw JSONFastPath.unsupported }
            writeRaw(decimal.description)
        } else {
            let encoder = encoder(depth: depth + 1)
            try value.encode(to: encoder)
            try encoder.finish()
        }
    }

    func writeRaw(_ text: String) {
        var text = text
        text.withUTF8 { bytes.append(contentsOf: $0) }
    }

    func writeInteger<T: FixedWidthInteger>(_ value: T) {
        if value == 0 {
            bytes.append(UInt8(ascii: "0"))
            return
        }
        // Digits backwards into a small stack buffer, then appended.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 40) { buffer in
            var index = 40
            var magnitude = value.magnitude
            while magnitude > 0 {
                index -= 1
                buffer[index] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: magnitude % 10)
                magnitude /= 10
            }
            if value < 0 {
                index -= 1
                buffer[index] = UInt8(ascii: "-")
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[index..<40]))
        }
    }

    /// As Foundation writes floating-point numbers: the shortest description, without a
    /// trailing `.0`; non-finite values are refused (Foundation throws too).
    func writeFloatingPoint<T: BinaryFloatingPoint & LosslessStringConvertible>(_ value: T) throws {
        guard value.isFinite else { throw JSONFastPath.unsupported }
        var text = value.description
        if text.hasSuffix(".0") { text.removeLast(2) }
        writeRaw(text)
    }

    func writeBool(_ value: Bool) {
        writeRaw(value ? "true" : "false")
    }

    func writeNull() {
        bytes.append(contentsOf: [UInt8(ascii: "n"), UInt8(ascii: "u"), UInt8(ascii: "l"), UInt8(ascii: "l")])
    }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    /// A string with Foundation's escapes: `"`, `\`, `/`, the short forms of control
    /// characters and `\u00XX` for the others.
    func writeString(_ string: String) {
        var string = string
        string.withUTF8 { utf8 in
            bytes.append(UInt8(ascii: "\""))
            var start = 0
            for index in 0..<utf8.count {
                let byte = utf8[index]
                let escape: UInt8
                switch byte {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): escape = byte
                case 0x08: escape = UInt8(ascii: "b")
                case 0x0C: escape = UInt8(ascii: "f")
                case 0x0A: escape = UInt8(ascii: "n")
                case 0x0D: escape = UInt8(ascii: "r")
                case 0x09: escape = UInt8(ascii: "t")
                case 0..<0x20: escape = 0
                default: continue
                }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<index]))
                start = index + 1
                if escape != 0 {
                    bytes.append(UInt8(ascii: "\\"))
                    bytes.append(escape)
                } else {
                    bytes.append(contentsOf: [
                        UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), Self.hex[Int(byte >> 4)],
                        Self.hex[Int(byte & 0xF)],
                    ])
                }
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<utf8.count]))
            bytes.append(UInt8(ascii: "\""))
        }
    }

    /// `yyyy-MM-ddTHH:mm:ssZ` in UTC, the seconds rounded down, as Foundation's `.iso8601`.
    func writeDate(_ date: Date) throws {
        let interval = date.timeIntervalSince1970
        guard interval >= CivilDate.gregorianStart, interval < CivilDate.year10000 else {
            // Before 15 October 1582 Foundation's formatter uses the Julian calendar, and past
            // year 9999 it writes more digits: JSONEncoder writes those itself. Not through
            // ISO8601DateFormatter, which is not what JSONEncoder's `.iso8601` uses: it rounds
            // a negative time with a fraction to the later second, JSONEncoder to the earlier.
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .iso8601
            bytes.append(contentsOf: try encoder.encode(date))
            return
        }
        let seconds = Int64(interval.rounded(.down))
        let (days, secondOfDay) = seconds.quotientAndRemainder(dividingBy: 86_400)
        let (day, second) = secondOfDay < 0 ? (days - 1, secondOfDay + 86_400) : (days, secondOfDay)
        let (year, month, dayOfMonth) = CivilDate.from(daysSince1970: day)
        bytes.append(UInt8(ascii: "\""))
        appendDigits(Int(year), 4)
        bytes.append(UInt8(ascii: "-"))
        appendDigits(month, 2)
        bytes.append(UInt8(ascii: "-"))
        appendDigits(dayOfMonth, 2)
        bytes.append(UInt8(ascii: "T"))
        appendDigits(Int(second / 3600), 2)
        bytes.append(UInt8(ascii: ":"))
        appendDigits(Int(second / 60 % 60), 2)
        bytes.append(UInt8(ascii: ":"))
        appendDigits(Int(second % 60), 2)
        bytes.append(UInt8(ascii: "Z"))
        bytes.append(UInt8(ascii: "\""))
    }

    private func appendDigits(_ value: Int, _ count: Int) {
        var divisor = 1
        for _ in 1..<count { divisor *= 10 }
        var value = value
        while divisor > 0 {
            bytes.append(UInt8(ascii: "0") + UInt8(value / divisor))
            value %= divisor
            divisor /= 10
        }
    }
}

/// Days since 1970-01-01 to and from a proleptic Gregorian date (Howard Hinnant's algorithms).
enum CivilDate {
    /// 1582-10-15T00:00:00Z, the first day of the Gregorian calendar, in seconds since 1970.
    static let gregorianStart: TimeInterval = -12_219_292_800
    /// 10000-01-01T00:00:00Z.
    static let year10000: TimeInterval = 253_402_300_800

    static func from(daysSince1970 days: Int64) -> (year: Int64, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = Int(dayOfYear - (153 * monthIndex + 2) / 5 + 1)
        let month = Int(monthIndex < 10 ? monthIndex + 3 : monthIndex - 9)
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    static func daysSince1970(year: Int64, month: Int, day: Int) -> Int64 {
        let year = month <= 2 ? year - 1 : year
        let era = (year >= 0 ? year : year - 399) / 400
        let yearOfEra = year - era * 400
        let monthIndex = Int64(month > 2 ? month - 3 : month + 9)
        let dayOfYear = (153 * monthIndex + 2) / 5 + Int64(day) - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}

/// The encoder of one value: opens at most one container, closed by ``finish()``.
final class JSONValueEncoder: Encoder {
    enum Opened { case none, keyed, unkeyed, single }

    unowned let writer: JSONByteWriter
    let depth: Int
    var opened = Opened.none
    /// Whether the open container has an element yet (for the commas).
    var hasElement = false
    /// A request beyond the fast path was made: every later write, and ``finish()``, throws.
    var refused = false

    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(writer: JSONByteWriter, depth: Int) {
        self.writer = writer
        self.depth = depth
    }

    func reset() {
        opened = .none
        hasElement = false
        refused = false
    }

    /// Gives up the fast path (nested containers handed out for later, super encoders).
    @discardableResult
    func refuse() -> JSONValueEncoder {
        refused = true
        return self
    }

    /// Closes the container, or writes `{}` for a value that encoded nothing (as Foundation).
    func finish() throws {
        if refused { throw JSONFastPath.unsupported }
        switch opened {
        case .none: writer.bytes.append(contentsOf: [UInt8(ascii: "{"), UInt8(ascii: "}")])
        case .keyed: writer.bytes.append(UInt8(ascii: "}"))
        case .unkeyed: writer.bytes.append(UInt8(ascii: "]"))
        case .single: break
        }
    }

    /// Opens `kind`, or continues it when this encoder opened it already; a second container
    /// of another kind, or a second single value, is beyond the fast path.
    private func open(_ kind: Opened) {
        if opened == kind && kind != .single { return }
        guard opened == .none else {
            refused = true
            return
        }
        opened = kind
        switch kind {
        case .keyed: writer.bytes.append(UInt8(ascii: "{"))
        case .unkeyed: writer.bytes.append(UInt8(ascii: "["))
        case .none, .single: break
        }
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        // The protocol cannot throw here: a refused open is remembered and thrown at the next write.
        open(.keyed)
        return KeyedEncodingContainer(JSONKeyedEncoder<Key>(encoder: self))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        open(.unkeyed)
        return JSONUnkeyedEncoder(encoder: self)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        open(.single)
        return JSONSingleEncoder(encoder: self)
    }

    /// Before an element of the open container: the comma.
    func element() {
        if hasElement { writer.bytes.append(UInt8(ascii: ",")) }
        hasElement = true
    }

    func key(_ key: some CodingKey) {
        element()
        writer.writeString(key.stringValue)
        writer.bytes.append(UInt8(ascii: ":"))
    }
}

struct JSONKeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let encoder: JSONValueEncoder
    var codingPath: [any CodingKey] { [] }
    private var writer: JSONByteWriter { encoder.writer }

    private func begin(_ key: Key) throws {
        if encoder.refused { throw JSONFastPath.unsupported }
        encoder.key(key)
    }

    mutating func encodeNil(forKey key: Key) throws {
        try begin(key)
        writer.writeNull()
    }
    mutating func encode(_ value: Bool, forKey key: Key) throws {
        try begin(key)
        writer.writeBool(value)
    }
    mutating func encode(_ value: String, forKey key: Key) throws {
        try begin(key)
        writer.writeString(value)
    }
    mutating func encode(_ value: Double, forKey key: Key) throws {
        try begin(key)
        try writer.writeFloatingPoint(value)
    }
    mutating func encode(_ value: Float, forKey key: Key) throws {
        try begin(key)
        try writer.writeFloatingPoint(value)
    }
    mutating func encode(_ value: Int, forKey key: Key) throws {
        try begin(key)
        writer.writeInteger(value)
    }
    mutating func encode(_ value: Int8, forKey key: Key) throws {
        try begin(key)
        writer.writeInteger(value)
    }
    mutating func encode(_ value: Int16, forKey key: Key) throws {
        try begin(key)
        writer.writeInteger(value)
    }
    mutating func encode(_ value: Int32, forKey key: Key) throws {
        try begin(key)
        writer.writeInteger(value)
    }
    mutating func encode(_ value: Int64, forKey key: Key) throws {
        try begin(key)
        writer.writeInteger(value)
    }
    mutating func encode(_ value: UInt, forKey key: Key) throws {
        try begin(key)
        writer.writeInteger(value)
    }
    mutating func encode(_ value: UInt8, forKey key: Key) throws {
        try begin(key)
        writer.writeInteger(value)
    }
    mutating func encode(_ value: UInt16, forKey key: Key) throws {
        try begin(key)
        writer.writeInteger(value)
    }
    mutating func encode(_ value: UInt32, forKey key: Key) throws {
        try begin(key)
        writer.writeInteger(value)
    }
    mutating func encode(_ value: UInt64, forKey key: Key) throws {
        try begin(key)
        writer.writeInteger(value)
    }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try begin(key)
        try writer.write(value, depth: encoder.depth)
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key)
        -> KeyedEncodingContainer<NestedKey>
    {
        encoder.refuse()
        return KeyedEncodingContainer(JSONKeyedEncoder<NestedKey>(encoder: encoder))
    }
    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        encoder.refuse()
        return JSONUnkeyedEncoder(encoder: encoder)
    }
    mutating func superEncoder() -> any Encoder { encoder.refuse() }
    mutating func superEncoder(forKey key: Key) -> any Encoder { encoder.refuse() }
}

/// The writes an unkeyed and a single-value container share: each value after ``begin()``.
protocol JSONValueSink {
    var encoder: JSONValueEncoder { get }
    /// Before a value: refuses when the fast path was given up, writes the comma.
    mutating func begin() throws
}

extension JSONValueSink {
    var codingPath: [any CodingKey] { [] }
    private var writer: JSONByteWriter { encoder.writer }

    mutating func encodeNil() throws {
        try begin()
        writer.writeNull()
    }
    mutating func encode(_ value: Bool) throws {
        try begin()
        writer.writeBool(value)
    }
    mutating func encode(_ value: String) throws {
        try begin()
        writer.writeString(value)
    }
    mutating func encode(_ value: Double) throws {
        try begin()
        try writer.writeFloatingPoint(value)
    }
    mutating func encode(_ value: Float) throws {
        try begin()
        try writer.writeFloatingPoint(value)
    }
    mutating func encode(_ value: Int) throws {
        try begin()
        writer.writeInteger(value)
    }
    mutating func encode(_ value: Int8) throws {
        try begin()
        writer.writeInteger(value)
    }
    mutating func encode(_ value: Int16) throws {
        try begin()
        writer.writeInteger(value)
    }
    mutating func encode(_ value: Int32) throws {
        try begin()
        writer.writeInteger(value)
    }
    mutating func encode(_ value: Int64) throws {
        try begin()
        writer.writeInteger(value)
    }
    mutating func encode(_ value: UInt) throws {
        try begin()
        writer.writeInteger(value)
    }
    mutating func encode(_ value: UInt8) throws {
        try begin()
        writer.writeInteger(value)
    }
    mutating func encode(_ value: UInt16) throws {
        try begin()
        writer.writeInteger(value)
    }
    mutating func encode(_ value: UInt32) throws {
        try begin()
        writer.writeInteger(value)
    }
    mutating func encode(_ value: UInt64) throws {
        try begin()
        writer.writeInteger(value)
    }
    mutating func encode<T: Encodable>(_ value: T) throws {
        try begin()
        try writer.write(value, depth: encoder.depth)
    }
}

struct JSONUnkeyedEncoder: UnkeyedEncodingContainer, JSONValueSink {
    let encoder: JSONValueEncoder
    private(set) var count = 0

    mutating func begin() throws {
        if encoder.refused { throw JSONFastPath.unsupported }
        encoder.element()
        count += 1
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        encoder.refuse()
        return KeyedEncodingContainer(JSONKeyedEncoder<NestedKey>(encoder: encoder))
    }
    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        encoder.refuse()
        return JSONUnkeyedEncoder(encoder: encoder)
    }
    mutating func superEncoder() -> any Encoder { encoder.refuse() }
}

struct JSONSingleEncoder: SingleValueEncodingContainer, JSONValueSink {
    let encoder: JSONValueEncoder

    /// A single value container takes one value.
    func begin() throws {
        if encoder.refused || encoder.hasElement { throw JSONFastPath.unsupported }
        encoder.hasElement = true
    }
}

// MARK: Reading

/// One JSON document being read. Every value is found by its start index; the scan that
/// finds an object's members or an array's elements also checks the syntax of everything it
/// skips (strings with their escapes and UTF-8, numbers, literals, nesting), so a document
/// the reader accepts is one Foundation accepts.
/// A value, not an object: the decoders and containers that share it hold copies (one retain
/// of the payload each), and decoding allocates nothing for it.
struct JSONByteReader {
    let bytes: [UInt8]

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// Decodes the whole document as `type`.
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let start = skipWhitespace(0)
        let end = try skipValue(start)
        guard skipWhitespace(end) == bytes.count else { throw JSONFastPath.unsupported }
        return try value(type, at: start)
    }

    /// The value starting at `index`: Foundation's special cases first, then its own decoding.
    func value<T: Decodable>(_ type: T.Type, at index: Int) throws -> T {
        if type == String.self { return try string(at: index) as! T }
        if type == Int.self { return try integer(Int.self, at: index) as! T }
        if type == Bool.self { return try bool(at: index) as! T }
        if type == Double.self { return try floatingPoint(Double.self, at: index) as! T }
        if type == Date.self { return try date(at: index) as! T }
        if type == Data.self {
            guard let data = Data(base64Encoded: try string(at: index)) else { throw JSONFastPath.unsupported }
            return data as! T
        }
        if type == URL.self {
            guard let url = URL(string: try string(at: index)) else { throw JSONFastPath.unsupported }
            return url as! T
        }
        if type == Decimal.self {
            guard let decimal = Decimal(string: String(try numberText(at: index)), locale: nil) else { throw JSONFastPath.unsupported }
            return decimal as! T
        }
        return try T(from: JSONValueDecoder(reader: self, start: index))
    }

    // MARK: Scanning

    func skipWhitespace(_ index: Int) -> Int {
        var index = index
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x0A, 0x0D, 0x09: index += 1
            default: return index
            }
        }
        return index
    }

    private func byte(_ index: Int) throws -> UInt8 {
        guard index < bytes.count else { throw JSONFastPath.unsupported }
        return bytes[index]
    }

    /// The index after the value starting at `index`, checking its syntax.
    func skipValue(_ index: Int) throws -> Int {
        switch try byte(index) {
        case UInt8(ascii: "\""): return try skipString(index).end
        case UInt8(ascii: "{"): return try walkObject(index) { _, _, _, value in try skipValue(value) }
        case UInt8(ascii: "["): return try walkArray(index) { try skipValue($0) }
        case UInt8(ascii: "t"): return try skipLiteral(index, "true")
        case UInt8(ascii: "f"): return try skipLiteral(index, "false")
        case UInt8(ascii: "n"): return try skipLiteral(index, "null")
        default: return try skipNumber(index).end
        }
    }

    /// Walks the object at `index`: `member` gets each key's start, its end, whether it has
    /// escapes and the value's start, and returns the value's end. Returns the index after `}`.
    func walkObject(_ index: Int, _ member: (Int, Int, Bool, Int) throws -> Int) throws -> Int {
        try walk(index, close: UInt8(ascii: "}")) { index in
            guard try byte(index) == UInt8(ascii: "\"") else { throw JSONFastPath.unsupported }
            let (keyEnd, escaped) = try skipString(index)
            let colon = skipWhitespace(keyEnd)
            guard try byte(colon) == UInt8(ascii: ":") else { throw JSONFastPath.unsupported }
            return try member(index, keyEnd, escaped, skipWhitespace(colon + 1))
        }
    }

    /// Walks the array at `index`: `element` gets each element's start and returns its end.
    func walkArray(_ index: Int, _ element: (Int) throws -> Int) throws -> Int {
        try walk(index, close: UInt8(ascii: "]"), element)
    }

    /// The comma-separated items after the opening bracket at `index`, up to `close`.
    private func walk(_ index: Int, close: UInt8, _ item: (Int) throws -> Int) throws -> Int {
        var index = skipWhitespace(index + 1)
        if try byte(index) == close { return index + 1 }
        while true {
            index = skipWhitespace(try item(index))
            switch try byte(index) {
            case UInt8(ascii: ","): index = skipWhitespace(index + 1)
            case close: return index + 1
            default: throw JSONFastPath.unsupported
            }
        }
    }

    private func skipLiteral(_ index: Int, _ literal: StaticString) throws -> Int {
        let count = literal.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw JSONFastPath.unsupported }
        for offset in 0..<count where bytes[index + offset] != literal.utf8Start[offset] { throw JSONFastPath.unsupported }
        return index + count
    }

    /// A number's end and whether it is an integer (no fraction, no exponent), checking
    /// JSON's grammar (no leading zeros, no `+`, digits after `.` and `e`).
    func skipNumber(_ index: Int) throws -> (end: Int, integer: Bool) {
        var index = index
        if index < bytes.count && bytes[index] == UInt8(ascii: "-") { index += 1 }
        func digits() throws {
            let start = index
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
            if index == start { throw JSONFastPath.unsupported }
        }
        let first = index
        try digits()
        if bytes[first] == UInt8(ascii: "0") && index - first > 1 { throw JSONFastPath.unsupported }
        var integer = true
        if index < bytes.count && bytes[index] == UInt8(ascii: ".") {
            index += 1
            try digits()
            integer = false
        }
        if index < bytes.count && (bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E")) {
            index += 1
            if index < bytes.count && (bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-")) { index += 1 }
            try digits()
            integer = false
        }
        return (index, integer)
    }

    /// A string's end (after the closing quote) and whether it has escapes, checking the
    /// escapes, that no control character is raw, and that its bytes are UTF-8.
    func skipString(_ index: Int) throws -> (end: Int, escaped: Bool) {
        var index = index + 1
        var escaped = false
        while true {
            let byte = try byte(index)
            switch byte {
            case UInt8(ascii: "\""):
                return (index + 1, escaped)
            case UInt8(ascii: "\\"):
                escaped = true
                switch try self.byte(index + 1) {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"), UInt8(ascii: "n"),
                    UInt8(ascii: "r"), UInt8(ascii: "t"):
                    index += 2
                case UInt8(ascii: "u"):
                    guard index + 6 <= bytes.count, bytes[(index + 2)..<(index + 6)].allSatisfy({ Self.hexValue($0) != nil }) else {
                        throw JSONFastPath.unsupported
                    }
                    index += 6
                default:
                    throw JSONFastPath.unsupported
                }
            case 0..<0x20:
                throw JSONFastPath.unsupported
            case 0x20..<0x80:
                index += 1
            default:
                index = try skipUTF8Scalar(index)
            }
        }
    }

    /// The index after the multi-byte UTF-8 sequence at `index` (overlong forms, surrogates
    /// and values past U+10FFFF refused).
    private func skipUTF8Scalar(_ index: Int) throws -> Int {
        let lead = bytes[index]
        let count: Int
        let minimum: UInt32
        var scalar: UInt32
        switch lead {
        case 0xC2...0xDF: (count, minimum, scalar) = (2, 0x80, UInt32(lead & 0x1F))
        case 0xE0...0xEF: (count, minimum, scalar) = (3, 0x800, UInt32(lead & 0x0F))
        case 0xF0...0xF4: (count, minimum, scalar) = (4, 0x10000, UInt32(lead & 0x07))
        default: throw JSONFastPath.unsupported
        }
        guard index + count <= bytes.count else { throw JSONFastPath.unsupported }
        for offset in 1..<count {
            let next = bytes[index + offset]
            guard next & 0xC0 == 0x80 else { throw JSONFastPath.unsupported }
            scalar = scalar << 6 | UInt32(next & 0x3F)
        }
        guard scalar >= minimum, scalar <= 0x10FFFF, !(0xD800...0xDFFF).contains(scalar) else { throw JSONFastPath.unsupported }
        return index + count
    }

    private static func hexValue(_ byte: UInt8) -> UInt32? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }

    // MARK: Values

    func isNull(at index: Int) -> Bool {
        index < bytes.count && bytes[index] == UInt8(ascii: "n")
    }

    func bool(at index: Int) throws -> Bool {
        switch try byte(index) {
        case UInt8(ascii: "t"): return true
        case UInt8(ascii: "f"): return false
        default: throw JSONFastPath.unsupported
        }
    }

    func string(at index: Int) throws -> String {
        guard try byte(index) == UInt8(ascii: "\"") else { throw JSONFastPath.unsupported }
        let (end, escaped) = try skipString(index)
        if !escaped { return String(decoding: bytes[(index + 1)..<(end - 1)], as: UTF8.self) }
        return try unescape(from: index + 1, to: end - 1)
    }

    /// Bytes equal to the string at `index` (a key), without making a String when it has no escapes.
    func stringEquals(at index: Int, end: Int, escaped: Bool, _ other: String) throws -> Bool {
        if escaped { return try unescape(from: index + 1, to: end - 1) == other }
        var other = other
        return other.withUTF8 { utf8 in
            utf8.count == end - 1 - (index + 1) && utf8.elementsEqual(bytes[(index + 1)..<(end - 1)])
        }
    }

    private func unescape(from start: Int, to end: Int) throws -> String {
        var scalars = String.UnicodeScalarView()
        var utf8: [UInt8] = []
        var index = start
        func flush() {
            if !utf8.isEmpty {
                scalars.append(contentsOf: String(decoding: utf8, as: UTF8.self).unicodeScalars)
                utf8.removeAll(keepingCapacity: true)
            }
        }
        func hex(_ at: Int) -> UInt32 {
            (bytes[at..<(at + 4)]).reduce(0) { $0 << 4 | Self.hexValue($1)! }
        }
        while index < end {
            let byte = bytes[index]
            guard byte == UInt8(ascii: "\\") else {
                utf8.append(byte)
                index += 1
                continue
            }
            let kind = bytes[index + 1]
            index += 2
            let simple: UInt8? =
                switch kind {
                case UInt8(ascii: "b"): 0x08
                case UInt8(ascii: "f"): 0x0C
                case UInt8(ascii: "n"): 0x0A
                case UInt8(ascii: "r"): 0x0D
                case UInt8(ascii: "t"): 0x09
                case UInt8(ascii: "u"): nil
                default: kind
                }
            if let simple {
                utf8.append(simple)
                continue
            }
            var value = hex(index)
            index += 4
            if (0xD800...0xDBFF).contains(value) {
                // A surrogate pair: the low half must follow as another \u escape.
                guard index + 6 <= end, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                    throw JSONFastPath.unsupported
                }
                let low = hex(index + 2)
                guard (0xDC00...0xDFFF).contains(low) else { throw JSONFastPath.unsupported }
                value = 0x10000 + ((value - 0xD800) << 10) + (low - 0xDC00)
                index += 6
            }
            guard let scalar = Unicode.Scalar(value) else { throw JSONFastPath.unsupported }
            flush()
            scalars.append(scalar)
        }
        flush()
        return String(scalars)
    }

    func numberText(at index: Int) throws -> Substring {
        let (end, _) = try skipNumber(index)
        return Substring(decoding: bytes[index..<end], as: UTF8.self)
    }

    /// An integer in plain form; anything else (a fraction, an exponent, out of range) is
    /// left to Foundation, which accepts some of it.
    func integer<T: FixedWidthInteger>(_ type: T.Type, at index: Int) throws -> T {
        let (end, integer) = try skipNumber(index)
        guard integer else { throw JSONFastPath.unsupported }
        var value: T = 0
        var position = index
        let negative = bytes[position] == UInt8(ascii: "-")
        if negative { position += 1 }
        while position < end {
            let digit = T(bytes[position] - UInt8(ascii: "0"))
            let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (next, overflow2) = negative ? times.subtractingReportingOverflow(digit) : times.addingReportingOverflow(digit)
            guard !overflow1, !overflow2 else { throw JSONFastPath.unsupported }
            value = next
            position += 1
        }
        return value
    }

    /// A number as `T`; one out of `T`'s range is left to Foundation (which refuses it).
    func floatingPoint<T: BinaryFloatingPoint & LosslessStringConvertible>(_ type: T.Type, at index: Int) throws -> T {
        guard let value = T(String(try numberText(at: index))), value.isFinite else { throw JSONFastPath.unsupported }
        return value
    }

    /// `yyyy-MM-ddTHH:mm:ssZ` exactly; other ISO 8601 forms are left to Foundation.
    func date(at index: Int) throws -> Date {
        guard try byte(index) == UInt8(ascii: "\""), index + 22 <= bytes.count, bytes[index + 21] == UInt8(ascii: "\"") else {
            throw JSONFastPath.unsupported
        }
        func number(_ offset: Int, _ count: Int) throws -> Int {
            var value = 0
            for position in (index + 1 + offset)..<(index + 1 + offset + count) {
                let byte = bytes[position]
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { throw JSONFastPath.unsupported }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            return value
        }
        func separator(_ offset: Int, _ expected: Character) throws {
            guard bytes[index + 1 + offset] == expected.asciiValue! else { throw JSONFastPath.unsupported }
        }
        try separator(4, "-")
        try separator(7, "-")
        try separator(10, "T")
        try separator(13, ":")
        try separator(16, ":")
        try separator(19, "Z")
        let (year, month, day) = (try number(0, 4), try number(5, 2), try number(8, 2))
        let (hour, minute, second) = (try number(11, 2), try number(14, 2), try number(17, 2))
        guard year >= 1, (1...12).contains(month), (1...28).contains(day) || day <= Self.days(in: month, of: year), day >= 1,
            hour < 24, minute < 60, second < 60
        else { throw JSONFastPath.unsupported }
        let days = CivilDate.daysSince1970(year: Int64(year), month: month, day: day)
        let interval = TimeInterval(days * 86_400 + Int64(hour * 3600 + minute * 60 + second))
        // Julian dates (before 15 October 1582) are Foundation's.
        guard interval >= CivilDate.gregorianStart else { throw JSONFastPath.unsupported }
        return Date(timeIntervalSince1970: interval)
    }

    private static func days(in month: Int, of year: Int) -> Int {
        switch month {
        case 2: (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }
}

/// The decoder of the value at `start`: two words, so that as `any Decoder` it fits the
/// existential's inline buffer and costs no allocation.
struct JSONValueDecoder: Decoder {
    let reader: JSONByteReader
    let start: Int

    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(reader: JSONByteReader, start: Int) {
        self.reader = reader
        self.start = start
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        KeyedDecodingContainer(try JSONKeyedDecoder<Key>(reader: reader, start: start))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try JSONUnkeyedDecoder(reader: reader, start: start)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        JSONSingleDecoder(reader: reader, start: start)
    }
}

/// An object's members: each key's position and its value's start, in document order.
struct JSONKeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let reader: JSONByteReader
    /// Key start, key end (after its quote), whether the key has escapes, value start.
    private let members: [(key: Int, keyEnd: Int, escaped: Bool, value: Int)]
    var codingPath: [any CodingKey] { [] }

    init(reader: JSONByteReader, start: Int) throws {
        self.reader = reader
        guard start < reader.bytes.count, reader.bytes[start] == UInt8(ascii: "{") else { throw JSONFastPath.unsupported }
        var members: [(key: Int, keyEnd: Int, escaped: Bool, value: Int)] = []
        _ = try reader.walkObject(start) { key, keyEnd, escaped, value in
            members.append((key, keyEnd, escaped, value))
            return try reader.skipValue(value)
        }
        self.members = members
    }

    var allKeys: [Key] {
        members.compactMap { member in
            (try? reader.string(at: member.key)).flatMap { Key(stringValue: $0) }
        }
    }

    /// The start of `key`'s value (the first member of that name, as Foundation).
    private func find(_ key: Key) throws -> Int? {
        let name = key.stringValue
        for member in members where try reader.stringEquals(at: member.key, end: member.keyEnd, escaped: member.escaped, name) {
            return member.value
        }
        return nil
    }

    /// A missing key is left to Foundation, for its error.
    private func value(_ key: Key) throws -> Int {
        guard let index = try find(key) else { throw JSONFastPath.unsupported }
        return index
    }

    func contains(_ key: Key) -> Bool { (try? find(key)) != nil }

    func decodeNil(forKey key: Key) throws -> Bool { reader.isNull(at: try value(key)) }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try reader.bool(at: try value(key)) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try reader.string(at: try value(key)) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try reader.floatingPoint(type, at: try value(key)) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try reader.floatingPoint(type, at: try value(key)) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try reader.integer(type, at: try value(key)) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try reader.integer(type, at: try value(key)) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try reader.integer(type, at: try value(key)) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try reader.integer(type, at: try value(key)) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try reader.integer(type, at: try value(key)) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try reader.integer(type, at: try value(key)) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try reader.integer(type, at: try value(key)) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try reader.integer(type, at: try value(key)) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try reader.integer(type, at: try value(key)) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try reader.integer(type, at: try value(key)) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try reader.value(type, at: try value(key)) }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        KeyedDecodingContainer(try JSONKeyedDecoder<NestedKey>(reader: reader, start: try value(key)))
    }
    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try JSONUnkeyedDecoder(reader: reader, start: try value(key))
    }
    func superDecoder() throws -> any Decoder { throw JSONFastPath.unsupported }
    func superDecoder(forKey key: Key) throws -> any Decoder { throw JSONFastPath.unsupported }
}

struct JSONUnkeyedDecoder: UnkeyedDecodingContainer {
    let reader: JSONByteReader
    private let elements: [Int]
    var codingPath: [any CodingKey] { [] }
    var count: Int? { elements.count }
    var isAtEnd: Bool { currentIndex >= elements.count }
    private(set) var currentIndex = 0

    init(reader: JSONByteReader, start: Int) throws {
        self.reader = reader
        guard start < reader.bytes.count, reader.bytes[start] == UInt8(ascii: "[") else { throw JSONFastPath.unsupported }
        var elements: [Int] = []
        _ = try reader.walkArray(start) { element in
            elements.append(element)
            return try reader.skipValue(element)
        }
        self.elements = elements
    }

    /// The next element's start; past the end is left to Foundation, for its error.
    private mutating func next() throws -> Int {
        guard currentIndex < elements.count else { throw JSONFastPath.unsupported }
        defer { currentIndex += 1 }
        return elements[currentIndex]
    }

    mutating func decodeNil() throws -> Bool {
        guard currentIndex < elements.count else { throw JSONFastPath.unsupported }
        // Only a null is consumed (as Foundation).
        if reader.isNull(at: elements[currentIndex]) {
            currentIndex += 1
            return true
        }
        return false
    }
    mutating func decode(_ type: Bool.Type) throws -> Bool { try reader.bool(at: try next()) }
    mutating func decode(_ type: String.Type) throws -> String { try reader.string(at: try next()) }
    mutating func decode(_ type: Double.Type) throws -> Double { try reader.floatingPoint(type, at: try next()) }
    mutating func decode(_ type: Float.Type) throws -> Float { try reader.floatingPoint(type, at: try next()) }
    mutating func decode(_ type: Int.Type) throws -> Int { try reader.integer(type, at: try next()) }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try reader.integer(type, at: try next()) }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try reader.integer(type, at: try next()) }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try reader.integer(type, at: try next()) }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try reader.integer(type, at: try next()) }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try reader.integer(type, at: try next()) }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try reader.integer(type, at: try next()) }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try reader.integer(type, at: try next()) }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try reader.integer(type, at: try next()) }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try reader.integer(type, at: try next()) }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try reader.value(type, at: try next()) }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        KeyedDecodingContainer(try JSONKeyedDecoder<NestedKey>(reader: reader, start: try next()))
    }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try JSONUnkeyedDecoder(reader: reader, start: try next())
    }
    mutating func superDecoder() throws -> any Decoder { throw JSONFastPath.unsupported }
}

struct JSONSingleDecoder: SingleValueDecodingContainer {
    let reader: JSONByteReader
    let start: Int
    var codingPath: [any CodingKey] { [] }

    func decodeNil() -> Bool { reader.isNull(at: start) }
    func decode(_ type: Bool.Type) throws -> Bool { try reader.bool(at: start) }
    func decode(_ type: String.Type) throws -> String { try reader.string(at: start) }
    func decode(_ type: Double.Type) throws -> Double { try reader.floatingPoint(type, at: start) }
    func decode(_ type: Float.Type) throws -> Float { try reader.floatingPoint(type, at: start) }
    func decode(_ type: Int.Type) throws -> Int { try reader.integer(type, at: start) }
    func decode(_ type: Int8.Type) throws -> Int8 { try reader.integer(type, at: start) }
    func decode(_ type: Int16.Type) throws -> Int16 { try reader.integer(type, at: start) }
    func decode(_ type: Int32.Type) throws -> Int32 { try reader.integer(type, at: start) }
    func decode(_ type: Int64.Type) throws -> Int64 { try reader.integer(type, at: start) }
    func decode(_ type: UInt.Type) throws -> UInt { try reader.integer(type, at: start) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try reader.integer(type, at: start) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try reader.integer(type, at: start) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try reader.integer(type, at: start) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try reader.integer(type, at: start) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try reader.value(type, at: start) }
}
