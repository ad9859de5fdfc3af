import Configuration
import Courier
import CourierBus
import CourierTransports
import Foundation
import Logging
import ServiceLifecycle
import Testing

/// Graceful shutdown under swift-service-lifecycle, and choosing the transport from
/// configuration.
@Suite("MessageBus lifecycle and configuration")
struct BusLifecycleTests {
    /// Runs `bus` in a service group; returns the group and the task running it.
    func run(_ bus: MessageBus) -> (ServiceGroup, Task<Void, any Error>) {
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: [bus], logger: Logger(label: "test.lifecycle")))
        return (group, Task { try await group.run() })
    }

    @Test func gracefulShutdownFinishesRunningHandlersAndLeavesTheRestQueued() async throws {
        let broker = try InMemoryBroker()
        let first = MessageBus(transport: InMemoryTransport(broker: broker), configuration: .init(shutdownDeadline: .seconds(10)))
        let handled = Shared<[Int]>([])
        let started = Shared(0)
        // The handlers run until the shutdown has been triggered, and half a second more: a
        // fixed sleep let a loaded machine finish one before the shutdown began, and start a
        // fifth.
        let shutdownTriggered = Shared(false)
        try await first.subscribe(to: OrderPlaced.self, group: "billing", options: HandlerOptions(concurrency: 4)) { event, _ in
            started.update { $0 += 1 }
            while !shutdownTriggered() { try await Task.sleep(for: .milliseconds(10)) }
            try await Task.sleep(for: .milliseconds(500))
            handled.update { $0.append(event.orderID) }
        }
        let (group, running) = run(first)
        try await first.publish((0..<20).map { OrderPlaced(orderID: $0, customer: "customer-\($0)") })
        try await eventually("four running handlers") { started() == 4 }
        await group.triggerGracefulShutdown()
        shutdownTriggered.update { $0 = true }
        try await running.value
        #expect(handled().count == 4, "the four running handlers finished")
        #expect(started() == 4, "nothing new started after the shutdown began")
        #expect(broker.depth(ofGroup: "billing", topic: OrderPlaced.topic) == 16, "the other 16 wait in the group")
        await #expect(throws: CourierError.self) { try await first.publish(OrderPlaced(orderID: 99, customer: "x")) }

        // The next instance of the service picks up where the first stopped.
        let second = MessageBus(transport: InMemoryTransport(broker: broker))
        try await second.subscribe(to: OrderPlaced.self, group: "billing", options: HandlerOptions(concurrency: 4)) { event, _ in
            handled.update { $0.append(event.orderID) }
        }
        try await eventually("every order") { handled().count == 20 }
        #expect(Set(handled()) == Set(0..<20), "every order handled exactly once across the restart")
        try await second.shutdown()
    }

    @Test func handlersPastTheDeadlineAreCancelledAndTheirMessagesReturned() async throws {
        let broker = try InMemoryBroker()
        let first = MessageBus(transport: InMemoryTransport(broker: broker), configuration: .init(shutdownDeadline: .milliseconds(200)))
        let started = Shared(0)
        try await first.handle(ChargeCard.self, options: HandlerOptions(concurrency: 3)) { _, _ in
            started.update { $0 += 1 }
            try await Task.sleep(for: .seconds(30))  // stuck; cancellation ends it
        }
        let (group, running) = run(first)
        try await first.send((0..<10).map { ChargeCard(orderID: $0) })
        try await eventually("three stuck handlers") { started() == 3 }
        let begin = ContinuousClock.now
        await group.triggerGracefulShutdown()
        try await running.value
        #expect(ContinuousClock.now - begin < .seconds(5), "the deadline bounds the shutdown")
        #expect(broker.depth(ofQueue: ChargeCard.queue) == 10, "the stuck messages went back unacked")

        let handled = Shared<[Int]>([])
        let second = MessageBus(transport: InMemoryTransport(broker: broker))
        try await second.handle(ChargeCard.self) { command, _ in handled.update { $0.append(command.orderID) } }
        try await eventually("every command") { handled().count == 10 }
        #expect(Set(handled()) == Set(0..<10))
        try await second.shutdown()
    }

    @Test func cancellingTheServiceReturnsRunningMessagesAtOnce() async throws {
        let broker = try InMemoryBroker()
        let bus = MessageBus(transport: InMemoryTransport(broker: broker), configuration: .init(shutdownDeadline: .seconds(30)))
        let started = Shared(0)
        try await bus.handle(ChargeCard.self) { _, _ in
            started.update { $0 += 1 }
            try await Task.sleep(for: .seconds(30))
        }
        let running = Task { try await bus.run() }
        try await bus.send(ChargeCard(orderID: 1))
        try await eventually("the stuck handler") { started() == 1 }
        let begin = ContinuousClock.now
        running.cancel()
        try await running.value
        #expect(ContinuousClock.now - begin < .seconds(5))
        #expect(broker.depth(ofQueue: ChargeCard.queue) == 1)
    }

    @Test func shutdownIsIdempotentAndEndsRun() async throws {
        let bus = MessageBus(transport: try InMemoryTransport())
        let running = Task { try await bus.run() }
        try await Task.sleep(for: .milliseconds(20))
        async let a: Void = bus.shutdown()
        async let b: Void = bus.shutdown()
        _ = try await (a, b)
        try await running.value
        try await bus.shutdown()
    }

    // MARK: Configuration

    @Test func theTransportComesFromConfiguration() async throws {
        let config = ConfigReader(provider: InMemoryProvider(values: ["courier.transport.url": "memory://bus-config-test"]))
        #expect(try Transports.url(from: config) == TransportURL("memory://bus-config-test"))
        let bus = try await MessageBus.connect(config: config)
        let handled = Shared<[Int]>([])
        try await bus.handle(ChargeCard.self) { command, _ in handled.update { $0.append(command.orderID) } }
        try await bus.send(ChargeCard(orderID: 42))
        try await eventually("the command") { handled() == [42] }
        #expect(bus.transport.capabilities.system == "memory")
        try await bus.shutdown()
    }

    @Test func theEnvironmentVariableIsCourierTransportURL() throws {
        #expect(Transports.environmentName(of: Transports.defaultKey) == "COURIER_TRANSPORT_URL")
        let environment = EnvironmentVariablesProvider(environmentVariables: [
            "COURIER_TRANSPORT_URL": "kafka://k1:9092,k2:9092?partitions=6"
        ])
        guard case .kafka(let settings) = try Transports.url(from: ConfigReader(provider: environment)) else {
            Issue.record("COURIER_TRANSPORT_URL did not select Kafka")
            return
        }
        #expect(settings.bootstrapServers.count == 2)
    }

    @Test func aMissingOrBadURLFailsAtStartWithAClearMessage() async throws {
        let empty = ConfigReader(provider: InMemoryProvider(values: [:]))
        do {
            _ = try Transports.url(from: empty)
            Issue.record("a missing URL was accepted")
        } catch let error as CourierError {
            #expect(error.code == .invalidConfiguration)
            #expect(error.message.contains("COURIER_TRANSPORT_URL"))
        }
        #expect(try Transports.url(from: empty, default: "memory://") == TransportURL("memory://"))

        let bad = ConfigReader(provider: InMemoryProvider(values: ["courier.transport.url": "amqp://shop:hunter2@rabbit:99999/shop"]))
        do {
            _ = try await MessageBus.connect(config: bad)
            Issue.record("a bad URL was accepted")
        } catch let error as CourierError {
            #expect(error.code == .invalidURL)
            #expect(error.message.contains("courier.transport.url"))
            #expect(error.message.contains("port"))
            #expect(!error.message.contains("hunter2"), "the password never appears: \(error.message)")
        }
        let unknown = ConfigReader(provider: InMemoryProvider(values: ["courier.transport.url": "nats://localhost"]))
        #expect(throws: CourierError.self) { try Transports.url(from: unknown) }
    }
}
