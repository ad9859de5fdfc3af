import Courier
import CourierBus
import CourierOutbox
import CourierSQLite
import GRDB
import ServiceLifecycle
import Testing

/// The README's "Consistency with your database" example on SQLite, verbatim between the
/// `README begin` and `README end` marks, so it always compiles and runs.
@Suite("README store example")
struct ReadmeStoreExampleTests {
    struct CustomerCreated: IntegrationEvent {
        var customerID: Int
    }

    @Test func theSQLiteExampleRuns() async throws {
        let database = TemporaryDatabase()
        let path = database.path
        let transport = try InMemoryTransport()
        let created = Received<Int>()
        let watcher = MessageBus(transport: transport)
        try await watcher.subscribe(to: CustomerCreated.self, group: "audit") { event, _ in created.append(event.customerID) }

        // README begin
        let bus = MessageBus(transport: transport)
        let store = try SQLiteMessageStore(path: path, bus: bus)  // creates or migrates its tables
        try await store.writer.write { db in
            try db.execute(sql: "CREATE TABLE IF NOT EXISTS customer (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        }

        // The web store: the customer and its event commit together, or neither does.
        try await store.writer.write { db in
            try db.execute(sql: "INSERT INTO customer (id, name) VALUES (?, ?)", arguments: [7, "Ada Lovelace"])
            try store.outbox(db).send(CreateCustomer(customerID: 7, name: "Ada Lovelace"))
        }

        // Marketing: its row and the command's id commit in one transaction; the ack follows
        // the commit, and a redelivered command is acked without running this again.
        try await bus.handle(CreateCustomer.self, inbox: store) { command, context in
            try context.db.execute(
                sql: "INSERT OR IGNORE INTO customer (id, name) VALUES (?, ?)", arguments: [command.customerID, command.name])
            try context.outbox.publish(CustomerCreated(customerID: command.customerID))  // commits with the row
        }

        // The relay publishes committed rows with broker confirms: a Service beside the bus.
        let relay = store.relay()
        let services = ServiceGroup(
            configuration: .init(services: [.init(service: bus), .init(service: relay)], logger: bus.configuration.logger))
        // README end

        let running = Task { try await services.run() }
        #expect(await created.wait(for: 1))
        #expect(created.all == [7])
        await services.triggerGracefulShutdown()
        try await running.value
        try await watcher.shutdown()
    }
}
