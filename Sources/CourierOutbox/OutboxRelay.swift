import Courier
import CourierBus
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// Publishes what services committed to an outbox table: claims unsent rows in commit order,
/// publishes and sends them through the bus (middleware, tracing and metrics included) with
/// broker confirms, and marks them sent. A `swift-service-lifecycle` `Service`: run it in the
/// service's `ServiceGroup` beside the bus.
///
/// - Order: rows go out in sequence order, consecutive rows to one destination in one
///   transport call; a failed call stops the batch there, so a later row never overtakes an
///   earlier one. Two relays on one database keep per-key order through
///   ``OutboxStorage/claim(limit:owner:lease:)``.
/// - Failures: an unreachable or closed broker, a timeout or an unconfirmed publish leave the
///   rows unsent; the relay retries with exponential backoff (``Options/initialBackoff`` up to
///   ``Options/maximumBackoff``), forever: nothing committed is dropped. A row the broker
///   refuses for good — too large, unknown destination, invalid name — is marked failed with
///   the reason (see ``OutboxBacklog/failed``) and the relay goes on; one refused for another
///   reason is tried ``Options/attemptsBeforeParking`` times first. Later rows with the same
///   key as a failed row still go out.
/// - Duplicates: a relay that dies between the broker's confirm and marking the rows sent
///   publishes them again after its lease; consumers with an inbox ignore the copies (same
///   message id).
/// - Wake-up: the store tells the relay about commits (SQLite: in process; PostgreSQL:
///   `LISTEN/NOTIFY`); otherwise it looks every ``Options/pollInterval``.
public final class OutboxRelay: Service, Sendable {
    /// How the relay works.
    public struct Options: Sendable {
        /// Rows claimed per turn.
        public var batchSize: Int = 500
        /// How long the relay waits for a commit notification before looking anyway.
        public var pollInterval: Duration = .seconds(1)
        /// How long claimed rows stay this relay's: another relay takes them over afterwards.
        public var lease: Duration = .seconds(60)
        /// The first wait after a failed turn; doubled per failure up to ``maximumBackoff``.
        public var initialBackoff: Duration = .milliseconds(100)
        public var maximumBackoff: Duration = .seconds(10)
        /// Tries of a row the broker refuses for an unknown reason before it is marked failed.
        public var attemptsBeforeParking: Int = 5
        /// How long sent rows and inbox ids are kept; `nil` keeps them.
        public var retention: Duration? = .seconds(7 * 24 * 3600)
        /// How often the relay purges and reports its backlog metrics.
        public var housekeepingInterval: Duration = .seconds(30)
        /// This relay's name in the table's claims; each relay needs its own. `nil` (the
        /// default) gives every relay a random one, also when options are copied.
        public var owner: String?
        /// Metrics; `nil` uses the process's `MetricsSystem`.
        public var metricsFactory: (any MetricsFactory)?
        public var logger = Logger(label: "courier.outbox")

        public init() {}
    }

    /// What the relay did so far.
    public struct Statistics: Sendable, Hashable {
        /// Rows published and marked sent.
        public var published = 0
        /// Rows marked failed.
        public var failed = 0
        /// Turns that ended in an error and were retried after a backoff.
        public var retries = 0
    }

    private struct State {
        var statistics = Statistics()
        /// Failed tries per row refused for an unknown reason.
        var refusals: [Int64: Int] = [:]
    }

    private let storage: any OutboxStorage
    private let bus: MessageBus
    private let options: Options
    /// This relay's name in its claims.
    public let owner: String
    private let state = Mutex(State())
    private let stopping = Atomic<Bool>(false)
    private let metrics: RelayMetrics

    /// A relay publishing `storage`'s rows through `bus`; `name` labels its metrics.
    public init(storage: some OutboxStorage, bus: MessageBus, name: String = "outbox", options: Options = Options()) {
        self.storage = storage
        self.bus = bus
        self.options = options
        owner = options.owner ?? "relay-\(MessageID.random())"
        metrics = RelayMetrics(name: name, factory: options.metricsFactory ?? MetricsSystem.factory)
    }

    public var statistics: Statistics { state.withLock { $0.statistics } }

