import Courier
import CourierBus
import CourierOutbox
import CourierPostgres
import CourierSQLite
import Foundation
import GRDB
import Logging
import PostgresNIO

/// A demo service's own database with its outbox and inbox: SQLite (a file path, the default)
/// or PostgreSQL (a `postgres://` URL). The web store registers customers and publishes
/// `CustomerRegistered` in one transaction; marketing stores each customer in the transaction
/// that records the message as handled.
///
/// The customer table counts how often each customer was stored (`times`): more than once
/// would be a duplicated effect, which the inbox is there to prevent.
protocol ServiceDatabase: Sendable {
    /// Where the data lives, for the console (never a password).
    var location: String { get }
    /// The relay publishing this database's outbox.
    func relay(options: OutboxRelay.Options) -> OutboxRelay
    /// The outbox's unsent rows.
    func backlog() async throws -> OutboxBacklog
    /// In one transaction: the customer's row and `event` in the outbox.
    func register(_ event: CustomerRegistered) async throws
    /// Subscribes marketing as `group`: each event of `runID` stores its customer in the
    /// transaction that records the message id; the ack follows the commit.
    func storeCustomers(of runID: String, bus: MessageBus, group: String, options: HandlerOptions) async throws
    /// Handles marketing's `CreateCustomer` commands of `runID` through the inbox: the customer's
    /// row and the command's id commit together, then the ack; `stored` runs in the
    /// transaction, after the row is written.
    func createCustomers(
        of runID: String, bus: MessageBus, options: HandlerOptions, stored: @escaping @Sendable (CreateCustomer, MessageContext) -> Void
    ) async throws
    /// How often each customer was stored, by id.
    func customers() async throws -> [Int: Int]
    /// Writes `events` into the outbox in one transaction (for `courier bench --outbox`).
    func stage<E: IntegrationEvent>(_ events: [E]) async throws
    /// Handles commands of `C` through the inbox with `body` as the whole work.
    func handle<C: IntegrationCommand>(_ type: C.Type, bus: MessageBus, options: HandlerOptions, _ body: @escaping @Sendable (C) -> Void)
        async throws
    /// Closes what the database owns.
    func close() async
}

enum ServiceDatabases {
    /// Opens the database `store` names (a SQLite file path, `sqlite:PATH`, or a
    /// `postgres://` URL), with its tables named after `prefix`.
    static func open(_ store: String, prefix: String, bus: MessageBus) async throws -> any ServiceDatabase {
        let tables = StoreTables(outbox: "\(prefix)_outbox", inbox: "\(prefix)_inbox")
        try tables.validate()
        if store.hasPrefix("postgres://") || store.hasPrefix("postgresql://") {
            var logger = Logger(label: "courier.postgres")
            logger.logLevel = .warning
            let opened = try await PostgresMessageStore.connect(url: store, bus: bus, tables: tables, logger: logger)
            let database = PostgresServiceDatabase(store: opened, table: "\(prefix)_customer", logger: logger)
            do {
                try await database.createTable()
            } catch {
                await opened.close()
                throw error
            }
            return database
        }
        var path = store
        if path.hasPrefix("sqlite://") {
            path.removeFirst("sqlite://".count)
        } else if path.hasPrefix("sqlite:") {
            path.removeFirst("sqlite:".count)
        }
        guard !path.isEmpty else {
            throw CourierError(.invalidURL, "--store needs a SQLite file path or a postgres:// URL")
        }
        let database = SQLiteServiceDatabase(
            store: try SQLiteMessageStore(path: path, bus: bus, tables: tables), table: "\(prefix)_customer", path: path)
        try await database.createTable()
        return database
    }
}

/// The demo's customers in SQLite, through GRDB.
struct SQLiteServiceDatabase: ServiceDatabase {
    let store: SQLiteMessageStore
    let table: String
    let path: String

    var location: String { "SQLite \(path)" }

    func createTable() async throws {
        try await store.writer.write { db in
            try db.execute(sql: "CREATE TABLE IF NOT EXISTS \(table) (id INTEGER PRIMARY KEY, name TEXT NOT NULL, times INTEGER NOT NULL)")
        }
    }

    func relay(options: OutboxRelay.Options) -> OutboxRelay { store.relay(options: options) }

    func backlog() async throws -> OutboxBacklog { try await store.backlog() }

    func register(_ event: CustomerRegistered) async throws {
        let (store, table) = (store, table)
        try await store.writer.write { db in
            try db.execute(sql: "INSERT INTO \(table) (id, name, times) VALUES (?, ?, 1)", arguments: [event.customerID, event.name])
            try store.outbox(db).publish(event)
        }
    }

