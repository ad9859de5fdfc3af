import Courier
import DequeModule
import Logging
import Synchronization

/// Runs one handler registration: takes deliveries from its subscription and hands each to
/// `process`, at most `concurrency` at once, never two with the same key at once and each
/// key in arrival order.
///
/// `process` may return a *settlement* still to finish (a dead-letter publish waiting for its
/// broker confirm): the delivery's slot is freed at once, so the next message is handled while
/// the settlement completes, but its key stays busy until then, so a later message of the
/// same key never overtakes it. Settlements are bounded by the prefetch (their deliveries
/// stay unsettled until they finish), and stopping waits for them like running handlers.
///
/// A slot is taken before a delivery is taken from the subscription, so the registration
/// never holds more than `concurrency` deliveries (running or waiting behind their key).
/// The `concurrency` workers are tasks that stay, and each takes its next delivery from the
/// subscription itself (a subscription's iterators compete for its deliveries), so a message
/// is handled on the task that received it: no hand-off from an intake task to a worker and
/// back per message (two thread wake-ups, measured as a fifth of the bus's CPU on memory://).
/// Stopping ends intake (the `next()` of each worker still waiting for a delivery is
/// cancelled), lets running handlers finish until a deadline, then closes the subscription:
/// whatever is still unsettled (a handler past the deadline, a delivery waiting behind its
/// key) goes back to the broker.
final class HandlerDispatcher: Sendable {
    private let subscription: Subscription
    private let concurrency: Int
    private let logger: Logger
    private let process: @Sendable (Delivery) async -> Settlement?

    /// What remains to settle a delivery after its handler decided its fate.
    typealias Settlement = @Sendable () async -> Void

    private struct State {
        var free: Int
        /// Workers waiting for a free slot.
        var slotWaiters: Deque<UnsafeContinuation<Bool, Never>> = []
        /// Keys being handled, each with the deliveries waiting behind it.
        var busyKeys: [String: Deque<Delivery>] = [:]
        var workers: [Task<Void, Never>] = []
        /// Per worker: waiting in the subscription's `next()` (what a stop cancels).
        var pulling: [Bool]
        /// Workers handling a delivery.
        var handling = 0
        /// Settlements finishing aside (see ``settleAside(_:key:)``).
        var settlers: [Int: Task<Void, Never>] = [:]
        var nextSettler = 0
        /// Workers and settlers not yet ended.
        var active = 0
        var stopping = false
        var failure: (any Error)?
        /// `stop` waiting for the workers to end, and whether its deadline passed.
        var idleWaiters = Waiters<Void, Void>()
        var deadlinePassed = false
    }
    private let state: Mutex<State>

    init(subscription: Subscription, concurrency: Int, logger: Logger, process: @escaping @Sendable (Delivery) async -> Settlement?) {
        self.subscription = subscription
        self.concurrency = concurrency
        self.logger = logger
        self.process = process
        self.state = Mutex(State(free: concurrency, pulling: Array(repeating: false, count: concurrency)))
    }

    func start() {
        state.withLock { state in
            guard state.workers.isEmpty, !state.stopping else { return }
            state.active = concurrency
            // Created under the lock, so that a stop sees every worker.
            state.workers = (0..<concurrency).map { worker in Task { [self] in await work(worker) } }
        }
    }

    /// The error that ended intake, if the subscription failed.
    var failure: (any Error)? { state.withLock { $0.failure } }

    /// Takes a slot, then a delivery, and handles it (with whatever queues up behind its key),
    /// until the dispatcher stops or the subscription ends.
    private func work(_ worker: Int) async {
        var iterator = subscription.makeAsyncIterator()
        intake: while await acquireSlot(worker) {
            let delivery: Delivery?
            do {
                delivery = try await iterator.next()
            } catch {
                let first = state.withLock { state -> Bool in
                    state.pulling[worker] = false
                    guard !state.stopping, state.failure == nil else { return false }
                    state.failure = error
                    return true
                }
                releaseSlot()
                if first {
                    logger.error("subscription failed; this handler takes no more messages", metadata: ["courier-error": "\(error)"])
                }
                break
            }
            enum Next { case handle(Delivery), queued, stop }
            let next = state.withLock { state -> Next in
                state.pulling[worker] = false
                // Stopping: a delivery taken just now stays unsettled; closing the
                // subscription returns it to the broker.
                guard let delivery, !state.stopping else { return .stop }
                if let key = delivery.envelope.key {
                    if state.busyKeys[key] != nil {
                        state.busyKeys[key]!.append(delivery)
                        return .queued
                    }
                    state.busyKeys[key] = []
                }
                state.handling += 1
                return .handle(delivery)
            }
            switch next {
            case .handle(let delivery):
                await handle(delivery)
            case .queued:
                continue
            case .stop:
                releaseSlot()
                break intake
            }
        }
        ended()
    }

