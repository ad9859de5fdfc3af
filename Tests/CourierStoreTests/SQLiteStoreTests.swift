import Courier
import CourierBus
import CourierOutbox
import CourierSQLite
import Foundation
import GRDB
import Synchronization
import Testing

struct CustomerRegistered: IntegrationEvent, Equatable {
    var customerID: Int
    var name: String
    var messageKey: String? { "customer-\(customerID % 10)" }
}

struct CreateCustomer: IntegrationCommand, Equatable {
    var customerID: Int
    var name: String
    var messageKey: String? { "customer-\(customerID % 10)" }
}

/// A temporary SQLite database file, deleted with its WAL files at the end.
final class TemporaryDatabase: Sendable {
    let path: String
    init() {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("courier-store-\(UUID().uuidString).sqlite").path
    }
    deinit {
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }
    func pool() throws -> DatabasePool {
        let pool = try DatabasePool(path: path)
        try pool.write { db in
            try db.execute(sql: "CREATE TABLE IF NOT EXISTS customer (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        }
        return pool
    }
}

/// Collects what a subscription receives.
final class Received<T: Sendable>: Sendable {
    private let items = Mutex<[T]>([])
    func append(_ item: T) { items.withLock { $0.append(item) } }
    var all: [T] { items.withLock { $0 } }
    var count: Int { items.withLock { $0.count } }

    /// Waits up to `timeout` until `count` items arrived.
    func wait(for count: Int, timeout: Duration = .seconds(10)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while self.count < count {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return true
    }
}

/// The outbox and inbox on SQLite (GRDB) with the in-memory transport: commit or nothing,
/// the relay's order and failures, the inbox's exactly-once effect, schema and name checks.
@Suite struct SQLiteStoreTests {
    func register(_ db: Database, _ store: SQLiteMessageStore, _ id: Int) throws {
        try db.execute(sql: "INSERT INTO customer (id, name) VALUES (?, ?)", arguments: [id, "customer \(id)"])
        try store.outbox(db).publish(CustomerRegistered(customerID: id, name: "customer \(id)"))
    }

    /// Subscribes a group to CustomerRegistered and collects the ids.
    func collect(_ bus: MessageBus, group: String = "marketing") async throws -> Received<Int> {
        let received = Received<Int>()
        try await bus.subscribe(to: CustomerRegistered.self, group: group) { event, _ in received.append(event.customerID) }
        return received
    }

    @Test func messagesReachTheBrokerOnlyWhenTheTransactionCommits() async throws {
        let database = TemporaryDatabase()
        let pool = try database.pool()
        let bus = MessageBus(transport: try InMemoryTransport())
        let store = try SQLiteMessageStore(pool, bus: bus)
        let received = try await collect(bus)
        try await pool.write { db in try register(db, store, 1) }
        struct Refused: Error {}
        await #expect(throws: Refused.self) {
            try await pool.write { db in
                try register(db, store, 2)
                throw Refused()
            }
        }
        try await pool.write { db in try register(db, store, 3) }
        #expect(try await store.relay().relayOnce() == 2)
        #expect(await received.wait(for: 2))
        try await Task.sleep(for: .milliseconds(50))
        #expect(received.all == [1, 3])
        #expect(try await store.backlog().count == 0)
        try await bus.shutdown()
    }

    @Test func theOutboxRefusesToWriteOutsideATransaction() async throws {
        let database = TemporaryDatabase()
        let pool = try database.pool()
        let bus = MessageBus(transport: try InMemoryTransport())
        let store = try SQLiteMessageStore(pool, bus: bus)
        let error = #expect(throws: CourierError.self) {
            try pool.writeWithoutTransaction { db in
                try store.outbox(db).publish(CustomerRegistered(customerID: 1, name: "x"))
            }
        }
        #expect(error?.code == .invalidConfiguration)
        try await bus.shutdown()
    }

    /// The web store commits customers and dies before its relay publishes them: a new
    /// process (a new bus and relay on the same file) publishes every one, in order per key.
    @Test func whatWasCommittedBeforeACrashIsPublishedAfterTheRestart() async throws {
        let database = TemporaryDatabase()
        let broker = try InMemoryBroker()
        let consumer = MessageBus(transport: InMemoryTransport(broker: broker))
        let received = try await collect(consumer)
        do {
            let crashed = MessageBus(transport: InMemoryTransport(broker: broker))
            let store = try SQLiteMessageStore(database.pool(), bus: crashed)
            for id in 1...200 { try await store.writer.write { db in try register(db, store, id) } }
            // No relay ran: the process is gone.
        }
        let restarted = MessageBus(transport: InMemoryTransport(broker: broker))
        let store = try SQLiteMessageStore(database.pool(), bus: restarted)
        #expect(try await store.backlog().count == 200)
        let relay = store.relay()
        let running = Task { try await relay.run() }
        #expect(await received.wait(for: 200))
        // The consumer can see the last messages before the relay has marked their rows sent
        // (a CI run cancelled the relay in between: every message delivered, 0 counted).
        for _ in 0..<500 where relay.statistics.published < 200 { try await Task.sleep(for: .milliseconds(10)) }
        running.cancel()
        _ = await running.result
        #expect(Set(received.all) == Set(1...200))
        for key in 0..<10 {
            let ofKey = received.all.filter { $0 % 10 == key }
            #expect(ofKey == ofKey.sorted(), "per-key order of customer-\(key)")
        }
        #expect(relay.statistics.published == 200)
        try await consumer.shutdown()
        try await restarted.shutdown()
    }

    @Test func theRelayWakesOnCommitWithoutWaitingForItsPoll() async throws {
        let database = TemporaryDatabase()
        let bus = MessageBus(transport: try InMemoryTransport())
        let store = try SQLiteMessageStore(database.pool(), bus: bus)
        let received = try await collect(bus)
        var options = OutboxRelay.Options()
        options.pollInterval = .seconds(60)
        let relay = store.relay(options: options)
        let running = Task { try await relay.run() }
        try await Task.sleep(for: .milliseconds(100))
        try await store.writer.write { db in try register(db, store, 7) }
        // With a 60 s poll, only the commit notification brings it in time.
        #expect(await received.wait(for: 1, timeout: .seconds(5)))
        running.cancel()
        _ = await running.result
        try await bus.shutdown()
    }

    /// A message the broker refuses for good is marked failed with its reason; the relay
    /// publishes the rest, in order.
    @Test func aRefusedMessageIsMarkedFailedAndTheRelayGoesOn() async throws {
        let database = TemporaryDatabase()
        var configuration = InMemoryBroker.Configuration()
        configuration.maxPayloadSize = 200
        let bus = MessageBus(transport: try InMemoryTransport(configuration: configuration))
        let store = try SQLiteMessageStore(database.pool(), bus: bus)
        let received = Received<String>()
        try await bus.subscribe(to: CustomerRegistered.self, group: "marketing") { event, _ in received.append(event.name) }
        try await store.writer.write { db in
            let outbox = store.outbox(db)
            try outbox.publish(CustomerRegistered(customerID: 1, name: "first"))
            try outbox.publish(CustomerRegistered(customerID: 2, name: String(repeating: "x", count: 500)))
            try outbox.publish(CustomerRegistered(customerID: 3, name: "third"))
        }
        let relay = store.relay()
        #expect(try await relay.relayOnce() == 3)
        #expect(await received.wait(for: 2))
        #expect(received.all == ["first", "third"])
        let backlog = try await store.backlog()
        #expect(backlog.count == 0 && backlog.failed == 1)
        let failed = try await store.failedMessages()
        #expect(failed.count == 1)
        #expect(failed.first?.reason.contains("payloadTooLarge") == true || failed.first?.reason.contains("too large") == true)
        #expect(relay.statistics.failed == 1 && relay.statistics.published == 2)
        try await bus.shutdown()
    }

    /// The broker is away: nothing is marked sent, the rows stay, and the next turn after it
    /// is back publishes them.
    @Test func aClosedTransportLeavesTheRowsForTheNextTurn() async throws {
        let database = TemporaryDatabase()
        let broker = try InMemoryBroker()
        let down = MessageBus(transport: InMemoryTransport(broker: broker))
        let store = try SQLiteMessageStore(database.pool(), bus: down)
        try await store.writer.write { db in
            for id in 1...5 { try register(db, store, id) }
        }
        try await down.shutdown()
        await #expect(throws: CourierError.self) { try await store.relay().relayOnce() }
        #expect(try await store.backlog().count == 5)
        let up = MessageBus(transport: InMemoryTransport(broker: broker))
        let received = try await collect(up)
        let again = try SQLiteMessageStore(database.pool(), bus: up)
        #expect(try await again.relay().relayOnce() == 5)
        #expect(await received.wait(for: 5))
        try await up.shutdown()
    }

    /// Two relays on one database, claiming concurrently (50 keys, batches of 37, so that
    /// one relay's batch holds most keys): every message once, per-key order kept, and both
    /// relays take part.
    @Test func twoRelaysKeepPerKeyOrderAndPublishEachMessageOnce() async throws {
        let database = TemporaryDatabase()
        // Publishing takes a while (as over a network), so the relays' batches overlap.
        struct Slow: BusMiddleware {
            func prepare(_ message: inout OutboundMessage) async throws {
                try await Task.sleep(for: .microseconds(Int.random(in: 0...300)))
            }
        }
        var configuration = MessageBus.Configuration()
        configuration.middleware = [Slow()]
        let bus = MessageBus(transport: try InMemoryTransport(), configuration: configuration)
        let store = try SQLiteMessageStore(database.pool(), bus: bus)
        let received = Received<Int>()
        try await bus.subscribe(to: CustomerRegistered.self, group: "marketing") { event, context in
            #expect(context.envelope.key == "k\(event.customerID % 50)")
            received.append(event.customerID)
        }
        try await store.writer.write { db in
            let outbox = store.outbox(db)
            for id in 1...2000 { try outbox.publish(CustomerRegistered(customerID: id, name: "c"), key: "k\(id % 50)") }
        }
        var options = OutboxRelay.Options()
        options.batchSize = 37
        let relays = [store.relay(options: options), store.relay(options: options)]
        #expect(relays[0].owner != relays[1].owner)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for relay in relays {
                group.addTask { while try await relay.relayOnce() > 0 {} }
            }
            try await group.waitForAll()
        }
        #expect(try await store.backlog().count == 0)
        #expect(await received.wait(for: 2000))
        try await Task.sleep(for: .milliseconds(50))
        #expect(received.count == 2000)
        #expect(Set(received.all).count == 2000)
        for key in 0..<50 {
            let ofKey = received.all.filter { $0 % 50 == key }
            #expect(ofKey == ofKey.sorted(), "per-key order of k\(key)")
        }
        #expect(relays[0].statistics.published + relays[1].statistics.published == 2000)
        #expect(relays[0].statistics.published > 0 && relays[1].statistics.published > 0, "both relays published")
        try await bus.shutdown()
    }

    /// The inbox: the handler's writes and the message id commit together before the ack; a
    /// redelivery is acked without running the handler; a failing handler leaves nothing.
    @Test func theInboxHandlesEachCommandOnceInEffect() async throws {
        let database = TemporaryDatabase()
        let pool = try database.pool()
        let bus = MessageBus(transport: try InMemoryTransport())
        let store = try SQLiteMessageStore(pool, bus: bus)
        let calls = Received<Int>()
        let failOnce = Mutex<Set<Int>>([3])
        let done = Received<Int>()
        var options = HandlerOptions()
        options.retryPolicy = RetryPolicy(immediateRetries: 2, delayedRetries: 0)
        try await bus.handle(CreateCustomer.self, inbox: store, options: options) { command, context in
            calls.append(command.customerID)
            try context.db.execute(
                sql: "INSERT INTO customer (id, name) VALUES (?, ?)", arguments: [command.customerID, command.name])
            try context.outbox.publish(CustomerRegistered(customerID: command.customerID, name: command.name))
            struct Flaky: Error {}
            if failOnce.withLock({ $0.remove(command.customerID) }) != nil { throw Flaky() }
            done.append(command.customerID)
        }
        let commands = (1...5).map { CreateCustomer(customerID: $0, name: "customer \($0)") }
        // The same message twice (a redelivery after a crash before the ack): same id.
        let envelopes = try bus.stage(commands.map { .send($0) }).map(\.envelope)
        try await bus.deliver(staged: envelopes.map { StagedMessage(kind: .command, destination: CreateCustomer.queue, envelope: $0) })
        try await bus.deliver(staged: [StagedMessage(kind: .command, destination: CreateCustomer.queue, envelope: envelopes[1])])
        #expect(await done.wait(for: 5))
        try await Task.sleep(for: .milliseconds(100))
        #expect(calls.all.sorted() == [1, 2, 3, 3, 4, 5])  // 3 failed once (rolled back); 2's copy never ran
        let stored = try await pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM customer") }
        #expect(stored == 5)
        #expect(try await store.backlog().count == 5)  // one event per customer, none from the failed try
        for envelope in envelopes {
            #expect(try await store.wasHandled(envelope.id, scope: InboxScope.queue(CreateCustomer.queue)))
        }
        try await bus.shutdown()
    }

    /// Consume, write, produce, commit, ack: the follow-up event carries the command's
    /// correlation and causation, and goes out through the relay.
    @Test func followUpsCommitWithTheHandlerAndCarryTheConversation() async throws {
        let database = TemporaryDatabase()
        let bus = MessageBus(transport: try InMemoryTransport())
        let store = try SQLiteMessageStore(database.pool(), bus: bus)
        let events = Received<MessageContext>()
        try await bus.subscribe(to: CustomerRegistered.self, group: "analytics") { _, context in events.append(context) }
        try await bus.handle(CreateCustomer.self, inbox: store) { command, context in
            try context.outbox.publish(CustomerRegistered(customerID: command.customerID, name: command.name))
        }
        let command = try bus.stage([.send(CreateCustomer(customerID: 9, name: "nine"))])[0]
        try await bus.deliver(staged: [command])
        let relay = store.relay()
        let running = Task { try await relay.run() }
        #expect(await events.wait(for: 1))
        running.cancel()
        _ = await running.result
        #expect(events.all.first?.envelope.causationID == command.envelope.id)
        #expect(events.all.first?.correlationID == command.envelope.correlationID)
        try await bus.shutdown()
    }

    @Test func badTableNamesAndANewerSchemaAreRefusedWithTypedErrors() async throws {
        let database = TemporaryDatabase()
        let pool = try database.pool()
        let bus = MessageBus(transport: try InMemoryTransport())
        for tables in [
            StoreTables(outbox: "outbox; DROP TABLE customer"), StoreTables(outbox: "1outbox"), StoreTables(outbox: ""),
            StoreTables(outbox: "same", inbox: "same"),
        ] {
            let error = #expect(throws: CourierError.self) { try SQLiteMessageStore(pool, bus: bus, tables: tables) }
            #expect(error?.code == .invalidName)
        }
        _ = try SQLiteMessageStore(pool, bus: bus)
        try await pool.write { db in
            try db.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('courier/courier_outbox+courier_inbox/99')")
        }
        let newer = #expect(throws: CourierError.self) { try SQLiteMessageStore(pool, bus: bus) }
        #expect(newer?.code == .invalidConfiguration)
        #expect(newer?.message.contains("newer Courier") == true)
        let unreadable = #expect(throws: CourierError.self) {
            try SQLiteMessageStore(path: "/nonexistent-directory/x/store.sqlite", bus: bus)
        }
        #expect(unreadable?.code == .unreachable)
        try await bus.shutdown()
    }

    @Test func retentionPurgesSentRowsAndOldInboxIds() async throws {
        let database = TemporaryDatabase()
        let bus = MessageBus(transport: try InMemoryTransport())
        let store = try SQLiteMessageStore(database.pool(), bus: bus)
        try await store.writer.write { db in try register(db, store, 1) }
        try await store.writer.write { db in try register(db, store, 2) }
        #expect(try await store.relay().relayOnce() == 2)
        try await store.writer.write { db in try register(db, store, 3) }
        #expect(try await store.purge(before: Date().addingTimeInterval(60)) == 2)  // the unsent one stays
        #expect(try await store.backlog().count == 1)
        try await bus.shutdown()
    }
}
