import DequeModule
import Synchronization

/// Tasks waiting for something that appears under a lock — a delivery, room in a queue, the
/// end of a close — kept inside the state that lock protects.
///
/// Every transport's `next()` is the same dance: under the lock, take what is there (the fast
/// path, no suspension); otherwise register a waiter, unless the task was cancelled meanwhile;
/// whoever later changes the state under the lock takes waiters out and resumes them after
/// unlocking. ``Waiters`` holds the waiters in arrival order (competing consumers are served
/// first come, first served), and ``wait(in:_:tag:cancelled:attempt:)`` runs the dance,
/// including cancellation before and after registration:
///
/// ```swift
/// struct State { var buffer: Deque<Delivery> = []; var waiters = Waiters<Delivery?, Void>() }
/// let state = Mutex(State())
///
/// // next():
/// try await Waiters.wait(in: state, \.waiters, cancelled: .success(nil)) { state in
///     state.buffer.popFirst().map { .success($0) }
/// }
/// // on arrival, under the lock: if let waiter = state.waiters.popFirst() { … } — and
/// // after unlocking: waiter.resume(returning: delivery)
/// ```
///
/// A type for transport authors; Courier's own transports use it for every wait.
public struct Waiters<Value: Sendable, Tag: Sendable>: Sendable {
    /// One waiting task: resume it exactly once, after releasing the lock.
    public struct Waiter: Sendable {
        /// Its registration number.
        public let id: Int
        /// What it waits as, e.g. the consumer it is for.
        public let tag: Tag
        @usableFromInline let continuation: UnsafeContinuation<Value, any Error>

        @usableFromInline
        init(id: Int, tag: Tag, continuation: UnsafeContinuation<Value, any Error>) {
            self.id = id
            self.tag = tag
            self.continuation = continuation
        }

        /// Resumes the task with `value`.
        @inlinable public func resume(returning value: sending Value) { continuation.resume(returning: value) }
        /// Resumes the task by throwing `error`.
        @inlinable public func resume(throwing error: any Error) { continuation.resume(throwing: error) }
        /// Resumes the task with `result`.
        @inlinable public func resume(with result: sending Result<Value, any Error>) { continuation.resume(with: result) }
    }

    @usableFromInline var queue = Deque<Waiter>()
    /// Tasks cancelled before they registered.
    @usableFromInline var cancelled = Set<Int>()
    @usableFromInline var lastID = 0

    /// No waiters.
    public init() {}

    /// Whether no task waits.
    @inlinable public var isEmpty: Bool { queue.isEmpty }
    /// How many tasks wait.
    @inlinable public var count: Int { queue.count }
    /// The task that has waited longest, left waiting.
    @inlinable public var first: Waiter? { queue.first }
    /// The waiting tasks' tags, first come first.
    public var tags: [Tag] { queue.map(\.tag) }

    /// Takes the task that has waited longest.
    @inlinable public mutating func popFirst() -> Waiter? { queue.popFirst() }

    /// Takes the task that has waited longest among those whose tag passes `predicate`.
    public mutating func popFirst(where predicate: (Tag) -> Bool) -> Waiter? {
        guard let index = queue.firstIndex(where: { predicate($0.tag) }) else { return nil }
        return queue.remove(at: index)
    }

    /// Puts back a task taken with ``popFirst()`` or ``popFirst(where:)`` that could not be
    /// served after all, ahead of the others.
    @inlinable public mutating func putBack(_ waiter: Waiter) { queue.prepend(waiter) }

    /// Takes every task whose tag passes `predicate`, first come first.
    public mutating func removeAll(where predicate: (Tag) -> Bool) -> [Waiter] {
        var taken: [Waiter] = []
        queue.removeAll { waiter in
            guard predicate(waiter.tag) else { return false }
            taken.append(waiter)
            return true
        }
        return taken
    }

    /// Takes every task (for a close), first come first.
    public mutating func removeAll() -> [Waiter] {
        guard !queue.isEmpty else { return [] }
        defer { queue.removeAll() }
        return Array(queue)
    }

    // MARK: The steps of a wait (internal: `wait` runs them in order)

    @usableFromInline
    mutating func makeID() -> Int {
        lastID &+= 1
        return lastID
    }

    /// Registers the task `id`; `false` (not registered) when it was cancelled first.
    @usableFromInline
    mutating func register(_ id: Int, tag: Tag, _ continuation: UnsafeContinuation<Value, any Error>) -> Bool {
        guard cancelled.remove(id) == nil else { return false }
        queue.append(Waiter(id: id, tag: tag, continuation: continuation))
        return true
    }

