import Foundation
import Testing

@testable import CourierBus

/// The serializer's byte-level JSON path against Foundation's `JSONEncoder`/`JSONDecoder`:
/// the same values both ways, the same text for numbers, strings and dates, and Foundation
/// deciding whatever the fast path leaves to it.
@Suite("JSON coding")
struct JSONCodingTests {
    enum Colour: String, Codable, Equatable { case red, green }
    enum Priority: Int, Codable, Equatable { case low = 1, high = 9 }
    /// Synthesized Codable with associated values uses nested containers: Foundation's path.
    enum Shape: Codable, Equatable {
        case circle(radius: Double)
        case square(Int)
    }

    struct Line: Codable, Equatable {
        var sku: String
        var quantity: Int
        var price: Decimal
    }

    struct Everything: Codable, Equatable {
        var string = "a/b\"c\\ \n\r\t\u{8}\u{c}\u{1}\u{1f}é😀\u{7f}\u{2028}"
        var empty = ""
        var int = Int.min
        var int8 = Int8.min
        var int16 = Int16.max
        var int32 = Int32.min
        var int64 = Int64.max
        var uint = UInt.max
        var uint8 = UInt8.max
        var uint16 = UInt16.max
        var uint32 = UInt32.max
        var uint64 = UInt64.max
        var double = 0.1
        var float: Float = 3.25
        var bool = true
        var optional: String? = nil
        var present: Int? = 7
        var date = Date(timeIntervalSince1970: 1_700_000_000.75)
        var data = Data([0, 1, 2, 254, 255])
        var url = URL(string: "https://example.com/a/b?c=d&e=f#g")!
        var decimal = Decimal(string: "12345.678")!
        var colour = Colour.green
        var priority = Priority.high
        var lines = [Line(sku: "A-1", quantity: 2, price: Decimal(string: "9.99")!), Line(sku: "B/2", quantity: 0, price: 0)]
        var tags: [String] = []
        var byName = ["one": 1, "two": 2]
        var byNumber = [3: "three"]
        var nested = [[1, 2], [], [3]]
        var maybe: [Int?] = [1, nil, 3]
        var uuid = UUID(uuidString: "E621E1F8-C36C-495A-93FC-0C247A3E6E5F")!
        // Elements go through the unkeyed and single-value containers.
        var int8s: [Int8] = [-128, 0, 127]
        var int16s: [Int16] = [-1]
        var int32s: [Int32] = [2]
        var int64s: [Int64] = [.min]
        var uints: [UInt] = [.max]
        var uint8s: [UInt8] = [255]
        var uint16s: [UInt16] = [65_535]
        var uint32s: [UInt32] = [7]
        var uint64s: [UInt64] = [.max]
        var floats: [Float] = [0.5, -1]
        var bools = [true, false]
        var doubles = [1.5]
    }

