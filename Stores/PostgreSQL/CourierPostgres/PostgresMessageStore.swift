import Courier
import CourierBus
import CourierOutbox
import Foundation
import Logging
import NIOCore
import NIOSSL
import PostgresNIO
import Synchronization

/// A service's outbox and inbox in its own PostgreSQL database, through postgres-nio: messages
/// written in the service's transactions reach the broker only if the transaction commits,
/// and a handler's database work and the record of the message it handled commit together.
///
/// ```swift
/// let client = PostgresClient(configuration: try PostgresMessageStore.configuration(url: databaseURL), backgroundLogger: logger)
/// // run `client` in the ServiceGroup, then:
/// let store = try await PostgresMessageStore.open(client: client, bus: bus)
/// try await client.withTransaction(logger: logger) { connection in
///     try await connection.query("INSERT INTO customer (id, name) VALUES (\(id), \(name))", logger: logger)
///     try await store.outbox(connection).publish(CustomerRegistered(customerID: id, name: name))
/// }
/// let relay = store.relay()   // a Service, beside the bus
/// ```
///
/// - Schema: ``open(client:bus:tables:connectTimeout:logger:)`` creates or migrates the tables with versioned
///   SQL under an advisory lock, recording the version in `courier_schema`; tables a newer
///   Courier migrated throw ``CourierError/Code/invalidConfiguration``.
/// - Wake-up: every outbox write sends `NOTIFY <outbox>_commits` in its transaction, which
///   PostgreSQL delivers on commit; the relay listens on one connection of the pool and polls
///   as a fallback.
/// - Several relays (in several processes) on one database: a claim takes a transaction-level
///   advisory lock, so claims are serialized and each sees the others' committed claims; a
///   row is never claimed while an earlier unsent row with its key is claimed by another
///   relay whose lease runs. Lease times come from the database's clock.
public final class PostgresMessageStore: OutboxStorage, Sendable {
    public let client: PostgresClient
    /// The bus that stages (encodes) and relays the messages.
    public let bus: MessageBus
    public let tables: StoreTables
    let logger: Logger
    /// How long an operation waits for a pooled connection before failing as unreachable.
    let connectTimeout: Duration
    let signal = OutboxSignal()
    /// The pool ``connect(url:bus:tables:connectTimeout:logger:)`` runs, until ``close()``.
    let ownedClient = Mutex<Task<Void, Never>?>(nil)

    /// The schema versions this library knows, in order.
    static let versions = [1]

    /// The channel commits are announced on.
    var channel: String { "\(tables.outbox)_commits" }

    private init(client: PostgresClient, bus: MessageBus, tables: StoreTables, connectTimeout: Duration, logger: Logger) {
        self.client = client
        self.bus = bus
        self.tables = tables
        self.connectTimeout = connectTimeout
        self.logger = logger
    }

    /// Opens the store in `client`'s database, creating or migrating its tables. `client` must
    /// be running (`client.run()` in a task or the service group). Every operation of the store
    /// (opening included) that waits longer than `connectTimeout` for a connection fails with a
    /// retriable ``CourierError/Code/unreachable``: an inbox handler's message then goes through
    /// the retry policy, unacknowledged, and the relay backs off.
    public static func open(
        client: PostgresClient, bus: MessageBus, tables: StoreTables = StoreTables(), connectTimeout: Duration = .seconds(10),
        logger: Logger = Logger(label: "courier.postgres")
    ) async throws -> PostgresMessageStore {
        try tables.validate()
        let store = PostgresMessageStore(client: client, bus: bus, tables: tables, connectTimeout: connectTimeout, logger: logger)
        try await store.migrate()
        return store
    }