    /// The task `id` was cancelled: its waiter if it is registered (resume it), else the
    /// cancellation is remembered for its registration.
    @usableFromInline
    mutating func cancel(_ id: Int) -> Waiter? {
        if let index = queue.firstIndex(where: { $0.id == id }) { return queue.remove(at: index) }
        cancelled.insert(id)
        return nil
    }

    /// Forgets a cancellation whose task finished without registering.
    @usableFromInline
    mutating func forget(_ id: Int) { cancelled.remove(id) }

    /// Waits for a value under `mutex`: `attempt` runs under the lock and gives the value, or
    /// an error, when there is one now (`nil` to wait); otherwise the task waits in
    /// `state[keyPath: waiters]` until someone resumes it. A task cancelled before or while
    /// waiting ends with `cancelled`; with `cancelled` `nil` the wait ignores cancellation
    /// (for a close whose caller frees what the waited-for work still uses). `attempt` runs
    /// once more, under the lock, just before registering, so nothing that arrives between
    /// the two is missed.
    @inlinable
    public static func wait<State: Sendable>(
        in mutex: borrowing Mutex<State>,
        _ waiters: WritableKeyPath<State, Waiters>,
        tag: Tag,
        cancelled: Result<Value, any Error>?,
        attempt: (inout State) -> Result<Value, any Error>?
    ) async throws -> Value {
        // A key path is immutable; the one given is only read.
        nonisolated(unsafe) let waiters = waiters
        let fast: WaitStart<Value> = mutex.withLock { state in
            if let result = attempt(&state) { return .done(result) }
            return .wait(state[keyPath: waiters].makeID())
        }
        let id: Int
        switch fast {
        case .done(let result): return try result.get()
        case .wait(let waitID): id = waitID
        }
        func suspend() async throws -> Value {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Value, any Error>) in
                let immediate: Result<Value, any Error>? = mutex.withLock { state in
                    if let result = attempt(&state) {
                        state[keyPath: waiters].forget(id)
                        return result
                    }
                    // Only a cancellable wait is ever marked cancelled.
                    return state[keyPath: waiters].register(id, tag: tag, continuation) ? nil : cancelled!
                }
                if let immediate { continuation.resume(with: immediate) }
            }
        }
        guard let cancelled else { return try await suspend() }
        return try await withTaskCancellationHandler {
            try await suspend()
        } onCancel: {
            mutex.withLock { $0[keyPath: waiters].cancel(id) }?.resume(with: cancelled)
        }
    }
}

/// How a wait starts: with a result at once, or registering as `wait(id)`.
@usableFromInline
enum WaitStart<Value: Sendable> {
    case done(Result<Value, any Error>)
    case wait(Int)
}

extension Waiters.Waiter where Value == Void {
    /// Resumes a task that waits for nothing but its turn.
    @inlinable public func resume() { continuation.resume(returning: ()) }
}

extension Waiters where Tag == Void {
    /// ``wait(in:_:tag:cancelled:attempt:)`` for waiters without a tag.
    @inlinable
    public static func wait<State: Sendable>(
        in mutex: borrowing Mutex<State>,
        _ waiters: WritableKeyPath<State, Waiters>,
        cancelled: Result<Value, any Error>?,
        attempt: (inout State) -> Result<Value, any Error>?
    ) async throws -> Value {
        try await wait(in: mutex, waiters, tag: (), cancelled: cancelled, attempt: attempt)
    }
}

/// A one-time event to wait for, such as a thread having finished: ``open()`` once, and every
/// ``wait()`` — before or after — returns. Built on ``Waiters``.
public final class Latch: Sendable {
    private struct State: Sendable {
        var isOpen = false
        var waiters = Waiters<Void, Void>()
    }
    private let state = Mutex(State())

    /// A closed latch.
    public init() {}

    /// Whether ``open()`` was called.
    public var isOpen: Bool { state.withLock { $0.isOpen } }

    /// Opens the latch and resumes every waiter; `false` when it was open already.
    @discardableResult
    public func open() -> Bool {
        let (opened, waiters) = state.withLock { state -> (Bool, [Waiters<Void, Void>.Waiter]) in
            guard !state.isOpen else { return (false, []) }
            state.isOpen = true
            return (true, state.waiters.removeAll())
        }
        for waiter in waiters { waiter.resume() }
        return opened
    }

    /// Waits until the latch is open, whether or not the task is cancelled: a close that
    /// returned early would let its caller free what the finishing work still uses.
    public func wait() async {
        _ = try? await Waiters.wait(in: state, \.waiters, cancelled: nil) { state in state.isOpen ? .success(()) : nil }
    }
}
