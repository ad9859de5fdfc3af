import Courier
import CourierBus
import CourierOutbox
import CourierPostgres
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

/// The PostgreSQL the store tests use: `COURIER_POSTGRES_URL`, else the local server that
/// `scripts/postgres start` runs on 127.0.0.1:5433. Tests never skip when it is unreachable:
/// they fail with the reason.
enum PostgresDatabase {
    static var url: String {
        ProcessInfo.processInfo.environment["COURIER_POSTGRES_URL"].flatMap { $0.isEmpty ? nil : $0 }
            ?? "postgres://courier:courier@127.0.0.1:5433/courier"
    }

    /// Warnings only: postgres-nio's pool logs every failed connection attempt at info.
    static let logger: Logger = {
        var logger = Logger(label: "courier.tests.postgres")
        logger.logLevel = .warning
        return logger
    }()

    /// Runs `body` with a running client of `url`.
    static func withClient<T: Sendable>(url: String = url, _ body: @Sendable (PostgresClient) async throws -> T) async throws -> T {
        let client = PostgresClient(configuration: try PostgresMessageStore.configuration(url: url), backgroundLogger: logger)
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                await client.run()
                return nil
            }
            defer { group.cancelAll() }
            return try await body(client)
        }
    }

    /// Unique table names for one test.
    static func tables() -> StoreTables {
        let prefix = "t\(MessageID.random().prefix(8).lowercased().filter { $0.isLetter || $0.isNumber })"
        return StoreTables(outbox: "\(prefix)_outbox", inbox: "\(prefix)_inbox")
    }

    /// Stops or starts the local server (`scripts/postgres`), or runs `COURIER_POSTGRES_STOP` /
    /// `COURIER_POSTGRES_START`.
    static func control(_ action: String) async throws {
        let variable = "COURIER_POSTGRES_\(action.uppercased())"
        let command = ProcessInfo.processInfo.environment[variable] ?? "\(RabbitMQBroker.repositoryRoot.path)/scripts/postgres \(action)"
        try await RabbitMQBroker.run(command)
    }
}

struct Registered: IntegrationEvent, Equatable {
    var customerID: Int
    var messageKey: String? { "k\(customerID % 100)" }
}

struct Register: IntegrationCommand, Equatable {
    var customerID: Int
    var messageKey: String? { "k\(customerID % 100)" }
}

/// Collects what a handler receives.
final class Collected<T: Sendable>: Sendable {
    private let items = Mutex<[T]>([])
    func append(_ item: T) { items.withLock { $0.append(item) } }
    var all: [T] { items.withLock { $0 } }
    var count: Int { items.withLock { $0.count } }

    func wait(for count: Int, timeout: Duration = .seconds(30)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while self.count < count {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return true
    }
}

extension BrokerIntegration {
    /// The outbox and inbox on a real PostgreSQL 15 (postgres-nio), with the in-memory
    /// transport: commit or nothing, wake-up by NOTIFY, two relays, the inbox, a database
    /// that goes down, bad input.
    @Suite("PostgreSQL store", .serialized)
    struct PostgresStoreTests {
        let logger = PostgresDatabase.logger

        func customers(_ client: PostgresClient, _ tables: StoreTables) async throws -> String {
            let name = "\(tables.outbox)_customer"
            try await client.query("CREATE TABLE \(unescaped: name) (id BIGINT PRIMARY KEY)", logger: logger)
            return name
        }

        func count(_ client: PostgresClient, _ table: String) async throws -> Int {
            for try await count in try await client.query("SELECT COUNT(*) FROM \(unescaped: table)", logger: logger).decode(Int.self) {
                return count
            }
            return 0
        }

