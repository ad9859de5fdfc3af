import Courier
import DequeModule
import Synchronization

/// Remembers which message ids a group (or a queue's handler) has handled, so that a
/// redelivered message (at-least-once: a consumer crashed after handling, before its ack
/// arrived) is acked without being handled twice.
///
/// The bus asks ``wasHandled(_:scope:)`` before calling a handler and calls
/// ``markHandled(_:scope:)`` after the handler returned, before acking. `scope` is the
/// subscription (`topic/group` or `queue`), so two groups that both handle one event each
/// handle it once. A store backed by the service's database, written in the handler's
/// transaction, makes this exact; ``InMemoryDeduplicationStore`` covers redeliveries within
/// one process's lifetime.
public protocol DeduplicationStore: Sendable {
    /// Whether `id` was handled within `scope`.
    func wasHandled(_ id: String, scope: String) async throws -> Bool
    /// Records that `id` was handled within `scope`.
    func markHandled(_ id: String, scope: String) async throws
}

/// A ``DeduplicationStore`` in memory that remembers the last ``capacity`` ids per scope
/// (older ids are forgotten first).
public final class InMemoryDeduplicationStore: DeduplicationStore {
    /// How many ids each scope remembers.
    public let capacity: Int

    private struct Window {
        var order = Deque<String>()
        var members = Set<String>()
    }
    private let scopes = Mutex<[String: Window]>([:])

    /// Creates a store remembering `capacity` ids per scope (at least 1; default 10,000).
    public init(capacity: Int = 10_000) {
        precondition(capacity >= 1, "a deduplication store must remember at least one id")
        self.capacity = capacity
    }

    public func wasHandled(_ id: String, scope: String) -> Bool {
        scopes.withLock { $0[scope]?.members.contains(id) ?? false }
    }

    public func markHandled(_ id: String, scope: String) {
        let capacity = capacity
        scopes.withLock { scopes in
            // In place (`default:` subscript), so the window is not copied per id.
            Self.insert(id, into: &scopes[scope, default: Window()], capacity: capacity)
        }
    }

    private static func insert(_ id: String, into window: inout Window, capacity: Int) {
        guard window.members.insert(id).inserted else { return }
        window.order.append(id)
        if window.order.count > capacity, let oldest = window.order.popFirst() {
            window.members.remove(oldest)
        }
    }

    /// How many ids `scope` remembers now.
    public func count(scope: String) -> Int {
        scopes.withLock { $0[scope]?.order.count ?? 0 }
    }
}