    /// Connects to the database at `url` (`postgres://user:password@host:port/database`,
    /// `?sslmode=disable|prefer|require`) with a connection pool the store owns and runs until
    /// ``close()``, then opens the store as ``open(client:bus:tables:connectTimeout:logger:)``
    /// does. A first connection checks the URL, so a wrong password or an unknown database
    /// fails at once with a typed error (never naming the password) instead of being retried.
    public static func connect(
        url: String, bus: MessageBus, tables: StoreTables = StoreTables(), connectTimeout: Duration = .seconds(10),
        logger: Logger = Logger(label: "courier.postgres")
    ) async throws -> PostgresMessageStore {
        let parsed = try ParsedURL(url)
        try tables.validate()
        let what = "connecting to PostgreSQL at \(parsed.redacted)"
        let late = CourierError(
            .unreachable, "\(what) took longer than \(connectTimeout); check that PostgreSQL is up and reachable", isRetriable: true)
        try await withDeadline(connectTimeout, failing: late) {
            let probe: PostgresConnection
            do {
                probe = try await PostgresConnection.connect(configuration: try parsed.connectionConfiguration(), id: 0, logger: logger)
            } catch {
                throw courierError(error, what)
            }
            try? await probe.close()
        }
        let client = PostgresClient(configuration: parsed.clientConfiguration(), backgroundLogger: logger)
        let running = Task { await client.run() }
        do {
            let store = try await open(client: client, bus: bus, tables: tables, connectTimeout: connectTimeout, logger: logger)
            store.ownedClient.withLock { $0 = running }
            return store
        } catch {
            running.cancel()
            await running.value
            throw error
        }
    }

    /// Stops the connection pool ``connect(url:bus:tables:connectTimeout:logger:)`` started; does
    /// nothing for a store opened on the caller's client.
    public func close() async {
        guard let running = ownedClient.withLock({ $0.take() }) else { return }
        running.cancel()
        await running.value
    }

    /// A postgres-nio client configuration from a `postgres://user:password@host:port/database`
    /// URL (`?sslmode=disable|prefer|require`). Errors name the URL without its password.
    public static func configuration(url: String) throws(CourierError) -> PostgresClient.Configuration {
        try ParsedURL(url).clientConfiguration()
    }

    /// A `postgres://` URL taken apart.
    struct ParsedURL: Sendable {
        enum TLSMode: String { case disable, prefer, require }
        let redacted: String
        let host: String
        let port: Int
        let user: String
        let password: String?
        let database: String?
        let tls: TLSMode

        init(_ url: String) throws(CourierError) {
            redacted = TransportURL.redacted(url)
            guard let components = URLComponents(string: url), ["postgres", "postgresql"].contains(components.scheme?.lowercased() ?? ""),
                let host = components.host, !host.isEmpty
            else {
                throw CourierError(.invalidURL, "\(redacted) is not a postgres://user:password@host:port/database URL")
            }
            guard let user = components.percentEncodedUser.flatMap({ $0.removingPercentEncoding }), !user.isEmpty else {
                throw CourierError(.invalidURL, "\(redacted) names no user; write postgres://user:password@host:port/database")
            }
            let mode = components.queryItems?.first(where: { $0.name == "sslmode" })?.value ?? "disable"
            guard let tls = TLSMode(rawValue: mode) else {
                throw CourierError(.invalidURL, "\(redacted): sslmode \(mode) is not one of disable, prefer, require")
            }
            self.host = host
            self.port = components.port ?? 5432
            self.user = user
            self.password = components.percentEncodedPassword.flatMap { $0.removingPercentEncoding }
            self.database = components.path.count > 1 ? String(components.path.dropFirst()) : nil
            self.tls = tls
        }

        func clientConfiguration() -> PostgresClient.Configuration {
            let tls: PostgresClient.Configuration.TLS
            switch self.tls {
            case .disable: tls = .disable
            case .prefer: tls = .prefer(.makeClientConfiguration())
            case .require: tls = .require(.makeClientConfiguration())
            }
            var configuration = PostgresClient.Configuration(
                host: host, port: port, username: user, password: password, database: database, tls: tls)
            configuration.options.connectTimeout = .seconds(5)
            return configuration
        }

        func connectionConfiguration() throws -> PostgresConnection.Configuration {
            let tls: PostgresConnection.Configuration.TLS
            switch self.tls {
            case .disable: tls = .disable
            case .prefer: tls = .prefer(try NIOSSLContext(configuration: .makeClientConfiguration()))
            case .require: tls = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
            }
            var configuration = PostgresConnection.Configuration(
                host: host, port: port, username: user, password: password, database: database, tls: tls)
            configuration.options.connectTimeout = .seconds(5)
            return configuration
        }
    }

    // MARK: Schema