    let foundationEncoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }()
    let foundationDecoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }()

    private func fastEncode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let writer = JSONByteWriter()
        try writer.write(value, depth: -1)
        return writer.bytes
    }

    private func fastDecode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) throws -> T {
        try JSONByteReader(bytes).decode(type)
    }

    private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    @Test func everyKindOfValueRoundTripsWithFoundationBothWays() throws {
        var value = Everything()
        value.date = Date(timeIntervalSince1970: 1_700_000_000)  // whole seconds: ISO 8601 keeps no more
        let fast = try fastEncode(value)
        #expect(try foundationDecoder.decode(Everything.self, from: Data(fast)) == value, "Foundation reads what the fast path writes")
        let foundation = Array(try foundationEncoder.encode(value))
        #expect(try fastDecode(Everything.self, foundation) == value, "the fast path reads what Foundation writes, without help")
        // The same document, key order aside.
        let parsedFast = try JSONSerialization.jsonObject(with: Data(fast)) as? NSDictionary
        let parsedFoundation = try JSONSerialization.jsonObject(with: Data(foundation)) as? NSDictionary
        #expect(parsedFast == parsedFoundation)
    }

    @Test func numbersStringsAndDatesAreWrittenAsFoundationWritesThem() throws {
        let doubles = [
            0, -0.0, 1, -1.5, 0.1, 1e20, 1e-7, 123_456_789.125, 1e300, 2.5e15, 1e16, 0.000001, .leastNonzeroMagnitude,
            .greatestFiniteMagnitude,
        ]
        #expect(text(try fastEncode(doubles)) == text(Array(try foundationEncoder.encode(doubles))))
        let floats: [Float] = [0.1, 1, 3.4e38, 1e-7, 16_777_216, -2.5]
        #expect(text(try fastEncode(floats)) == text(Array(try foundationEncoder.encode(floats))))
        let strings = [
            "", "plain", "a/b", "quote\" back\\", "\u{0}\u{1}\u{8}\u{9}\u{a}\u{c}\u{d}\u{1f}\u{7f}", "é😀\u{2028}\u{2029}", "\u{feff}x",
        ]
        #expect(text(try fastEncode(strings)) == text(Array(try foundationEncoder.encode(strings))))
        let decimals = ["0", "12.340", "-0.001", "99999999999999999999.5", "1e-10"].map { Decimal(string: $0)! }
        #expect(text(try fastEncode(decimals)) == text(Array(try foundationEncoder.encode(decimals))))
        var generator = SystemRandomNumberGenerator()
        // Years 1 to 9999, fractions included (both round down to the second); before 1582
        // Foundation counts in the Julian calendar.
        let dates =
            (0..<2000).map { _ in Date(timeIntervalSince1970: Double.random(in: -62_135_596_800..<253_402_300_800, using: &generator)) }
            + [Date(timeIntervalSince1970: -1.5), Date(timeIntervalSince1970: 0.9999), Date(timeIntervalSince1970: 951_782_400)]
            // Julian-calendar times just after a whole second (CI found them at random, about
            // one run in seven): ISO8601DateFormatter writes the later second, JSONEncoder the
            // earlier one.
            + [-27_087_702_044.000_45, -56_098_374_534.000_21, -61_898_034_058.000_41].map { Date(timeIntervalSince1970: $0) }
        #expect(text(try fastEncode(dates)) == text(Array(try foundationEncoder.encode(dates))))
        let whole = dates.map { Date(timeIntervalSince1970: $0.timeIntervalSince1970.rounded(.down)) }
        let gregorian = whole.filter { $0.timeIntervalSince1970 >= CivilDate.gregorianStart }
        #expect(try fastDecode([Date].self, Array(try foundationEncoder.encode(gregorian))) == gregorian)
        #expect(try JSONMessageSerializer().decode([Date].self, from: Array(try foundationEncoder.encode(whole))) == whole)
    }

    @Test func escapedStringsAndKeysAreRead() throws {
        struct Keyed: Codable, Equatable {
            var name: String
            enum CodingKeys: String, CodingKey { case name = "na/me" }
        }
        let json = #"{"na\/me": "a\u00e9\ud83d\ude00\n\"\\\/"}"#
        #expect(try fastDecode(Keyed.self, Array(json.utf8)) == Keyed(name: "aé😀\n\"\\/"))
        #expect(
            try fastDecode([String: Int].self, Array(#"{"a":1,"a":2, "b" : 3 }"#.utf8)) == ["a": 1, "b": 3],
            "the first of a key, as Foundation")
    }

    /// Where the fast path gives up, the serializer's answer is Foundation's.
    @Test func whatTheFastPathLeavesOutFoundationDecides() throws {
        let serializer = JSONMessageSerializer()
        // Nested containers (associated values) and super encoders: Foundation writes them.
        let shapes: [Shape] = [.circle(radius: 1.5), .square(2)]
        #expect(throws: JSONFastPath.self) { try fastEncode(shapes) }
        #expect(try serializer.decode([Shape].self, from: try serializer.encode(shapes)) == shapes)
        // Lenient forms Foundation reads.
        #expect(try serializer.decode([Int].self, from: Array("[1.0, 1e2]".utf8)) == [1, 100])
        #expect(throws: JSONFastPath.self) { try fastDecode([Int].self, Array("[1.0]".utf8)) }
        let fractional = try serializer.decode([Date].self, from: Array(#"["2023-11-14T22:13:20.5Z"]"#.utf8))
        #expect(fractional == (try foundationDecoder.decode([Date].self, from: Data(#"["2023-11-14T22:13:20.5Z"]"#.utf8))))
        // Malformed payloads fail with Foundation's error, even where the bad part is a key no
        // one reads.
        struct One: Codable, Equatable { var x: Int }
        for bad in [#"{"x":1} x"#, #"{"x":1,"y":[1,}"#, #"{"x":01}"#, #"{"y":2}"#, #"{"x":"1"}"#, #"{"x":1.5}"#, "", "[]"] {
            #expect(throws: DecodingError.self, "\(bad)") { try serializer.decode(One.self, from: Array(bad.utf8)) }
        }
        // Foundation does not look inside strings it skips: a bad escape, a raw control
        // character or bad UTF-8 in a member no one reads passes. The fast path refuses them
        // and Foundation decides: the same result.
        let invalidUTF8: [UInt8] = Array(#"{"x":1,"y":""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8)
        for lenient in [Array(#"{"x":1,"y":"\q"}"#.utf8), Array("{\"x\":1,\"y\":\"\u{1}\"}".utf8), invalidUTF8] {
            #expect(throws: JSONFastPath.self) { try fastDecode(One.self, lenient) }
            #expect(try serializer.decode(One.self, from: lenient) == (try foundationDecoder.decode(One.self, from: Data(lenient))))
        }
        #expect(throws: (any Error).self) { try serializer.encode([Double.nan]) }
        #expect(throws: DecodingError.self) { try serializer.decode([Double].self, from: Array("[1e400]".utf8)) }
        #expect(throws: DecodingError.self) { try serializer.decode([Float].self, from: Array("[1e39]".utf8)) }
        #expect(throws: DecodingError.self) { try serializer.decode([UInt8].self, from: Array("[256]".utf8)) }
    }

    @Test func theSerializerRoundTripsEverything() throws {
        let serializer = JSONMessageSerializer()
        var value = Everything()
        value.date = Date(timeIntervalSince1970: 1_700_000_000)
        #expect(try serializer.decode(Everything.self, from: try serializer.encode(value)) == value)
    }
}