    /// A worker or settler ends; the last one wakes a waiting stop.
    private func ended(settler: Int? = nil) {
        let idle = state.withLock { state in
            if let settler { state.settlers[settler] = nil }
            state.active -= 1
            // Only a stop waits here: nothing to take on the per-message path otherwise.
            return state.active == 0 && !state.idleWaiters.isEmpty ? state.idleWaiters.removeAll() : []
        }
        for waiter in idle { waiter.resume() }
    }

    /// Takes a free slot (waiting for one) and marks `worker` as pulling; `false` when
    /// stopping or once the subscription failed (the registration takes no more messages).
    private func acquireSlot(_ worker: Int) async -> Bool {
        let fast: Bool? = state.withLock { state in
            if state.stopping || state.failure != nil || Task.isCancelled { return false }
            guard state.free > 0 else { return nil }
            state.free -= 1
            state.pulling[worker] = true
            return true
        }
        if let fast { return fast }
        let acquired = await withUnsafeContinuation { (continuation: UnsafeContinuation<Bool, Never>) in
            let immediate: Bool? = state.withLock { state in
                if state.stopping || state.failure != nil || Task.isCancelled { return false }
                guard state.free > 0 else {
                    state.slotWaiters.append(continuation)
                    return nil
                }
                state.free -= 1
                return true
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
        guard acquired else { return false }
        // A slot passed on by `releaseSlot`: stopping may have begun since.
        let pulling = state.withLock { state in
            if state.stopping {
                state.free += 1
                return false
            }
            state.pulling[worker] = true
            return true
        }
        return pulling
    }

    private func releaseSlot() {
        let waiter = state.withLock { state -> UnsafeContinuation<Bool, Never>? in
            if let waiter = state.slotWaiters.popFirst() { return waiter }  // the slot passes straight on
            state.free += 1
            return nil
        }
        waiter?.resume(returning: true)
    }

    /// Handles `first`, then whatever queued up behind its key.
    private func handle(_ first: Delivery) async {
        let key = first.envelope.key
        var current = first
        while true {
            let settlement = await process(current)
            releaseSlot()
            if let settlement {
                settleAside(settlement, key: key)
                return
            }
            guard let next = next(behind: key) else { return }
            current = next
        }
    }

    /// The delivery waiting behind `key`, or `nil` when there is none (the key is free again
    /// and this handling ends).
    private func next(behind key: String?) -> Delivery? {
        state.withLock { state -> Delivery? in
            if let key {
                if !state.stopping, let waiting = state.busyKeys[key]?.popFirst() { return waiting }
                // Stopping: deliveries still waiting stay unsettled; closing the subscription
                // returns them to the broker.
                state.busyKeys[key] = nil
            }
            state.handling -= 1
            return nil
        }
    }

    /// Finishes `settlement` on a task of its own, so that the worker takes its next delivery
    /// meanwhile; the key stays busy until the settlement is done, then that task handles
    /// what waited behind the key.
    private func settleAside(_ settlement: @escaping Settlement, key: String?) {
        state.withLock { state in
            let id = state.nextSettler
            state.nextSettler += 1
            state.active += 1
            state.settlers[id] = Task { [self] in
                await settlement()
                if let next = next(behind: key) { await handle(next) }
                ended(settler: id)
            }
        }
    }

    /// Stops intake, waits up to `deadline` for running handlers, then closes the
    /// subscription (returning anything unsettled) and cancels handlers still running.
    /// Returns how many handlers were still running at the deadline.
    @discardableResult
    func stop(deadline: Duration) async -> Int {
        let (pulling, slotWaiters, workers) = state.withLock { state in
            state.stopping = true
            let pulling = state.workers.indices.filter { state.pulling[$0] }.map { state.workers[$0] }
            defer { state.slotWaiters.removeAll() }
            return (pulling, Array(state.slotWaiters), state.workers)
        }
        for waiter in slotWaiters { waiter.resume(returning: false) }
        // Only the workers waiting for a delivery: a running handler is not cancelled before
        // the deadline.
        for worker in pulling { worker.cancel() }
        // Waits (no polling) until the last worker ends or the deadline passes; a cancelled
        // stop waits no longer.
        let timer = Task { [self] in
            try? await Task.sleep(for: deadline)
            let waiters = state.withLock { state in
                state.deadlinePassed = true
                return state.idleWaiters.removeAll()
            }
            for waiter in waiters { waiter.resume() }
        }
        _ = try? await Waiters.wait(in: state, \.idleWaiters, cancelled: .success(())) { state in
            state.active == 0 || state.deadlinePassed ? .success(()) : nil
        }
        timer.cancel()
        let late = state.withLock { $0.handling }
        await subscription.close()
        let tasks = workers + state.withLock { Array($0.settlers.values) }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
        return late
    }
}