        @Test func messagesReachTheBrokerOnlyWhenTheTransactionCommitsAndNotifyWakesTheRelay() async throws {
            try await PostgresDatabase.withClient { client in
                let tables = PostgresDatabase.tables()
                let bus = MessageBus(transport: try InMemoryTransport())
                let store = try await PostgresMessageStore.open(client: client, bus: bus, tables: tables)
                let customer = try await customers(client, tables)
                let received = Collected<Int>()
                try await bus.subscribe(to: Registered.self, group: "marketing") { event, _ in received.append(event.customerID) }
                var options = OutboxRelay.Options()
                options.pollInterval = .seconds(60)  // only NOTIFY brings the rows in time
                let relay = store.relay(options: options)
                let running = Task { try await relay.run() }
                try await Task.sleep(for: .milliseconds(300))
                struct Refused: Error {}
                for id in 1...3 {
                    do {
                        try await client.withTransaction(logger: logger) { connection in
                            try await connection.query("INSERT INTO \(unescaped: customer) (id) VALUES (\(id))", logger: logger)
                            try await store.outbox(connection).publish(Registered(customerID: id))
                            if id == 2 { throw Refused() }
                        }
                    } catch {}
                }
                #expect(await received.wait(for: 2, timeout: .seconds(10)))
                try await Task.sleep(for: .milliseconds(100))
                #expect(received.all == [1, 3])
                running.cancel()
                _ = await running.result
                #expect(try await store.backlog().count == 0)
                try await bus.shutdown()
            }
        }

        /// Committed rows whose process died before publishing them go out after a restart.
        @Test func whatWasCommittedBeforeACrashIsPublishedAfterTheRestart() async throws {
            try await PostgresDatabase.withClient { client in
                let tables = PostgresDatabase.tables()
                let broker = try InMemoryBroker()
                let consumer = MessageBus(transport: InMemoryTransport(broker: broker))
                let received = Collected<Int>()
                try await consumer.subscribe(to: Registered.self, group: "marketing") { event, _ in received.append(event.customerID) }
                let crashed = try await PostgresMessageStore.open(
                    client: client, bus: MessageBus(transport: InMemoryTransport(broker: broker)), tables: tables)
                for id in 1...300 {
                    try await client.withTransaction(logger: logger) { connection in
                        try await crashed.outbox(connection).publish(Registered(customerID: id))
                    }
                }
                let restarted = MessageBus(transport: InMemoryTransport(broker: broker))
                let store = try await PostgresMessageStore.open(client: client, bus: restarted, tables: tables)
                #expect(try await store.backlog().count == 300)
                while try await store.relay().relayOnce() > 0 {}
                #expect(await received.wait(for: 300))
                #expect(Set(received.all) == Set(1...300))
                try await consumer.shutdown()
                try await restarted.shutdown()
            }
        }

        /// Two relays on one database, 10,000 messages with 100 keys, publishing slowly enough
        /// that their batches overlap: per-key order kept, each message published once.
        @Test func twoRelaysKeepPerKeyOrderAndPublishEachMessageOnce() async throws {
            try await PostgresDatabase.withClient { client in
                let tables = PostgresDatabase.tables()
                struct Slow: BusMiddleware {
                    func prepare(_ message: inout OutboundMessage) async throws {
                        if Int.random(in: 0..<20) == 0 { try await Task.sleep(for: .microseconds(Int.random(in: 0...500))) }
                    }
                }
                var configuration = MessageBus.Configuration()
                configuration.middleware = [Slow()]
                let bus = MessageBus(transport: try InMemoryTransport(), configuration: configuration)
                let store = try await PostgresMessageStore.open(client: client, bus: bus, tables: tables)
                let received = Collected<Int>()
                try await bus.subscribe(to: Registered.self, group: "marketing") { event, _ in received.append(event.customerID) }
                for start in stride(from: 1, through: 10_000, by: 1000) {
                    try await client.withTransaction(logger: logger) { connection in
                        try await store.outbox(connection).deliver((start..<start + 1000).map { .publish(Registered(customerID: $0)) })
                    }
                }
                var options = OutboxRelay.Options()
                options.batchSize = 60
                let relays = [store.relay(options: options), store.relay(options: options)]
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for relay in relays { group.addTask { while try await relay.relayOnce() > 0 {} } }
                    try await group.waitForAll()
                }
                #expect(await received.wait(for: 10_000, timeout: .seconds(60)))
                try await Task.sleep(for: .milliseconds(100))
                #expect(received.count == 10_000)
                #expect(Set(received.all).count == 10_000)
                var outOfOrder = 0
                var last: [Int: Int] = [:]
                for id in received.all {
                    if let previous = last[id % 100], previous > id { outOfOrder += 1 }
                    last[id % 100] = id
                }
                #expect(outOfOrder == 0)
                let published = relays.map(\.statistics.published)
                #expect(published.reduce(0, +) == 10_000)
                #expect(published.allSatisfy { $0 > 0 }, "both relays published: \(published)")
                try await bus.shutdown()
            }
        }