    private func migrate() async throws {
        let (outbox, inbox) = (tables.outbox, tables.inbox)
        let component = "\(outbox)+\(inbox)"
        let latest = Self.versions.last!
        try await transaction("creating the outbox and inbox tables") { [logger] connection in
            try await connection.query("SELECT pg_advisory_xact_lock(hashtext('courier_schema'))", logger: logger)
            try await connection.query(
                "CREATE TABLE IF NOT EXISTS courier_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)", logger: logger)
            var version = 0
            for try await found in try await connection.query(
                "SELECT version FROM courier_schema WHERE component = \(component)", logger: logger
            ).decode(Int.self) {
                version = found
            }
            guard version <= latest else {
                throw CourierError(
                    .invalidConfiguration,
                    "the tables \(outbox) and \(inbox) were migrated by a newer Courier (version \(version)); this one knows up to version \(latest): upgrade Courier"
                )
            }
            if version < 1 {
                try await connection.query(
                    """
                    CREATE TABLE IF NOT EXISTS \(unescaped: outbox) (
                        sequence BIGSERIAL PRIMARY KEY,
                        message_id TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        destination TEXT NOT NULL,
                        message_key TEXT,
                        message_time TEXT NOT NULL,
                        created_at BIGINT NOT NULL,
                        headers TEXT NOT NULL,
                        payload BYTEA NOT NULL,
                        status SMALLINT NOT NULL DEFAULT 0,
                        claimed_by TEXT,
                        claimed_until BIGINT,
                        sent_at BIGINT,
                        failure TEXT
                    )
                    """, logger: logger)
                try await connection.query(
                    "CREATE INDEX IF NOT EXISTS \(unescaped: outbox)_status ON \(unescaped: outbox) (status, sequence)", logger: logger)
                // A claim walks the unsent rows in order and the live claims per key: partial
                // indexes keep both walks off the sent rows kept for retention.
                try await connection.query(
                    "CREATE INDEX IF NOT EXISTS \(unescaped: outbox)_unsent ON \(unescaped: outbox) (sequence) WHERE status = 0",
                    logger: logger)
                try await connection.query(
                    """
                    CREATE INDEX IF NOT EXISTS \(unescaped: outbox)_claimed ON \(unescaped: outbox) (message_key, sequence)
                    WHERE status = 0 AND claimed_by IS NOT NULL
                    """, logger: logger)
                try await connection.query(
                    """
                    CREATE TABLE IF NOT EXISTS \(unescaped: inbox) (
                        scope TEXT NOT NULL,
                        message_id TEXT NOT NULL,
                        handled_at BIGINT NOT NULL,
                        PRIMARY KEY (scope, message_id)
                    )
                    """, logger: logger)
                try await connection.query(
                    "CREATE INDEX IF NOT EXISTS \(unescaped: inbox)_handled ON \(unescaped: inbox) (handled_at)", logger: logger)
            }
            try await connection.query(
                """
                INSERT INTO courier_schema (component, version) VALUES (\(component), \(latest))
                ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version
                """, logger: logger)
        }
    }

    // MARK: Writing

    /// The outbox of the transaction `connection` is in: what it publishes and sends is stored
    /// in that transaction and reaches the broker only if it commits. `cause` is the message
    /// being handled, if any (for correlation and causation ids).
    public func outbox(_ connection: PostgresConnection, causedBy cause: MessageContext? = MessageContext.current) -> PostgresOutbox {
        PostgresOutbox(store: self, connection: connection, cause: cause)
    }

    /// A relay publishing this store's outbox through ``bus``.
    public func relay(options: OutboxRelay.Options = OutboxRelay.Options()) -> OutboxRelay {
        OutboxRelay(storage: self, bus: bus, name: tables.outbox, options: options)
    }

    func insert(_ messages: [StagedMessage], on connection: PostgresConnection) async throws {
        for message in messages {
            let values = OutboxColumns.values(for: message)
            try await connection.query(
                """
                INSERT INTO \(unescaped: tables.outbox) (message_id, kind, destination, message_key, message_time, created_at, headers, payload)
                VALUES (\(values.messageID), \(values.kind), \(values.destination), \(values.key), \(values.time), \(values.createdAt),
                        \(values.headers), \(ByteBuffer(bytes: values.payload)))
                """, logger: logger)
        }
        // Delivered when (and only if) the transaction commits.
        try await connection.query("SELECT pg_notify(\(channel), '')", logger: logger)
    }

