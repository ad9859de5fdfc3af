import Courier
import CourierBus
import CourierOutbox
import CourierRabbitMQ
import CourierSQLite
import Foundation
import GRDB
import Testing

extension BrokerIntegration.RabbitMQIntegration {
    /// The outbox relay while RabbitMQ restarts under it: rows committed before, during and
    /// after the outage all reach the group once the broker is back; nothing committed is lost.
    @Suite("Outbox relay through a broker restart")
    struct RabbitMQRelayRestartTests {
        struct Registered: IntegrationEvent {
            static let topic = "tests.relay-restart.registered"
            var customerID: Int
            var messageKey: String? { "k\(customerID % 20)" }
        }

        @Test func everyCommittedRowArrivesAfterTheBrokerRestarts() async throws {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("courier-relay-restart-\(MessageID.random()).sqlite")
                .path
            defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
            let group = "relay-restart-\(MessageID.random().prefix(8).lowercased())"
            let consumer = MessageBus(transport: try await RabbitMQBroker.connect())
            let received = Collected<Int>()
            try await consumer.subscribe(to: Registered.self, group: group) { event, _ in received.append(event.customerID) }

            let bus = MessageBus(transport: try await RabbitMQBroker.connect())
            let store = try SQLiteMessageStore(path: path, bus: bus)
            var options = OutboxRelay.Options()
            options.maximumBackoff = .seconds(1)
            let relay = store.relay(options: options)
            let relaying = Task { try await relay.run() }

            let total = 3000
            let writer = Task {
                for id in 1...total {
                    try await store.writer.write { db in try store.outbox(db).publish(Registered(customerID: id)) }
                    if id % 100 == 0 { try await Task.sleep(for: .milliseconds(20)) }
                }
            }
            #expect(await received.wait(for: 300, timeout: .seconds(60)), "the stream is flowing before the restart")
            try await RabbitMQBroker.restart()
            try await writer.value
            #expect(await received.wait(for: total, timeout: .seconds(120)), "\(Set(received.all).count) of \(total) arrived")
            try await Task.sleep(for: .milliseconds(300))
            let all = received.all
            #expect(Set(all) == Set(1...total), "lost: \(Set(1...total).subtracting(all).sorted().prefix(20))")
            #expect(try await store.backlog().count == 0)
            print(
                "[relay restart] \(total) committed, \(Set(all).count) arrived, \(all.count - Set(all).count) duplicates, \(relay.statistics.published) published, \(relay.statistics.retries) relay retries"
            )
            relaying.cancel()
            _ = try? await relaying.value
            try await bus.shutdown()
            try await consumer.shutdown()
        }
    }
}