        /// The inbox: writes and the message id commit together before the ack; a redelivery is
        /// acked without running the handler; follow-ups commit with it.
        @Test func theInboxHandlesEachCommandOnceInEffect() async throws {
            try await PostgresDatabase.withClient { client in
                let tables = PostgresDatabase.tables()
                let bus = MessageBus(transport: try InMemoryTransport())
                let store = try await PostgresMessageStore.open(client: client, bus: bus, tables: tables)
                let customer = try await customers(client, tables)
                let calls = Collected<Int>()
                let done = Collected<Int>()
                let failOnce = Mutex<Set<Int>>([3])
                let logger = logger
                try await bus.handle(Register.self, inbox: store) { command, context in
                    calls.append(command.customerID)
                    try await context.connection.query(
                        "INSERT INTO \(unescaped: customer) (id) VALUES (\(command.customerID))", logger: logger)
                    try await context.outbox.publish(Registered(customerID: command.customerID))
                    struct Flaky: Error {}
                    if failOnce.withLock({ $0.remove(command.customerID) }) != nil { throw Flaky() }
                    done.append(command.customerID)
                }
                let staged = try bus.stage((1...5).map { .send(Register(customerID: $0)) })
                try await bus.deliver(staged: staged)
                try await bus.deliver(staged: [staged[1]])  // a redelivery: same message id
                #expect(await done.wait(for: 5))
                try await Task.sleep(for: .milliseconds(200))
                #expect(calls.all.sorted() == [1, 2, 3, 3, 4, 5])
                #expect(try await count(client, customer) == 5)
                #expect(try await store.backlog().count == 5)
                for message in staged {
                    #expect(try await store.wasHandled(message.envelope.id, scope: InboxScope.queue(Register.queue)))
                }
                try await bus.shutdown()
            }
        }

        /// PostgreSQL stops while commands arrive: nothing is acked, the handler's transaction
        /// fails and the retry policy brings the commands back; once it is up, each is stored
        /// exactly once.
        @Test func aDatabaseThatGoesDownDelaysHandlingAndLosesNothing() async throws {
            let tables = PostgresDatabase.tables()
            let customer = "\(tables.outbox)_customer"
            let bus = MessageBus(transport: try InMemoryTransport())
            let done = Collected<Int>()
            let failures = Collected<String>()
            try await PostgresDatabase.withClient { client in
                let store = try await PostgresMessageStore.open(client: client, bus: bus, tables: tables, connectTimeout: .seconds(2))
                _ = try await customers(client, tables)
                var options = HandlerOptions()
                options.retryPolicy = RetryPolicy(
                    immediateRetries: 0, delayedRetries: 30, initialDelay: .milliseconds(200), multiplier: 1.5, maxDelay: .seconds(2))
                let logger = logger
                try await bus.handle(Register.self, inbox: store, options: options) { command, context in
                    try await context.connection.query(
                        "INSERT INTO \(unescaped: customer) (id) VALUES (\(command.customerID))", logger: logger)
                    done.append(command.customerID)
                }
                try await PostgresDatabase.control("stop")
                do {
                    for id in 1...20 {
                        try await bus.send(Register(customerID: id))
                    }
                    try await Task.sleep(for: .seconds(5))  // more than two lease deadlines: attempts fail and retry
                    #expect(done.count == 0, "nothing is handled while the database is down")
                } catch {
                    failures.append("\(error)")
                }
                try await PostgresDatabase.control("start")
                #expect(await done.wait(for: 20, timeout: .seconds(60)))
                try await Task.sleep(for: .milliseconds(300))
                #expect(try await count(client, customer) == 20)
                #expect(Set(done.all).count == 20)
            }
            #expect(failures.all.isEmpty)
            try await bus.shutdown()
        }