    /// Relays until the task is cancelled or the service group shuts down gracefully (then
    /// it finishes the batch in hand).
    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await self.storage.watchCommits() }
                defer { group.cancelAll() }
                try await loop()
            }
        } onGracefulShutdown: {
            self.stopping.store(true, ordering: .relaxed)
        }
    }

    private func loop() async throws {
        var backoff = options.initialBackoff
        var lastHousekeeping: ContinuousClock.Instant?
        while !stopping.load(ordering: .relaxed) && !Task.isCancelled {
            if lastHousekeeping.map({ ContinuousClock.now - $0 >= options.housekeepingInterval }) ?? true {
                lastHousekeeping = .now
                await housekeeping()
            }
            do {
                if try await relayOnce() == 0 {
                    await storage.waitForCommits(timeout: options.pollInterval)
                }
                backoff = options.initialBackoff
            } catch {
                guard !Task.isCancelled else { break }
                state.withLock { $0.statistics.retries += 1 }
                options.logger.warning(
                    "the outbox relay will try again", metadata: ["courier-error": "\(error)", "courier-backoff": "\(backoff)"])
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, options.maximumBackoff)
            }
        }
    }

    /// One turn: claims a batch, publishes it, marks what went out. Returns how many rows it
    /// settled (sent or failed); throws when the broker or the database is away (the rest of
    /// the batch is given back).
    @discardableResult
    public func relayOnce() async throws -> Int {
        let batch = try await storage.claim(limit: max(1, options.batchSize), owner: owner, lease: options.lease)
        var index = batch.startIndex
        var settled = 0
        while index < batch.endIndex {
            let end = runEnd(batch, from: index)
            do {
                try await publish(Array(batch[index..<end]))
                settled += end - index
                index = end
            } catch let failure as RowFailure {
                // Rows before the one that failed went out; that one and the rest go back.
                settled += failure.settled
                let rest = batch[(index + failure.settled)...].map(\.sequence)
                try? await storage.release(rest, owner: owner)
                throw failure.error
            }
        }
        return settled
    }

    /// The end of the run starting at `start`: rows of one kind and type to one destination.
    private func runEnd(_ batch: [OutboxRecord], from start: Int) -> Int {
        let first = batch[start].message
        var end = start + 1
        while end < batch.endIndex, batch[end].message.kind == first.kind, batch[end].message.destination == first.destination,
            batch[end].message.envelope.type == first.envelope.type
        {
            end += 1
        }
        return end
    }

    /// A run failed at its row `settled` (those before it are sent or failed for good).
    private struct RowFailure: Error {
        let settled: Int
        let error: any Error
    }

    /// Publishes a run in one call; if that fails, one row at a time, to settle each row on
    /// its own (a refused row is marked failed, the others go out).
    private func publish(_ run: [OutboxRecord]) async throws {
        do {
            try await bus.deliver(staged: run.map(\.message))
        } catch {
            guard run.count > 1 else {
                try await settle(run[0], refusedWith: error, settled: 0)
                return
            }
            for (offset, record) in run.enumerated() {
                do {
                    try await bus.deliver(staged: [record.message])
                } catch {
                    try await settle(record, refusedWith: error, settled: offset)
                    continue
                }
                try await markSent([record], settled: offset)
            }
            return
        }
        try await markSent(run, settled: 0)
    }

    /// Marks `records` sent; `settled` rows of the run came before them.
    private func markSent(_ records: [OutboxRecord], settled: Int) async throws {
        do {
            try await storage.markSent(records.map(\.sequence))
        } catch {
            throw RowFailure(settled: settled, error: error)
        }
        state.withLock { $0.statistics.published += records.count }
        metrics.published.increment(by: records.count)
    }

    /// A row's publish failed with `error`: marked failed for good, or the turn ends here.
    private func settle(_ record: OutboxRecord, refusedWith error: any Error, settled: Int) async throws {
        guard decide(error, for: record.sequence) == .park else { throw RowFailure(settled: settled, error: error) }
        do {
            try await storage.markFailed(record.sequence, reason: "\(error)")
        } catch {
            throw RowFailure(settled: settled, error: error)
        }
        state.withLock { state in
            state.statistics.failed += 1
            state.refusals[record.sequence] = nil
        }
        metrics.failed.increment()
        options.logger.error(
            "the broker refused an outbox message for good; it is marked failed",
            metadata: [
                "courier-outbox-sequence": "\(record.sequence)", "courier-message-id": "\(record.message.envelope.id)",
                "courier-destination": "\(record.message.destination)", "courier-error": "\(error)",
            ])
    }

    private enum Decision { case retry, park }

    /// Whether a row whose publish failed with `error` is tried again or marked failed.
    private func decide(_ error: any Error, for sequence: Int64) -> Decision {
        guard let error = error as? CourierError, !error.isRetriable else { return .retry }
        switch error.code {
        case .payloadTooLarge, .notFound, .invalidName, .encodingFailed, .unsupportedCapability:
            return .park
        case .unreachable, .timeout, .notConfirmed, .transportClosed, .queueFull, .authenticationFailed:
            return .retry
        default:
            let tries = state.withLock { state in
                state.refusals[sequence, default: 0] += 1
                return state.refusals[sequence]!
            }
            return tries >= options.attemptsBeforeParking ? .park : .retry
        }
    }

    /// Reports the backlog and purges what the retention lets go.
    private func housekeeping() async {
        do {
            let backlog = try await storage.backlog()
            metrics.backlog.record(backlog.count)
            metrics.failedRows.record(backlog.failed)
            metrics.oldestAge.record(backlog.oldest.map { max(0, Date().timeIntervalSince($0)) } ?? 0)
            if let retention = options.retention {
                let seconds = Double(retention.components.seconds) + Double(retention.components.attoseconds) / 1e18
                _ = try await storage.purge(before: Date().addingTimeInterval(-seconds))
            }
        } catch {
            options.logger.warning("outbox housekeeping failed", metadata: ["courier-error": "\(error)"])
        }
    }
}

/// The relay's metrics, labelled with the outbox's name.
private struct RelayMetrics: Sendable {
    let published: Counter
    let failed: Counter
    let backlog: Gauge
    let failedRows: Gauge
    let oldestAge: Gauge

    init(name: String, factory: any MetricsFactory) {
        let dimensions = [("courier.outbox", name)]
        published = Counter(label: "courier_outbox_published_total", dimensions: dimensions, factory: factory)
        failed = Counter(label: "courier_outbox_failed_total", dimensions: dimensions, factory: factory)
        backlog = Gauge(label: "courier_outbox_backlog", dimensions: dimensions, factory: factory)
        failedRows = Gauge(label: "courier_outbox_failed_rows", dimensions: dimensions, factory: factory)
        oldestAge = Gauge(label: "courier_outbox_oldest_unsent_seconds", dimensions: dimensions, factory: factory)
    }
}