    func storeCustomers(of runID: String, bus: MessageBus, group: String, options: HandlerOptions) async throws {
        let table = table
        try await bus.subscribe(to: CustomerRegistered.self, group: group, inbox: store, options: options) { event, context in
            guard event.runID == runID else { return }
            try context.db.execute(
                sql: "INSERT INTO \(table) (id, name, times) VALUES (?, ?, 1) ON CONFLICT(id) DO UPDATE SET times = times + 1",
                arguments: [event.customerID, event.name])
        }
    }

    func createCustomers(
        of runID: String, bus: MessageBus, options: HandlerOptions, stored: @escaping @Sendable (CreateCustomer, MessageContext) -> Void
    ) async throws {
        let table = table
        try await bus.handle(CreateCustomer.self, inbox: store, options: options) { command, context in
            guard command.runID == runID else { return }
            try context.db.execute(
                sql: "INSERT INTO \(table) (id, name, times) VALUES (?, ?, 1) ON CONFLICT(id) DO UPDATE SET times = times + 1",
                arguments: [command.customerID, command.fullName])
            stored(command, context.message)
        }
    }

    func customers() async throws -> [Int: Int] {
        let table = table
        return try await store.writer.read { db in
            var result: [Int: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT id, times FROM \(table)") {
                result[row["id"]] = row["times"]
            }
            return result
        }
    }

    func stage<E: IntegrationEvent>(_ events: [E]) async throws {
        let store = store
        try await store.writer.write { db in
            try store.outbox(db).deliver(events.map { .publish($0) })
        }
    }

    func handle<C: IntegrationCommand>(_ type: C.Type, bus: MessageBus, options: HandlerOptions, _ body: @escaping @Sendable (C) -> Void)
        async throws
    {
        try await bus.handle(C.self, inbox: store, options: options) { command, _ in body(command) }
    }

    func close() async {}
}

/// The demo's customers in PostgreSQL, through postgres-nio.
struct PostgresServiceDatabase: ServiceDatabase {
    let store: PostgresMessageStore
    let table: String
    let logger: Logger

    var location: String { "PostgreSQL, tables \(store.tables.outbox), \(store.tables.inbox) and \(table)" }

    func createTable() async throws {
        try await store.client.query(
            "CREATE TABLE IF NOT EXISTS \(unescaped: table) (id BIGINT PRIMARY KEY, name TEXT NOT NULL, times INTEGER NOT NULL)",
            logger: logger)
    }

    func relay(options: OutboxRelay.Options) -> OutboxRelay { store.relay(options: options) }

    func backlog() async throws -> OutboxBacklog { try await store.backlog() }

    func register(_ event: CustomerRegistered) async throws {
        let (store, table, logger) = (store, table, logger)
        try await store.client.withTransaction(logger: logger) { connection in
            try await connection.query(
                "INSERT INTO \(unescaped: table) (id, name, times) VALUES (\(event.customerID), \(event.name), 1)", logger: logger)
            try await store.outbox(connection).publish(event)
        }
    }

    func storeCustomers(of runID: String, bus: MessageBus, group: String, options: HandlerOptions) async throws {
        let (table, logger) = (table, logger)
        try await bus.subscribe(to: CustomerRegistered.self, group: group, inbox: store, options: options) { event, context in
            guard event.runID == runID else { return }
            try await context.connection.query(
                """
                INSERT INTO \(unescaped: table) (id, name, times) VALUES (\(event.customerID), \(event.name), 1)
                ON CONFLICT (id) DO UPDATE SET times = \(unescaped: table).times + 1
                """, logger: logger)
        }
    }

    func createCustomers(
        of runID: String, bus: MessageBus, options: HandlerOptions, stored: @escaping @Sendable (CreateCustomer, MessageContext) -> Void
    ) async throws {
        let (table, logger) = (table, logger)
        try await bus.handle(CreateCustomer.self, inbox: store, options: options) { command, context in
            guard command.runID == runID else { return }
            try await context.connection.query(
                """
                INSERT INTO \(unescaped: table) (id, name, times) VALUES (\(command.customerID), \(command.fullName), 1)
                ON CONFLICT (id) DO UPDATE SET times = \(unescaped: table).times + 1
                """, logger: logger)
            stored(command, context.message)
        }
    }

    func customers() async throws -> [Int: Int] {
        var result: [Int: Int] = [:]
        let rows = try await store.client.query("SELECT id, times FROM \(unescaped: table)", logger: logger)
        for try await (id, times) in rows.decode((Int, Int).self) {
            result[id] = times
        }
        return result
    }

    func stage<E: IntegrationEvent>(_ events: [E]) async throws {
        let (store, logger) = (store, logger)
        try await store.client.withTransaction(logger: logger) { connection in
            try await store.outbox(connection).deliver(events.map { .publish($0) })
        }
    }

    func handle<C: IntegrationCommand>(_ type: C.Type, bus: MessageBus, options: HandlerOptions, _ body: @escaping @Sendable (C) -> Void)
        async throws
    {
        try await bus.handle(C.self, inbox: store, options: options) { command, _ in body(command) }
    }

    func close() async { await store.close() }
}