        /// The README's PostgreSQL example, verbatim between the marks.
        @Test func theReadmeExampleRuns() async throws {
            struct CreateCustomer: IntegrationCommand {
                static let queue = "marketing.readme-create-customer"
                var customerID: Int
                var name: String
            }
            let databaseURL = PostgresDatabase.url
            let bus = MessageBus(transport: try InMemoryTransport())
            let logger = logger

            // README begin
            // Checks the login at once, runs its own connection pool, creates or migrates its tables.
            let store = try await PostgresMessageStore.connect(url: databaseURL, bus: bus)
            try await store.client.query("CREATE TABLE IF NOT EXISTS customer (id BIGINT PRIMARY KEY, name TEXT NOT NULL)", logger: logger)

            // The web store: the customer and the command commit together, or neither does.
            try await store.client.withTransaction(logger: logger) { connection in
                try await connection.query("INSERT INTO customer VALUES (\(7), \("Ada Lovelace")) ON CONFLICT DO NOTHING", logger: logger)
                try await store.outbox(connection).send(CreateCustomer(customerID: 7, name: "Ada Lovelace"))
            }

            // Marketing: its work and the command's id commit together; the ack follows the commit.
            try await bus.handle(CreateCustomer.self, inbox: store) { command, context in
                try await context.connection.query(
                    "UPDATE customer SET name = \(command.name) WHERE id = \(command.customerID)", logger: logger)
            }
            let relay = store.relay()  // a Service: run it beside the bus (NOTIFY wakes it on commit)
            // README end

            let running = Task { try await relay.run() }
            var handled = false
            for _ in 0..<200 where !handled {
                try await Task.sleep(for: .milliseconds(50))
                handled = try await store.backlog().count == 0
            }
            #expect(handled, "the relay sent the command")
            running.cancel()
            _ = try? await running.value
            try await bus.shutdown()
            await store.close()
        }

        @Test func badInputGivesTypedErrorsWithoutThePassword() async throws {
            let bus = MessageBus(transport: try InMemoryTransport())
            for url in ["postgres://", "mysql://u:p@h/d", "postgres://127.0.0.1/courier", "postgres://u:p@h/d?sslmode=maybe"] {
                let error = #expect(throws: CourierError.self) { try PostgresMessageStore.configuration(url: url) }
                #expect(error?.code == .invalidURL)
                #expect(error?.message.contains(":p@") != true)
            }
            // Wrong password: refused at once, and the password appears nowhere.
            let wrong = "postgres://courier:hunter2-wrong@127.0.0.1:5433/courier"
            var began = ContinuousClock.now
            let refused = await #expect(throws: CourierError.self) {
                _ = try await PostgresMessageStore.connect(url: wrong, bus: bus)
            }
            #expect(refused?.code == .authenticationFailed)
            #expect(refused?.isRetriable == false)
            #expect(refused.map { "\($0)".contains("hunter2") } == false)
            #expect(ContinuousClock.now - began < .seconds(5))
            // An unknown database.
            let missing = await #expect(throws: CourierError.self) {
                _ = try await PostgresMessageStore.connect(url: "postgres://courier:courier@127.0.0.1:5433/no_such_db", bus: bus)
            }
            #expect(missing?.code == .notFound)
            // Nobody listens: unreachable within the connect timeout.
            let unreachable = "postgres://courier:secret-pw@127.0.0.1:1/courier"
            began = ContinuousClock.now
            let down = await #expect(throws: CourierError.self) {
                _ = try await PostgresMessageStore.connect(url: unreachable, bus: bus, connectTimeout: .seconds(3))
            }
            #expect(down?.code == .unreachable)
            #expect(down?.isRetriable == true)
            #expect(down.map { "\($0)".contains("secret-pw") } == false)
            #expect(ContinuousClock.now - began < .seconds(10))
            // The right URL: a working store whose pool it owns.
            let store = try await PostgresMessageStore.connect(url: PostgresDatabase.url, bus: bus, tables: PostgresDatabase.tables())
            #expect(try await store.backlog().count == 0)
            await store.close()
            // A schema a newer Courier migrated.
            try await PostgresDatabase.withClient { client in
                let tables = PostgresDatabase.tables()
                _ = try await PostgresMessageStore.open(client: client, bus: bus, tables: tables)
                let component = "\(tables.outbox)+\(tables.inbox)"
                try await client.query("UPDATE courier_schema SET version = 99 WHERE component = \(component)", logger: logger)
                let newer = await #expect(throws: CourierError.self) {
                    _ = try await PostgresMessageStore.open(client: client, bus: bus, tables: tables)
                }
                #expect(newer?.code == .invalidConfiguration)
                #expect(newer?.message.contains("newer Courier") == true)
                let badName = await #expect(throws: CourierError.self) {
                    _ = try await PostgresMessageStore.open(client: client, bus: bus, tables: StoreTables(outbox: "x; DROP TABLE y"))
                }
                #expect(badName?.code == .invalidName)
            }
            try await bus.shutdown()
        }
    }
}
