import Courier
import CourierBus
import Testing

// The README's middleware, verbatim.

/// Carries the tenant of a conversation: a header on the way out, a task-local on the way in.
struct TenantMiddleware: BusMiddleware {
    @TaskLocal static var tenant: String?

    func handle(_ message: InboundMessage, next: (InboundMessage) async throws -> Void) async throws {
        guard let tenant = message.envelope.headers["tenant"] else {
            throw MissingTenant()  // a NonRetriableError: dead-lettered at once
        }
        try await Self.$tenant.withValue(tenant) { try await next(message) }
    }

    func prepare(_ message: inout OutboundMessage) async throws {
        guard let tenant = Self.tenant else { throw MissingTenant() }
        message.envelope.headers["tenant"] = tenant
    }
}

struct MissingTenant: NonRetriableError {}

/// User middleware on a bus over the in-memory transport: both ways, in order, and failing.
@Suite("MessageBus middleware")
struct BusMiddlewareTests {
    @Test func theTenantTravelsFromPublisherThroughATransformerToTheLastHandler() async throws {
        let broker = try InMemoryBroker()
        let bus = MessageBus(transport: InMemoryTransport(broker: broker), configuration: .init(middleware: [TenantMiddleware()]))
        let seen = Shared<[String]>([])
        try await bus.handle(CreateCustomer.self) { command, context in
            seen.update { $0.append("command \(TenantMiddleware.tenant ?? "none") \(context.headers["tenant"] ?? "none")") }
            try await context.publish(CustomerCreated(customerID: command.customerID))  // the tenant goes on
        }
        try await bus.subscribe(to: CustomerCreated.self, group: "crm") { _, _ in
            seen.update { $0.append("event \(TenantMiddleware.tenant ?? "none")") }
        }
        try await TenantMiddleware.$tenant.withValue("acme") {
            try await bus.send(CreateCustomer(customerID: "c1", email: "a@example.com"))
        }
        try await eventually("the command and its event") { seen().count == 2 }
        #expect(Set(seen()) == ["command acme acme", "event acme"])
        try await bus.shutdown()
    }

    @Test func aPrepareThatThrowsFailsThePublishAndSendsNothing() async throws {
        let broker = try InMemoryBroker()
        let bus = MessageBus(transport: InMemoryTransport(broker: broker), configuration: .init(middleware: [TenantMiddleware()]))
        await #expect(throws: MissingTenant.self) { try await bus.send(ChargeCard(orderID: 1)) }
        #expect(broker.depth(ofQueue: ChargeCard.queue) == 0)
        try await bus.shutdown()
    }

    @Test func aHandleThatThrowsANonRetriableErrorDeadLettersAtOnce() async throws {
        let broker = try InMemoryBroker()
        let plain = MessageBus(transport: InMemoryTransport(broker: broker))
        try await plain.send(ChargeCard(orderID: 1))  // no tenant header
        let bus = MessageBus(transport: InMemoryTransport(broker: broker), configuration: .init(middleware: [TenantMiddleware()]))
        let handled = Shared(0)
        try await bus.handle(ChargeCard.self) { _, _ in handled.update { $0 += 1 } }
        try await eventually("the dead letter") { broker.depth(ofQueue: ChargeCard.queue + ".dead-letter") == 1 }
        #expect(handled() == 0)
        try await bus.shutdown()
        try await plain.shutdown()
    }

    /// Records the order middlewares run in, both ways.
    struct Recorder: BusMiddleware {
        let name: String
        let log: Shared<[String]>
        func handle(_ message: InboundMessage, next: (InboundMessage) async throws -> Void) async throws {
            log.update { $0.append("in \(name)") }
            try await next(message)
            log.update { $0.append("out \(name)") }
        }
        func prepare(_ message: inout OutboundMessage) async throws {
            log.update { $0.append("prepare \(name)") }
            message.envelope.headers["order", default: ""] += name
        }
    }

    @Test func middlewaresRunInTheOrderGiven() async throws {
        let log = Shared<[String]>([])
        let broker = try InMemoryBroker()
        let bus = MessageBus(
            transport: InMemoryTransport(broker: broker),
            configuration: .init(middleware: [Recorder(name: "a", log: log), Recorder(name: "b", log: log)])
        )
        let header = Shared<String?>(nil)
        try await bus.handle(ChargeCard.self) { _, context in
            log.update { $0.append("handler") }
            header.update { $0 = context.headers["order"] }
        }
        try await bus.send(ChargeCard(orderID: 1))
        try await eventually("the handler") { header() != nil }
        try await bus.shutdown()
        #expect(log() == ["prepare a", "prepare b", "in a", "in b", "handler", "out b", "out a"])
        #expect(header() == "ab")
    }
}
