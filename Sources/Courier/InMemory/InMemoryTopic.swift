import DequeModule
import Foundation
import Synchronization

/// A topic of the in-memory broker: its subscription groups (each an ``InMemoryQueue``) and
/// a bounded log of recent events, kept for groups that start at `earliest` or a timestamp
/// and for rewinds.
final class InMemoryTopic: Sendable {
    let name: String
    private unowned let broker: InMemoryBroker
    private let state = Mutex(State())

    private struct LogEntry {
        var envelope: Envelope
        var publishedAt: Date
    }

    private struct State {
        var groups: [String: InMemoryQueue] = [:]
        /// The same queues as `groups`, as an array that publishing copies without hashing.
        var fanOut: [InMemoryQueue] = []
        var log = Deque<LogEntry>()
        var logBytes = 0
    }

    init(name: String, broker: InMemoryBroker) {
        self.name = name
        self.broker = broker
    }

    /// Stores `envelope` for every group that exists now; with no group it is only logged.
    func publish(_ envelope: Envelope) async throws {
        let (retention, retentionBytes) = (broker.configuration.retention, broker.configuration.retentionBytes)
        let groups = state.withLock { state in
            if retention > 0, retentionBytes > 0 {
                let size = envelope.payload.count
                while let first = state.log.first, state.log.count >= retention || state.logBytes + size > retentionBytes {
                    state.logBytes -= first.envelope.payload.count
                    state.log.removeFirst()
                }
                state.log.append(LogEntry(envelope: envelope, publishedAt: Date()))
                state.logBytes += size
            }
            return state.fanOut
        }
        for group in groups {
            try await group.enqueue(StoredMessage(envelope: envelope, attempt: 1))
        }
    }

    /// The queue of `group`, created (starting at `start`) when it does not exist yet.
    func group(_ group: String, start: StartPosition) -> InMemoryQueue {
        state.withLock { state in
            if let queue = state.groups[group] { return queue }
            let queue = InMemoryQueue(origin: .topic(name, group: group), broker: broker)
            state.groups[group] = queue
            state.fanOut.append(queue)
            let history = Self.entries(in: state.log, from: start)
            if !history.isEmpty { queue.replace(with: history) }
            return queue
        }
    }

    /// Moves `group` to `position`: its waiting messages become the retained events from there.
    func rewind(group: String, to position: StartPosition) throws {
        let (queue, history): (InMemoryQueue, [StoredMessage]) = try state.withLock { state in
            guard let queue = state.groups[group] else {
                throw CourierError(
                    .invalidConfiguration,
                    "group \(group) does not exist on topic \(name); subscribe it with a start position instead of rewinding"
                )
            }
            return (queue, Self.entries(in: state.log, from: position))
        }
        queue.replace(with: history)
    }

    func allGroups() -> [InMemoryQueue] {
        state.withLock { $0.fanOut }
    }

    private static func entries(in log: Deque<LogEntry>, from position: StartPosition) -> [StoredMessage] {
        switch position {
        case .latest:
            return []
        case .earliest:
            return log.map { StoredMessage(envelope: $0.envelope, attempt: 1) }
        case .timestamp(let date):
            return log.filter { $0.publishedAt >= date }.map { StoredMessage(envelope: $0.envelope, attempt: 1) }
        }
    }
}
