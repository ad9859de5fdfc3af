import Courier
import Foundation
import Testing

@Suite("Core model")
struct CoreModelTests {
    @Test func messageIDsAreVersion4UUIDStringsAndUnique() {
        var seen = Set<String>()
        for _ in 0..<100_000 {
            let id = MessageID.random()
            #expect(UUID(uuidString: id) != nil, "\(id)")
            let characters = Array(id)
            #expect(characters[14] == "4")
            #expect("89AB".contains(characters[19]))
            seen.insert(id)
        }
        #expect(seen.count == 100_000)
    }

    @Test func envelopeAccessorsUseTheWellKnownHeaders() {
        var envelope = Envelope(text: "hello")
        envelope.type = "CustomerRegistered.v2"
        envelope.contentType = "application/json"
        envelope.correlationID = "c-1"
        envelope.causationID = "m-0"
        #expect(
            envelope.headers == [
                "ce_type": "CustomerRegistered.v2",
                "content-type": "application/json",
                "ce_correlationid": "c-1",
                "ce_causationid": "m-0",
            ])
        #expect(envelope.text == "hello")
        #expect(Envelope(payload: [0xFF, 0xFE]).text == nil)
    }

    /// Envelopes share their fields until one changes (copy-on-write): a change to a copy never
    /// shows in the original, and equality and hashing look at the fields, not the storage.
    @Test func envelopeCopiesAreIndependentValues() {
        let original = Envelope(
            id: "id-1", payload: [1, 2], headers: ["a": "1"], key: "k", timestamp: Date(timeIntervalSince1970: 1_700_000_000))
        var copy = original
        #expect(copy == original)
        copy.headers["b"] = "2"
        copy.payload.append(3)
        copy.id = "id-2"
        copy.key = nil
        copy.timestamp = Date(timeIntervalSince1970: 0)
        #expect(original.headers == ["a": "1"] && original.payload == [1, 2] && original.id == "id-1" && original.key == "k")
        #expect(original.timestamp == Date(timeIntervalSince1970: 1_700_000_000))
        #expect(copy.headers == ["a": "1", "b": "2"] && copy.payload == [1, 2, 3] && copy.id == "id-2" && copy.key == nil)
        let twin = Envelope(
            id: "id-1", payload: [1, 2], headers: ["a": "1"], key: "k", timestamp: Date(timeIntervalSince1970: 1_700_000_000))
        #expect(twin == original && twin.hashValue == original.hashValue && twin != copy)
        #expect(Set([original, twin, copy]).count == 2)
    }

    @Test func wellKnownHeaderNamesFollowCloudEventsBinaryMode() {
        for name in CourierHeader.all where name != CourierHeader.contentType && !name.hasPrefix("trace") {
            #expect(name.hasPrefix("ce_"), "\(name)")
            let attribute = name.dropFirst(3)
            #expect(attribute.allSatisfy { $0.isLowercase || $0.isNumber }, "\(name)")
            #expect(attribute.count <= 20, "CloudEvents attribute names should not exceed 20 characters: \(name)")
        }
        #expect(Set(CourierHeader.all).count == CourierHeader.all.count)
    }

    @Test func rfc3339RoundTripsMilliseconds() throws {
        let date = Date(timeIntervalSince1970: 1_700_000_000.123)
        let text = RFC3339.string(from: date)
        #expect(text == "2023-11-14T22:13:20.123Z")
        let parsed = try #require(RFC3339.date(from: text))
        #expect(abs(parsed.timeIntervalSince(date)) < 0.001)
        #expect(RFC3339.date(from: "2023-11-14T22:13:20Z") != nil)
        #expect(RFC3339.date(from: "yesterday") == nil)
        #expect(RFC3339.string(from: Date(timeIntervalSince1970: 1_700_000_000.005)) == "2023-11-14T22:13:20.005Z")
        #expect(RFC3339.string(from: Date(timeIntervalSince1970: 1_700_000_000.05)) == "2023-11-14T22:13:20.050Z")
        #expect(RFC3339.string(from: Date(timeIntervalSince1970: -0.001)) == "1969-12-31T23:59:59.999Z")
    }

    /// Headers read from a client library's bytes give the same envelope as headers read as strings.
    @Test func receivedHeadersFromBytesMatchStrings() throws {
        let sent = Envelope(
            id: "order-7", payload: Array("{}".utf8), headers: ["ce_type": "OrderPlaced.v1", "tenant": "acme"], key: "k-1",
            timestamp: Date(timeIntervalSince1970: 1_700_000_000.123))
        let headers = WireFormat.headers(for: sent, attempt: 3).merging(["ce_time_zone": "UTC"]) { a, _ in a }
        var fromBytes = WireFormat.Received()
        var fromStrings = WireFormat.Received()
        for (name, value) in headers {
            var name = name
            var value = value
            name.withUTF8 { name in
                value.withUTF8 { value in fromBytes.add(name: UnsafeRawBufferPointer(name), value: UnsafeRawBufferPointer(value)) }
            }
            fromStrings.add(name, value)
        }
        let a = fromBytes.envelope(payload: sent.payload)
        let b = fromStrings.envelope(payload: sent.payload)
        #expect(a.envelope == b.envelope && a.attempt == 3 && b.attempt == 3)
        #expect(a.envelope.id == "order-7" && a.envelope.key == "k-1" && a.envelope.timestamp == sent.timestamp)
        #expect(a.envelope.headers == ["ce_type": "OrderPlaced.v1", "tenant": "acme", "ce_time_zone": "UTC"])
    }

    /// The digit-by-digit parse of Courier's own form agrees with Foundation's ISO 8601 parser
    /// across leap years, month ends, centuries and dates before 1970.
    @Test func rfc3339FastParseAgreesWithFoundation() throws {
        let style = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
        var generator = SystemRandomNumberGenerator()
        let fixed: [Int64] = [
            0, -1, 951_782_400_000, 951_868_799_999, 4_107_542_400_000, -2_208_988_800_001, 1_709_251_199_999, 253_402_300_799_999,
        ]
        let random = (0..<2_000).map { _ in Int64.random(in: -5_000_000_000_000...5_000_000_000_000, using: &generator) }
        for milliseconds in fixed + random {
            let date = Date(timeIntervalSince1970: Double(milliseconds) / 1000)
            let text = RFC3339.string(from: date)
            let expected = try style.parse(text)
            let parsed = try #require(RFC3339.date(from: text), "\(text)")
            #expect(abs(parsed.timeIntervalSince(expected)) < 0.0005, "\(text)")
        }
        for malformed in ["2023-13-14T22:13:20.123Z", "2023-11-14T22:13:2x.123Z", "2023-11-14 22:13:20.123Z"] {
            #expect(RFC3339.date(from: malformed) == nil, "\(malformed)")
        }
    }

    @Test(arguments: ["orders", "web-store.customer-registered", "A_b-9.x", String(repeating: "n", count: 200)])
    func validNames(name: String) throws {
        try DestinationName.validate(name, as: .topic)
    }

    @Test(arguments: [
        ("", "empty"), (" ", "contains \" \""), ("a/b", "contains \"/\""), ("a:b", "contains \":\""),
        ("ümlaut", "non-ASCII"), (".", "reserved"), ("..", "reserved"), ("amq.direct", "amq."),
        ("__consumer_offsets", "__"), (String(repeating: "n", count: 201), "201 bytes"),
    ])
    func invalidNamesSayWhy(name: String, reason: String) {
        do {
            try DestinationName.validate(name, as: .queue)
            Issue.record("\(name) accepted")
        } catch {
            #expect(error.code == .invalidName)
            #expect(error.message.contains(reason), "\(error.message)")
            #expect(error.message.contains("queue name"))
        }
    }

    @Test func errorsCarryCodeMessageAndRetriability() {
        let error = CourierError(.queueFull, "full; consume faster", isRetriable: true)
        #expect(error.shortDescription == "queueFull")
        #expect(error.description == "queueFull: full; consume faster")
        #expect(error.isRetriable)
        #expect(CourierError.Code.invalidName != .invalidURL)
    }

    @Test func defaultDeadLetterQueueNames() {
        #expect(DeliveryOrigin.queue("billing.charge").defaultDeadLetterQueue == "billing.charge.dead-letter")
        #expect(DeliveryOrigin.topic("orders", group: "billing").defaultDeadLetterQueue == "orders.billing.dead-letter")
        #expect(DeliveryOrigin.topic("orders", group: "billing").kind == "topic")
    }

    @Test func subscriptionOptionsAreValidated() {
        #expect(throws: CourierError.self) { try SubscriptionOptions(prefetch: 0).validate() }
        #expect(throws: CourierError.self) { try SubscriptionOptions(maxDeliveryAttempts: 0).validate() }
    }
}
