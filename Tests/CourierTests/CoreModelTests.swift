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
        #expect(envelope.headers == [
            "ce_type": "CustomerRegistered.v2",
            "content-type": "application/json",
            "ce_correlationid": "c-1",
            "ce_causationid": "m-0",
        ])
        #expect(envelope.text == "hello")
        #expect(Envelope(payload: [0xFF, 0xFE]).text == nil)
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