    // MARK: Inbox

    /// Runs `body` in a transaction that also records `messageID` in `scope`; returns false
    /// without running it when the id is recorded already (a redelivery). A concurrent copy
    /// waits for the first to commit, then finds it recorded. Errors `body` throws come back
    /// as thrown; the database's become ``CourierError``s.
    func handleOnce(
        scope: String, messageID: String, _ body: @escaping @Sendable (PostgresConnection) async throws -> Void
    ) async throws -> Bool {
        /// Carries the handler's own error through the transaction untouched.
        struct HandlerFailure: Error { let error: any Error }
        do {
            return try await transaction("handling \(messageID)") { [tables, logger] connection in
                let inserted = try await connection.query(
                    """
                    INSERT INTO \(unescaped: tables.inbox) (scope, message_id, handled_at)
                    VALUES (\(scope), \(messageID), (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                    ON CONFLICT DO NOTHING RETURNING 1
                    """, logger: logger)
                var first = false
                for try await _ in inserted { first = true }
                guard first else { return false }
                do {
                    try await body(connection)
                } catch {
                    throw HandlerFailure(error: error)
                }
                return true
            }
        } catch let failure as HandlerFailure {
            throw failure.error
        }
    }

    /// Whether `messageID` is recorded as handled in `scope`.
    public func wasHandled(_ messageID: String, scope: String) async throws -> Bool {
        try await withConnection("reading the inbox") { [tables, logger] connection in
            var found = false
            for try await _ in try await connection.query(
                "SELECT 1 FROM \(unescaped: tables.inbox) WHERE scope = \(scope) AND message_id = \(messageID)", logger: logger)
            {
                found = true
            }
            return found
        }
    }

    // MARK: OutboxStorage

    public func claim(limit: Int, owner: String, lease: Duration) async throws -> [OutboxRecord] {
        let outbox = tables.outbox
        let leaseMilliseconds = lease.storeMilliseconds
        return try await transaction("claiming outbox rows") { [logger] connection in
            try await connection.query("SELECT pg_advisory_xact_lock(hashtext(\(outbox)))", logger: logger)
            let rows = try await connection.query(
                """
                WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms),
                blocked AS (
                    SELECT e.message_key, MIN(e.sequence) AS first FROM \(unescaped: outbox) AS e, now
                    WHERE e.status = 0 AND e.claimed_by IS NOT NULL AND e.claimed_by <> \(owner) AND e.claimed_until >= now.ms
                      AND e.message_key IS NOT NULL
                    GROUP BY e.message_key
                ),
                picked AS (
                    SELECT o.sequence FROM \(unescaped: outbox) AS o CROSS JOIN now
                    LEFT JOIN blocked AS b ON b.message_key = o.message_key
                    WHERE o.status = 0 AND (o.claimed_by IS NULL OR o.claimed_by = \(owner) OR o.claimed_until < now.ms)
                      AND (b.first IS NULL OR o.sequence < b.first)
                    ORDER BY o.sequence LIMIT \(limit)
                )
                UPDATE \(unescaped: outbox) AS t SET claimed_by = \(owner), claimed_until = now.ms + \(leaseMilliseconds)
                FROM picked, now WHERE t.sequence = picked.sequence
                RETURNING t.sequence, t.message_id, t.kind, t.destination, t.message_key, t.message_time, t.headers, t.payload
                """, logger: logger)
            var records: [OutboxRecord] = []
            for try await (sequence, id, kind, destination, key, time, headers, payload) in rows.decode(
                (Int64, String, String, String, String?, String, String, ByteBuffer).self)
            {
                let message = try OutboxColumns.message(
                    sequence: sequence, messageID: id, kind: kind, destination: destination, key: key, time: time, headers: headers,
                    payload: Array(buffer: payload))
                records.append(OutboxRecord(sequence: sequence, message: message))
            }
            return records.sorted { $0.sequence < $1.sequence }
        }
    }

    public func markSent(_ sequences: [Int64]) async throws {
        guard !sequences.isEmpty else { return }
        try await execute(
            "marking outbox rows sent",
            """
            UPDATE \(unescaped: tables.outbox) SET status = 1, sent_at = (extract(epoch FROM clock_timestamp()) * 1000)::bigint, claimed_by = NULL
            WHERE sequence = ANY(\(sequences))
            """)
    }

