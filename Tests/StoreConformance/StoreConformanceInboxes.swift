import Courier
import CourierBus
import CourierConformance
import CourierOutbox
import CourierPostgres
import CourierSQLite
import Foundation
import GRDB
import Logging
import PostgresNIO
import Synchronization

/// Bus scenario B7 on SQLite: the effects are rows of a table in the inbox's transaction.
public final class SQLiteConformanceInbox: ConformanceInbox {
    let pool: DatabasePool
    let path: String

    /// A new database file in the temporary directory, deleted with the inbox.
    public init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("courier-b7-\(MessageID.random()).sqlite").path
        pool = try DatabasePool(path: path)
        try pool.write { db in
            try db.execute(sql: "CREATE TABLE effect (key INTEGER PRIMARY KEY, count INTEGER NOT NULL)")
        }
    }

    deinit {
        try? pool.close()
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }

    public func handle<C: IntegrationCommand>(
        _ type: C.Type, on bus: MessageBus, options: HandlerOptions, effect: @escaping @Sendable (C) -> Int,
        then: @escaping @Sendable (C) throws -> Void
    ) async throws {
        let store = try SQLiteMessageStore(pool, bus: bus)
        try await bus.handle(C.self, inbox: store, options: options) { command, context in
            try context.db.execute(
                sql: "INSERT INTO effect (key, count) VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET count = count + 1",
                arguments: [effect(command)])
            try then(command)
        }
    }

    public func effects() async throws -> [Int: Int] {
        try await pool.read { db in
            var effects: [Int: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT key, count FROM effect") { effects[row["key"]] = row["count"] }
            return effects
        }
    }
}

/// Bus scenario B7 on PostgreSQL: the effects are rows of a table in the inbox's transaction.
public final class PostgresConformanceInbox: ConformanceInbox {
    let url: String
    let prefix: String
    let logger: Logger
    private let stores = Mutex<[PostgresMessageStore]>([])

    /// Tables named after a random prefix in the database at `url`.
    public init(url: String) {
        self.url = url
        prefix = "b7\(MessageID.random().prefix(8).lowercased().filter { $0.isLetter || $0.isNumber })"
        var logger = Logger(label: "courier.tests.b7")
        logger.logLevel = .warning
        self.logger = logger
    }

    public func handle<C: IntegrationCommand>(
        _ type: C.Type, on bus: MessageBus, options: HandlerOptions, effect: @escaping @Sendable (C) -> Int,
        then: @escaping @Sendable (C) throws -> Void
    ) async throws {
        let store = try await PostgresMessageStore.connect(
            url: url, bus: bus, tables: StoreTables(outbox: "\(prefix)_outbox", inbox: "\(prefix)_inbox"), logger: logger)
        stores.withLock { $0.append(store) }
        let (table, logger) = ("\(prefix)_effect", logger)
        try await store.client.query(
            "CREATE TABLE IF NOT EXISTS \(unescaped: table) (key BIGINT PRIMARY KEY, count INTEGER NOT NULL)", logger: logger)
        try await bus.handle(C.self, inbox: store, options: options) { command, context in
            try await context.connection.query(
                "INSERT INTO \(unescaped: table) (key, count) VALUES (\(effect(command)), 1) ON CONFLICT (key) DO UPDATE SET count = \(unescaped: table).count + 1",
                logger: logger)
            try then(command)
        }
    }

    public func effects() async throws -> [Int: Int] {
        guard let store = stores.withLock({ $0.first }) else { return [:] }
        var effects: [Int: Int] = [:]
        let rows = try await store.client.query("SELECT key, count FROM \(unescaped: "\(prefix)_effect")", logger: logger)
        for try await (key, count) in rows.decode((Int, Int).self) { effects[key] = count }
        return effects
    }

    /// Closes the stores' connection pools.
    public func close() async {
        for store in stores.withLock({ $0 }) { await store.close() }
    }
}
