import Courier
import Testing

/// The README's example, verbatim, so it always compiles and runs.
@Suite("README example")
struct ReadmeExampleTests {
    @Test func theTransportLayerExampleRuns() async throws {
        let transport = try InMemoryTransport()

        // A group is durable once it exists: it keeps every event published from then on.
        let billing = try await transport.subscribe(to: "orders.order-placed", group: "billing")

        var event = Envelope(text: #"{"orderId": 42}"#, key: "customer-7")
        event.type = "OrderPlaced.v1"
        event.contentType = "application/json"
        try await transport.publish(event, to: "orders.order-placed")  // returns once stored

        // Commands go to a queue, which keeps them until a consumer acks them.
        try await transport.send(Envelope(text: #"{"orderId": 42}"#), to: "billing.charge-card")

        var seen = 0
        for try await delivery in billing {
            print(delivery.envelope.text ?? "", "attempt", delivery.attempt)
            try await delivery.ack()  // or .nack(delay: .seconds(5)), or .deadLetter(reason:)
            seen += 1
            await billing.close()  // ends the loop; un-acked deliveries go back
        }
        try await transport.shutdown()
        #expect(seen == 1)
    }
}