    public func markFailed(_ sequence: Int64, reason: String) async throws {
        try await execute(
            "marking an outbox row failed",
            "UPDATE \(unescaped: tables.outbox) SET status = 2, failure = \(reason), claimed_by = NULL WHERE sequence = \(sequence)")
    }

    public func release(_ sequences: [Int64], owner: String) async throws {
        guard !sequences.isEmpty else { return }
        try await execute(
            "releasing outbox rows",
            """
            UPDATE \(unescaped: tables.outbox) SET claimed_by = NULL, claimed_until = NULL
            WHERE status = 0 AND claimed_by = \(owner) AND sequence = ANY(\(sequences))
            """)
    }

    public func waitForCommits(timeout: Duration) async {
        await signal.wait(timeout: timeout)
    }

    /// Listens for commit notifications on one connection until cancelled, reconnecting
    /// after a failure (meanwhile the relay polls).
    public func watchCommits() async {
        var backoff = Duration.milliseconds(100)
        while !Task.isCancelled {
            do {
                try await client.withConnection { connection in
                    try await connection.listen(on: channel) { notifications in
                        backoff = .milliseconds(100)
                        // Commits before the listen began are found by the relay's next look.
                        signal.notify()
                        for try await _ in notifications { signal.notify() }
                    }
                }
            } catch {
                if Task.isCancelled { return }
                logger.debug(
                    "listening for outbox commits failed; polling meanwhile", metadata: ["courier-error": "\(String(reflecting: error))"])
            }
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(5))
        }
    }

    public func backlog() async throws -> OutboxBacklog {
        try await withConnection("reading the outbox backlog") { [tables, logger] connection in
            let rows = try await connection.query(
                """
                SELECT COUNT(*) FILTER (WHERE status = 0), MIN(created_at) FILTER (WHERE status = 0), COUNT(*) FILTER (WHERE status = 2)
                FROM \(unescaped: tables.outbox)
                """, logger: logger)
            var backlog = OutboxBacklog(count: 0, oldest: nil, failed: 0)
            for try await (count, oldest, failed) in rows.decode((Int, Int64?, Int).self) {
                backlog = OutboxBacklog(count: count, oldest: oldest.map { Date(timeIntervalSince1970: Double($0) / 1000) }, failed: failed)
            }
            return backlog
        }
    }

    public func purge(before date: Date) async throws -> Int {
        let cut = Int64((date.timeIntervalSince1970 * 1000).rounded())
        return try await withConnection("purging the outbox and inbox") { [tables, logger] connection in
            var count = 0
            for query: PostgresQuery in [
                "WITH gone AS (DELETE FROM \(unescaped: tables.outbox) WHERE status = 1 AND sent_at < \(cut) RETURNING 1) SELECT COUNT(*) FROM gone",
                "WITH gone AS (DELETE FROM \(unescaped: tables.inbox) WHERE handled_at < \(cut) RETURNING 1) SELECT COUNT(*) FROM gone",
            ] {
                for try await deleted in try await connection.query(query, logger: logger).decode(Int.self) { count += deleted }
            }
            return count
        }
    }

    /// The rows marked failed, with their reasons, oldest first.
    public func failedMessages(limit: Int = 100) async throws -> [FailedOutboxMessage] {
        try await withConnection("reading failed outbox rows") { [tables, logger] connection in
            var failed: [FailedOutboxMessage] = []
            for try await (sequence, id, reason) in try await connection.query(
                "SELECT sequence, message_id, failure FROM \(unescaped: tables.outbox) WHERE status = 2 ORDER BY sequence LIMIT \(limit)",
                logger: logger
            ).decode((Int64, String, String?).self) {
                failed.append(FailedOutboxMessage(sequence: sequence, messageID: id, reason: reason ?? ""))
            }
            return failed
        }
    }

    // MARK: Connections and errors

    /// Runs one statement on a pooled connection.
    private func execute(_ what: String, _ query: PostgresQuery) async throws {
        try await withConnection(what) { [logger] connection in
            try await connection.query(query, logger: logger)
        }
    }

    /// Runs `body` in a transaction on a pooled connection (see ``withConnection(_:_:)``).
    private func transaction<T: Sendable>(
        _ what: String, _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await withConnection(what) { [logger] connection in
            do {
                return try await connection.withTransaction(logger: logger) { connection in try await body(connection) }
            } catch let error as PostgresTransactionError {
                // What failed first: the body, else BEGIN or COMMIT.
                throw error.closureError ?? error.beginError ?? error.commitError ?? error.rollbackError ?? error
            }
        }
    }

    /// Runs `body` on a pooled connection, waiting at most ``connectTimeout`` for one (the pool
    /// itself would wait for as long as the database is down), and turns postgres-nio's errors
    /// into Courier's, never with a password.
    private func withConnection<T: Sendable>(
        _ what: String, _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        let leased = LeaseFlag()
        let client = client
        let late = CourierError(
            .unreachable, "\(what): no PostgreSQL connection within \(connectTimeout); check that the database is up and reachable",
            isRetriable: true)
        do {
            return try await withDeadline(connectTimeout, failing: late, unless: { leased.isSet }) {
                try await client.withConnection { connection in
                    leased.set()
                    return try await body(connection)
                }
            }
        } catch let error as CourierError {
            throw error
        } catch let error as PSQLError {
            throw Self.courierError(error, what)
        }
    }

    static func courierError(_ error: any Error, _ what: String) -> CourierError {
        if let error = error as? CourierError { return error }
        guard let error = error as? PSQLError else {
            return CourierError(.brokerRejected, "\(what): \(error)", isRetriable: true, underlying: error)
        }
        let state = error.serverInfo?[.sqlState] ?? ""
        let message = error.serverInfo?[.message] ?? ""
        switch (error.code, state) {
        case (_, "28P01"), (_, "28000"):
            return CourierError(
                .authenticationFailed, "\(what): PostgreSQL refused the login (\(message)); check the user name and password")
        case (_, "3D000"):
            return CourierError(.notFound, "\(what): \(message); create the database or fix its name in the URL")
        case (.connectionError, _), (.serverClosedConnection, _), (.clientClosedConnection, _), (.uncleanShutdown, _):
            return CourierError(
                .unreachable, "\(what): PostgreSQL cannot be reached (\(error.code)); check that it is up and the host and port",
                isRetriable: true, underlying: error)
        case (.server, _):
            return CourierError(.brokerRejected, "\(what): PostgreSQL refused it: \(message) (SQLSTATE \(state))", isRetriable: true)
        default:
            return CourierError(.brokerRejected, "\(what): \(error.code)", isRetriable: true)
        }
    }
}

