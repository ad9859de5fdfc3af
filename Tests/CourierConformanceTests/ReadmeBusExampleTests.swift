import Configuration
import Courier
import CourierBus
import CourierConformance
import CourierTransports
import Logging
import ServiceLifecycle
import Synchronization
import Testing

// The README's bus contracts, verbatim (this target has no other types of these names).
struct CustomerRegistered: IntegrationEvent {  // topic "customer-registered"
    var customerID: String
    var email: String
    var messageKey: String? { customerID }  // one customer's messages are handled in order
}

struct CreateCustomer: IntegrationCommand {  // queue "create-customer"
    var customerID: String
    var email: String
}

struct CustomerCreated: IntegrationEvent {
    var customerID: String
}

/// The README's bus examples, so they always compile and run.
@Suite("README bus examples")
struct ReadmeBusExampleTests {
    @Test func theBusExampleRuns() async throws {
        #expect(CustomerRegistered.topic == "customer-registered")
        #expect(CreateCustomer.queue == "create-customer")
        let created = Recorded()

        let bus = MessageBus(transport: try InMemoryTransport(), configuration: .init(source: "/web-store"))

        // Marketing handles the command: returning acks it; throwing retries it, then dead-letters it.
        try await bus.handle(CreateCustomer.self) { command, context in
            context.logger.info("creating customer \(command.customerID)")
            created.append(command.customerID)
        }

        // The transformer: each event becomes a command; the event is acked once the command is confirmed.
        try await bus.transform(CustomerRegistered.self, group: "marketing-transformer") { event, _ in
            [.send(CreateCustomer(customerID: event.customerID, email: event.email))]
        }

        try await bus.publish(CustomerRegistered(customerID: "c-42", email: "ada@example.com"))

        for _ in 0..<1000 where created.value.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
        try await bus.shutdown()  // graceful: running handlers finish, the rest stays with the broker
        #expect(created.value == ["c-42"])
    }

    @Test func theServiceExampleRuns() async throws {
        let environment = EnvironmentVariablesProvider(environmentVariables: ["COURIER_TRANSPORT_URL": "memory://readme-service"])
        let config = ConfigReader(provider: environment)
        let bus = try await MessageBus.connect(config: config)  // a missing or bad URL fails here, clearly
        try await bus.handle(CreateCustomer.self, options: HandlerOptions(concurrency: 8)) { command, context in
            try await context.publish(CustomerCreated(customerID: command.customerID))
        }
        let services = ServiceGroup(
            configuration: .init(
                services: [bus], gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: "marketing")
            ))
        // The test plays the rest of the system: it listens for CustomerCreated, sends a
        // command, and then shuts the service down as SIGTERM would.
        let observer = try Transports.url(from: config)
        let listener = try await Transports.connect(observer)
        let events = try await listener.subscribe(to: CustomerCreated.topic, group: "observer")
        let running = Task { try await services.run() }
        try await listener.send(
            {
                var command = Envelope(text: #"{"customerID":"c-7","email":"x@example.com"}"#); command.type = "CreateCustomer.v1";
                return command
            }(),
            to: CreateCustomer.queue
        )
        var iterator = events.makeAsyncIterator()
        let event = try #require(try await iterator.next())
        #expect(event.envelope.text == #"{"customerID":"c-7"}"#)
        try await event.ack()
        await services.triggerGracefulShutdown()
        try await running.value
        try await listener.shutdown()
    }
}

final class Recorded: Sendable {
    private let ids = Mutex<[String]>([])
    func append(_ id: String) { ids.withLock { $0.append(id) } }
    var value: [String] { ids.withLock { $0 } }
}
