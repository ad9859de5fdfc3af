import Courier
import CourierBus
import CourierOutbox
import Foundation
import GRDB

/// A service's outbox and inbox in its own SQLite database, through GRDB: messages written
/// in the service's transactions reach the broker only if the transaction commits, and a
/// handler's database work and the record of the message it handled commit together.
///
/// ```swift
/// let database = try DatabasePool(path: "/var/lib/webstore/store.sqlite")
/// let store = try SQLiteMessageStore(database, bus: bus)
/// try await database.write { db in
///     try db.execute(sql: "INSERT INTO customer (id, name) VALUES (?, ?)", arguments: [id, name])
///     try store.outbox(db).publish(CustomerRegistered(customerID: id, name: name))
/// }
/// // in the ServiceGroup beside the bus:
/// let relay = store.relay()
/// ```
///
/// The tables (``StoreTables``) are created and migrated by the initializer (GRDB's
/// `DatabaseMigrator`, identifiers `courier/<outbox>+<inbox>/<version>`); a database whose
/// tables a newer Courier migrated throws ``CourierError/Code/invalidConfiguration``.
/// Several processes may share the database: claims are made in `IMMEDIATE` transactions,
/// and a relay in another process notices commits by polling.
public final class SQLiteMessageStore: OutboxStorage, Sendable {
    /// The database the tables live in (the service's own).
    public let writer: any DatabaseWriter
    /// The bus that stages (encodes) and relays the messages.
    public let bus: MessageBus
    public let tables: StoreTables
    let signal = OutboxSignal()

    /// The schema versions this library knows, in order.
    static let versions = [1]

    /// Opens the store in `writer`'s database, creating or migrating its tables.
    public init(_ writer: any DatabaseWriter, bus: MessageBus, tables: StoreTables = StoreTables()) throws {
        try tables.validate()
        self.writer = writer
        self.bus = bus
        self.tables = tables
        try migrate()
    }

    /// Opens (creating if needed) the SQLite database at `path` in WAL mode, then the store.
    public convenience init(path: String, bus: MessageBus, tables: StoreTables = StoreTables()) throws {
        let pool: DatabasePool
        do {
            pool = try DatabasePool(path: path)
        } catch {
            throw CourierError(
                .unreachable, "cannot open the SQLite database \(path): \(error); check the path and its directory's permissions",
                underlying: error)
        }
        try self.init(pool, bus: bus, tables: tables)
    }

    private var migrationPrefix: String { "courier/\(tables.outbox)+\(tables.inbox)/" }