/// Whether a pooled connection was handed over in time.
final class LeaseFlag: Sendable {
    private let state = Atomic(false)
    func set() { state.store(true, ordering: .sequentiallyConsistent) }
    var isSet: Bool { state.load(ordering: .sequentiallyConsistent) }
}

/// Runs `body`; once `duration` has passed, fails with `error` (cancelling `body`) unless
/// `unless()` then holds, in which case `body` runs on to its end.
func withDeadline<T: Sendable>(
    _ duration: Duration, failing error: CourierError, unless: @escaping @Sendable () -> Bool = { false },
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: duration)
            guard unless() else { throw error }
            return nil
        }
        defer { group.cancelAll() }
        while let result = try await group.next() {
            if let result { return result }
        }
        preconditionFailure("the body's task ended without a result")
    }
}

/// The outbox of one PostgreSQL transaction: publish and send store the messages as rows of
/// that transaction (see ``PostgresMessageStore/outbox(_:causedBy:)``).
public struct PostgresOutbox: Sendable {
    let store: PostgresMessageStore
    let connection: PostgresConnection
    let cause: MessageContext?

    /// Stores `event` for publishing after the commit.
    public func publish<E: IntegrationEvent>(_ event: E, key: String? = nil, headers: [String: String] = [:]) async throws {
        try await deliver([.publish(event, key: key, headers: headers)])
    }

    /// Stores `command` for sending after the commit.
    public func send<C: IntegrationCommand>(_ command: C, key: String? = nil, headers: [String: String] = [:]) async throws {
        try await deliver([.send(command, key: key, headers: headers)])
    }

    /// Stores `messages`, in order, for publishing and sending after the commit.
    public func deliver(_ messages: [OutgoingMessage]) async throws {
        try await store.insert(store.bus.stage(messages, causedBy: cause), on: connection)
    }
}
