import Courier
import CourierBus
import CourierConformance
import CourierRabbitMQ
import CourierStoreConformance
import Foundation
import Synchronization
import Testing

/// A command whose handler "crashes" (never returns) in the test below.
struct Fragile: IntegrationCommand {
    static let queue = "rmq-bus-fragile-\(MessageID.random().prefix(8).lowercased())"
    var number: Int
}

extension BrokerIntegration.RabbitMQIntegration {
    /// The bus scenarios on RabbitMQ.
    @Suite("Bus conformance: RabbitMQTransport")
    struct RabbitMQBusTests {
        /// B7 runs with SQLite's inbox (CourierSQLite); B8's outage restarts the broker.
        static let bus = BusConformance(inbox: try! SQLiteConformanceInbox(), brokerOutage: { try await RabbitMQBroker.restart() }) {
            try await RabbitMQBroker.connect()
        }

        @Test("bus scenario", arguments: BusScenario.allCases)
        func scenario(_ scenario: BusScenario) async throws {
            let (line, failure) = try await Self.bus.outcome(of: scenario)
            print("[bus rabbitmq] \(line)")
            if let failure { Issue.record("\(failure)") }
        }

        /// A command whose handler never finishes, on a quorum queue: the service stops (as if it
        /// crashed) and the message comes back unsettled. With a policy of one attempt, the
        /// next service dead-letters it without calling its handler — a message that kills
        /// its consumer cannot do so forever.
        @Test func aMessageThatCameBackUnsettledPastTheLastAttemptIsDeadLettered() async throws {
            guard case .amqp(let settings) = try TransportURL(RabbitMQBroker.url + "?queue_type=quorum") else { return }
            let configuration = MessageBus.Configuration(retryPolicy: RetryPolicy(immediateRetries: 0, delayedRetries: 0))
            let first = MessageBus(transport: try await RabbitMQTransport.connect(.init(settings: settings)), configuration: configuration)
            let started = Atomic<Bool>(false)
            try await first.handle(Fragile.self) { _, _ in
                started.store(true, ordering: .relaxed)
                try await Task.sleep(for: .seconds(3600))
            }
            try await first.send(Fragile(number: 1))
            let deadline = ContinuousClock.now + .seconds(15)
            while !started.load(ordering: .relaxed) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
            let handlerStarted = started.load(ordering: .relaxed)
            #expect(handlerStarted)
            try await first.shutdown(deadline: .zero)

            let second = MessageBus(transport: try await RabbitMQTransport.connect(.init(settings: settings)), configuration: configuration)
            // The dead-letter queue first: RabbitMQ 3.10 can fail a consume (541, `noproc`) on a
            // new quorum queue that another connection declares at the same moment.
            let letters = try await second.transport.consume(queue: second.transport.deadLetterQueue(for: .queue(Fragile.queue)))
            let calls = Atomic<Int>(0)
            try await second.handle(Fragile.self) { _, _ in calls.add(1, ordering: .relaxed) }
            let watchdog = Task {
                try await Task.sleep(for: .seconds(15))
                await letters.close()
            }
            var iterator = letters.makeAsyncIterator()
            let letter = try #require(try await iterator.next(), "the message is dead-lettered")
            watchdog.cancel()
            #expect(letter.envelope.headers[CourierHeader.deadLetterReason]?.contains("came back unsettled") == true)
            try await letter.ack()
            await letters.close()
            let callsAfter = calls.load(ordering: .relaxed)
            #expect(callsAfter == 0, "the handler was not called again")
            try await second.shutdown()
        }

        /// B7 with PostgreSQL's inbox (CourierPostgres).
        @Test func exactlyOnceWithPostgreSQLsInbox() async throws {
            let inbox = PostgresConformanceInbox(url: PostgresDatabase.url)
            let bus = BusConformance(inbox: inbox) { try await RabbitMQBroker.connect() }
            let (line, failure) = try await bus.outcome(of: .exactlyOnceWithInbox)
            await inbox.close()
            print("[bus rabbitmq, PostgreSQL inbox] \(line)")
            if let failure { Issue.record("\(failure)") }
        }
    }
}
