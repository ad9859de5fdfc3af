import Courier
import Foundation
import Synchronization

/// The outbox table of one database, as the ``OutboxRelay`` uses it. `CourierSQLite` and
/// `CourierPostgres` implement it; the relay's logic is the same for both.
///
/// Rows are written by the service inside its own transactions (through the store's
/// transaction-bound outbox); they become visible to ``claim(limit:owner:lease:)`` only once
/// committed.
public protocol OutboxStorage: Sendable {
    /// Up to `limit` unsent rows in sequence order, claimed for `owner` until `lease` passes.
    /// Never returns a row while an earlier unsent row with the same key is claimed by
    /// another owner whose lease runs, so two relays keep per-key order; rows without a key
    /// have no order among themselves beyond the batch's.
    func claim(limit: Int, owner: String, lease: Duration) async throws -> [OutboxRecord]

    /// Marks rows published (the broker confirmed them).
    func markSent(_ sequences: [Int64]) async throws

    /// Marks a row failed for good with `reason` (the broker refuses it); the relay goes on.
    func markFailed(_ sequence: Int64, reason: String) async throws

    /// Gives claimed rows back, to be claimed again at once.
    func release(_ sequences: [Int64], owner: String) async throws

    /// Returns when rows may have been committed since the last call, or after `timeout`.
    func waitForCommits(timeout: Duration) async

    /// Watches for commits in the background while the relay runs (until cancelled), for
    /// stores that learn of them from the database (PostgreSQL's `LISTEN`). Returns at once
    /// where commits are signalled in process.
    func watchCommits() async

    /// The unsent rows: how many, and when the oldest was written.
    func backlog() async throws -> OutboxBacklog

    /// Deletes sent rows and inbox ids recorded before `date`; returns how many went.
    func purge(before date: Date) async throws -> Int
}

extension OutboxStorage {
    public func watchCommits() async {}
}

/// An outbox row the relay parked: the broker refused it for good.
public struct FailedOutboxMessage: Sendable, Hashable {
    /// The row's position in commit order.
    public let sequence: Int64
    /// The message's id.
    public let messageID: String
    /// Why the broker refused it.
    public let reason: String

    public init(sequence: Int64, messageID: String, reason: String) {
        self.sequence = sequence
        self.messageID = messageID
        self.reason = reason
    }
}

/// What waits in an outbox.
public struct OutboxBacklog: Sendable, Hashable {
    /// Unsent rows (failed ones excluded).
    public var count: Int
    /// When the oldest unsent row was written, if any.
    public var oldest: Date?
    /// Rows marked failed, kept for inspection.
    public var failed: Int

    public init(count: Int, oldest: Date?, failed: Int) {
        self.count = count
        self.oldest = oldest
        self.failed = failed
    }
}

/// A wake-up call between a committing writer and the relay in one process: ``notify()``
/// after a commit; ``wait(timeout:)`` returns at the next notification (one that came while
/// nobody waited counts) or after the timeout.
public final class OutboxSignal: Sendable {
    private struct State: Sendable {
        var pending = false
        var waiters = Waiters<Void, Void>()
    }
    private let state = Mutex(State())

    public init() {}

    /// Wakes the waiting relay, or the next one to wait.
    public func notify() {
        let waiters = state.withLock { state -> [Waiters<Void, Void>.Waiter] in
            if state.waiters.isEmpty { state.pending = true }
            return state.waiters.removeAll()
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns at the next notification, after `timeout`, or when the task is cancelled.
    public func wait(timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                _ = try? await Waiters.wait(in: self.state, \.waiters, cancelled: .success(())) { state in
                    guard state.pending else { return nil }
                    state.pending = false
                    return .success(())
                }
            }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
    }
}
