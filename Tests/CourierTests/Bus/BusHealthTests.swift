import Courier
import CourierBus
import Testing

/// ``MessageBus/health()`` and ``Transport/health()`` on the in-memory transport.
@Suite("Health")
struct BusHealthTests {
    @Test func theInMemoryTransportIsHealthyUntilShutDown() async throws {
        let transport = try InMemoryTransport()
        let open = await transport.health()
        #expect(open.isHealthy)
        #expect(open.connections.map(\.state) == [.connected])
        try await transport.shutdown()
        let closed = await transport.health()
        #expect(!closed.isHealthy)
        #expect(closed.connections.map(\.state) == [.closed])
        #expect("\(closed)".hasPrefix("memory: unhealthy"))
    }

    /// A transport that does not implement health reports no connection: unhealthy, never
    /// healthy by default.
    @Test func aTransportWithoutAReportIsNotHealthy() {
        #expect(!TransportHealth(system: "x", connections: []).isHealthy)
    }

    /// A handler that fails on every message shows as failing after `failingAfter` in a row
    /// (the bus stays healthy, degraded); one success makes it running again.
    @Test func aHandlerThatKeepsFailingShowsAsFailing() async throws {
        let transport = ObservedTransport(try InMemoryTransport())
        let bus = MessageBus(
            transport: transport,
            configuration: .init(retryPolicy: RetryPolicy(immediateRetries: 0, delayedRetries: 0)).with { $0.failingAfter = 3 })
        let failing = Shared(true)
        let handled = Shared(0)
        try await bus.handle(ChargeCard.self) { _, _ in
            handled.update { $0 += 1 }
            if failing() { throw Flaky() }
        }
        let fresh = await bus.health()
        #expect(fresh.isHealthy && !fresh.isDegraded)
        #expect(fresh.registrations.map(\.state) == [.running])
        #expect(fresh.registrations.first?.messageType == ChargeCard.messageType)

        try await bus.send((1...2).map { ChargeCard(orderID: $0) })
        try await eventually("two failures") { await bus.health().registrations.first?.consecutiveFailures == 2 }
        #expect(await bus.health().registrations.first?.state == .running, "below failingAfter")

        try await bus.send(ChargeCard(orderID: 3))
        try await eventually("three failures") { await bus.health().registrations.first?.consecutiveFailures == 3 }
        let failingHealth = await bus.health()
        #expect(failingHealth.registrations.first?.state == .failing)
        #expect(failingHealth.registrations.first?.lastError?.contains("the database did not answer") == true)
        #expect(failingHealth.isHealthy && failingHealth.isDegraded)
        #expect("\(failingHealth)".hasPrefix("bus: degraded"))

        failing.update { $0 = false }
        try await bus.send(ChargeCard(orderID: 4))
        try await eventually("a success") { await bus.health().registrations.first?.consecutiveFailures == 0 }
        let recovered = await bus.health()
        #expect(recovered.registrations.first?.state == .running && recovered.registrations.first?.lastError == nil)
        #expect(!recovered.isDegraded)
        try await bus.shutdown()
    }

    /// A registration whose subscription ended with an error is failed, with the error, and
    /// the bus is unhealthy; after shutdown the transport is closed and the bus unhealthy.
    @Test func aFailedSubscriptionMakesTheBusUnhealthy() async throws {
        let transport = ObservedTransport(try InMemoryTransport())
        let bus = MessageBus(transport: transport)
        let registration = try await bus.handle(CreateCustomer.self) { _, _ in }
        try await bus.subscribe(to: OrderPlaced.self, group: "billing") { _, _ in }
        #expect(await bus.health().isHealthy)
        transport.failPulls(1)
        try await bus.send(CreateCustomer(customerID: "c", email: "x"))
        try await eventually("the registration's failure") { registration.failure != nil }
        let health = await bus.health()
        #expect(!health.isHealthy)
        #expect(health.registrations.map(\.state).sorted { $0.rawValue < $1.rawValue } == [.failed, .running])
        #expect(health.registrations.contains { $0.state == .failed && $0.lastError != nil })
        try await bus.shutdown()
        let closed = await bus.health()
        #expect(!closed.isHealthy && closed.registrations.isEmpty)
    }
}

/// The README's readiness function, verbatim.
func readiness(of bus: MessageBus) async -> (status: Int, body: String) {
    let health = await bus.health()
    return (health.isHealthy ? 200 : 503, health.description)
}

@Suite("README health example")
struct ReadmeHealthExampleTests {
    @Test func theReadinessFunctionSays200Then503() async throws {
        let bus = MessageBus(transport: try InMemoryTransport())
        try await bus.handle(ChargeCard.self) { _, _ in }
        let ready = await readiness(of: bus)
        #expect(ready.status == 200)
        #expect(
            ready.body == "bus: healthy\nmemory: healthy\n  in-process: connected\n  queue billing.charge-card (ChargeCard.v1): running")
        try await bus.shutdown()
        #expect(await readiness(of: bus).status == 503)
    }
}

extension MessageBus.Configuration {
    /// This configuration changed by `change`.
    fileprivate func with(_ change: (inout Self) -> Void) -> Self {
        var copy = self
        change(&copy)
        return copy
    }
}