    private func migrate() throws {
        let outbox = tables.outbox
        let inbox = tables.inbox
        var migrator = DatabaseMigrator()
        migrator.registerMigration(migrationPrefix + "1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE IF NOT EXISTS \(outbox) (
                        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
                        message_id TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        destination TEXT NOT NULL,
                        message_key TEXT,
                        message_time TEXT NOT NULL,
                        created_at INTEGER NOT NULL,
                        headers TEXT NOT NULL,
                        payload BLOB NOT NULL,
                        status INTEGER NOT NULL DEFAULT 0,
                        claimed_by TEXT,
                        claimed_until INTEGER,
                        sent_at INTEGER,
                        failure TEXT
                    );
                    CREATE INDEX IF NOT EXISTS \(outbox)_status ON \(outbox) (status, sequence);
                    CREATE INDEX IF NOT EXISTS \(outbox)_key ON \(outbox) (message_key, sequence) WHERE status = 0;
                    CREATE TABLE IF NOT EXISTS \(inbox) (
                        scope TEXT NOT NULL,
                        message_id TEXT NOT NULL,
                        handled_at INTEGER NOT NULL,
                        PRIMARY KEY (scope, message_id)
                    ) WITHOUT ROWID;
                    CREATE INDEX IF NOT EXISTS \(inbox)_handled ON \(inbox) (handled_at);
                    """)
        }
        let prefix = migrationPrefix
        let known = Set(Self.versions.map { prefix + String($0) })
        do {
            let applied = try writer.read { db -> [String] in
                guard try db.tableExists("grdb_migrations") else { return [] }
                return try String.fetchAll(
                    db, sql: "SELECT identifier FROM grdb_migrations WHERE identifier LIKE ?", arguments: [prefix + "%"])
            }
            if let newer = applied.first(where: { !known.contains($0) }) {
                throw CourierError(
                    .invalidConfiguration,
                    "the tables \(tables.outbox) and \(tables.inbox) were migrated by a newer Courier (\(newer)); this one knows up to version \(Self.versions.last!): upgrade Courier"
                )
            }
            try migrator.migrate(writer)
        } catch let error as CourierError {
            throw error
        } catch {
            throw CourierError(.invalidConfiguration, "cannot create the outbox and inbox tables: \(error)", underlying: error)
        }
    }

    // MARK: Writing

    /// The outbox of the transaction `db` is in: what it publishes and sends is stored in
    /// that transaction and reaches the broker only if it commits. `cause` is the message
    /// being handled, if any (for correlation and causation ids).
    public func outbox(_ db: Database, causedBy cause: MessageContext? = nil) -> SQLiteOutbox {
        SQLiteOutbox(store: self, db: db, cause: cause)
    }

    /// A relay publishing this store's outbox through ``bus``.
    public func relay(options: OutboxRelay.Options = OutboxRelay.Options()) -> OutboxRelay {
        OutboxRelay(storage: self, bus: bus, name: tables.outbox, options: options)
    }

    func insert(_ messages: [StagedMessage], in db: Database) throws {
        guard db.isInsideTransaction else {
            throw CourierError(
                .invalidConfiguration,
                "the outbox writes in the caller's transaction: use it inside writer.write { db in … } (or db.inTransaction)")
        }
        let statement = try db.cachedStatement(
            sql: """
                INSERT INTO \(tables.outbox) (message_id, kind, destination, message_key, message_time, created_at, headers, payload)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """)
        for message in messages {
            let values = OutboxColumns.values(for: message)
            try statement.execute(arguments: [
                values.messageID, values.kind, values.destination, values.key, values.time, values.createdAt, values.headers,
                Data(values.payload),
            ])
        }
        let signal = signal
        db.afterNextTransaction(onCommit: { _ in signal.notify() })
    }

    // MARK: Inbox

    /// Runs `body` in a write transaction that also records `messageID` in `scope`; returns
    /// false without running it when the id is recorded already (a redelivery).
    func handleOnce(scope: String, messageID: String, _ body: @escaping @Sendable (Database) throws -> Void) async throws -> Bool {
        let inbox = tables.inbox
        return try await writer.write { db in
            let seen = try Bool.fetchOne(
                db, sql: "SELECT 1 FROM \(inbox) WHERE scope = ? AND message_id = ?", arguments: [scope, messageID])
            if seen != nil { return false }
            try body(db)
            try db.execute(
                sql: "INSERT INTO \(inbox) (scope, message_id, handled_at) VALUES (?, ?, ?)",
                arguments: [scope, messageID, Self.now()])
            return true
        }
    }

    /// Whether `messageID` is recorded as handled in `scope`.
    public func wasHandled(_ messageID: String, scope: String) async throws -> Bool {
        let inbox = tables.inbox
        return try await writer.read { db in
            try Bool.fetchOne(db, sql: "SELECT 1 FROM \(inbox) WHERE scope = ? AND message_id = ?", arguments: [scope, messageID]) != nil
        }
    }

    // MARK: OutboxStorage

    static func now() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    public func claim(limit: Int, owner: String, lease: Duration) async throws -> [OutboxRecord] {
        let outbox = tables.outbox
        let rows = try await writer.writeWithoutTransaction { db -> [Row] in
            var rows: [Row] = []
            try db.inTransaction(.immediate) {
                let now = Self.now()
                rows = try Row.fetchAll(
                    db,
                    sql: """
                        SELECT sequence, message_id, kind, destination, message_key, message_time, headers, payload
                        FROM \(outbox) AS o
                        WHERE status = 0 AND (claimed_by IS NULL OR claimed_by = :owner OR claimed_until < :now)
                          AND (message_key IS NULL OR NOT EXISTS (
                                SELECT 1 FROM \(outbox) AS e
                                WHERE e.status = 0 AND e.message_key = o.message_key AND e.sequence < o.sequence
                                  AND e.claimed_by IS NOT NULL AND e.claimed_by <> :owner AND e.claimed_until >= :now))
                        ORDER BY sequence LIMIT :limit
                        """,
                    arguments: ["owner": owner, "now": now, "limit": limit])
                let sequences = rows.map { $0["sequence"] as Int64 }
                for chunk in sequences.chunked(500) {
                    try db.execute(
                        sql: "UPDATE \(outbox) SET claimed_by = ?, claimed_until = ? WHERE sequence IN (\(Self.placeholders(chunk.count)))",
                        arguments: StatementArguments(
                            [owner, now + lease.storeMilliseconds] as [any DatabaseValueConvertible] + chunk.map { $0 }))
                }
                return .commit
            }
            return rows
        }
        return try rows.map { row throws(CourierError) in
            let sequence: Int64 = row["sequence"]
            let payload: Data = row["payload"]
            let message = try OutboxColumns.message(
                sequence: sequence, messageID: row["message_id"], kind: row["kind"], destination: row["destination"],
                key: row["message_key"], time: row["message_time"], headers: row["headers"], payload: Array(payload))
            return OutboxRecord(sequence: sequence, message: message)
        }
    }

    public func markSent(_ sequences: [Int64]) async throws {
        guard !sequences.isEmpty else { return }
        let outbox = tables.outbox
        try await writer.write { db in
            for chunk in sequences.chunked(500) {
                try db.execute(
                    sql:
                        "UPDATE \(outbox) SET status = 1, sent_at = ?, claimed_by = NULL WHERE sequence IN (\(Self.placeholders(chunk.count)))",
                    arguments: StatementArguments([Self.now()] + Array(chunk)))
            }
        }
    }

    public func markFailed(_ sequence: Int64, reason: String) async throws {
        let outbox = tables.outbox
        try await writer.write { db in
            try db.execute(
                sql: "UPDATE \(outbox) SET status = 2, failure = ?, claimed_by = NULL WHERE sequence = ?", arguments: [reason, sequence])
        }
    }

    public func release(_ sequences: [Int64], owner: String) async throws {
        guard !sequences.isEmpty else { return }
        let outbox = tables.outbox
        try await writer.write { db in
            for chunk in sequences.chunked(500) {
                try db.execute(
                    sql: """
                        UPDATE \(outbox) SET claimed_by = NULL, claimed_until = NULL
                        WHERE status = 0 AND claimed_by = ? AND sequence IN (\(Self.placeholders(chunk.count)))
                        """,
                    arguments: StatementArguments([owner] as [any DatabaseValueConvertible] + chunk.map { $0 }))
            }
        }
    }

    public func waitForCommits(timeout: Duration) async {
        await signal.wait(timeout: timeout)
    }

    public func backlog() async throws -> OutboxBacklog {
        let outbox = tables.outbox
        return try await writer.read { db in
            let row = try Row.fetchOne(db, sql: "SELECT COUNT(*) AS count, MIN(created_at) AS oldest FROM \(outbox) WHERE status = 0")
            let failed = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(outbox) WHERE status = 2") ?? 0
            let oldest: Int64? = row?["oldest"]
            return OutboxBacklog(
                count: row?["count"] ?? 0, oldest: oldest.map { Date(timeIntervalSince1970: Double($0) / 1000) }, failed: failed)
        }
    }

    public func purge(before date: Date) async throws -> Int {
        let (outbox, inbox) = (tables.outbox, tables.inbox)
        let cut = Int64((date.timeIntervalSince1970 * 1000).rounded())
        return try await writer.write { db in
            try db.execute(sql: "DELETE FROM \(outbox) WHERE status = 1 AND sent_at < ?", arguments: [cut])
            var count = db.changesCount
            try db.execute(sql: "DELETE FROM \(inbox) WHERE handled_at < ?", arguments: [cut])
            count += db.changesCount
            return count
        }
    }

    /// The rows marked failed, with their reasons, oldest first.
    public func failedMessages(limit: Int = 100) async throws -> [FailedOutboxMessage] {
        let outbox = tables.outbox
        return try await writer.read { db in
            try Row.fetchAll(
                db, sql: "SELECT sequence, message_id, failure FROM \(outbox) WHERE status = 2 ORDER BY sequence LIMIT ?",
                arguments: [limit]
            ).map { FailedOutboxMessage(sequence: $0["sequence"], messageID: $0["message_id"], reason: $0["failure"] ?? "") }
        }
    }

    static func placeholders(_ count: Int) -> String {
        Array(repeating: "?", count: count).joined(separator: ",")
    }
}

/// The outbox of one SQLite transaction: publish and send store the messages as rows of
/// that transaction (see ``SQLiteMessageStore/outbox(_:causedBy:)``).
public struct SQLiteOutbox {
    let store: SQLiteMessageStore
    let db: Database
    let cause: MessageContext?

    /// Stores `event` for publishing after the commit.
    public func publish<E: IntegrationEvent>(_ event: E, key: String? = nil, headers: [String: String] = [:]) throws {
        try deliver([.publish(event, key: key, headers: headers)])
    }

    /// Stores `command` for sending after the commit.
    public func send<C: IntegrationCommand>(_ command: C, key: String? = nil, headers: [String: String] = [:]) throws {
        try deliver([.send(command, key: key, headers: headers)])
    }

    /// Stores `messages`, in order, for publishing and sending after the commit.
    public func deliver(_ messages: [OutgoingMessage]) throws {
        try store.insert(store.bus.stage(messages, causedBy: cause), in: db)
    }
}

extension Array {
    func chunked(_ size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: size).map { self[$0..<Swift.min($0 + size, count)] }
    }
}
